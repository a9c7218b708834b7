"""ServingAgent: batch scoring of raw files (skill `score`) and the champion's REST API (`serve`).

Nothing here imports Spark at module level: `score` starts Spark when called, `serve` runs the
Spark-free FastAPI app (`src.serving.app`) unless the Spark comparison backend is asked for.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from src.agents.base import Agent, Skill
from src.contracts import ScoreRequest, ScoreResult
from src.utils.atomic import atomic_write_json
from src.utils.config import Config
from src.utils.logging import bind_context, get_logger

log = get_logger(agent="ServingAgent")

SCORE_STAGE = "score"


class ServingAgent(Agent):
    """Serving: scores raw LendingClub files in batch and serves the champion over REST."""

    skills = (Skill(SCORE_STAGE, ScoreRequest, ScoreResult, "score"),)

    def score(self, request: ScoreRequest) -> ScoreResult:
        """Score every loan of `request.input_path` with `request.model_uri` (Spark batch)."""
        from src.pipelines.scoring import score_file
        from src.utils.spark import get_spark

        spark = get_spark(self.cfg.spark)
        return score_file(
            spark,
            self.cfg,
            self.cfg.path(request.input_path),
            self.cfg.path(request.output_path),
            request.model_uri,
        )

    def serve(
        self,
        host: str | None = None,
        port: int | None = None,
        backend: Literal["onnx", "spark"] | None = None,
        bundle_path: Path | None = None,
    ) -> None:
        """Run the REST API (uvicorn, one worker) until interrupted; defaults from cfg.serving."""
        from src.serving.app import serve

        log.info("serve.start", host=host or self.cfg.serving.host,
                 port=port if port is not None else self.cfg.serving.port,
                 backend=backend or self.cfg.serving.backend,
                 source=str(bundle_path) if bundle_path else self.cfg.serving.model_uri)
        serve(self.cfg, host, port, backend, bundle_path)


def run_score(cfg: Config, request: ScoreRequest, run_id: str) -> ScoreResult:
    """The `score` command: the supervisor's retry and logging around the agent, then the report.

    Same events (`stage.start`, `stage.attempt_failed`, `stage.retry`, `stage.done`) and the same
    transient/permanent split as a pipeline stage; the result goes to `reports/score.json`.
    """
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

    from src.supervisor import _is_transient, _log_retry

    sup_log = get_logger(component="supervisor")
    bind_context(run_id=run_id, stage=SCORE_STAGE, agent=ServingAgent.__name__)
    agent = ServingAgent(cfg)
    retry = cfg.supervisor.retry
    started = time.perf_counter()
    for attempt in Retrying(
        stop=stop_after_attempt(retry.attempts),
        wait=wait_exponential(multiplier=retry.backoff_initial_s, max=retry.backoff_max_s),
        retry=retry_if_exception(_is_transient),
        before_sleep=_log_retry,
        reraise=True,
    ):
        with attempt:
            bind_context(attempt=attempt.retry_state.attempt_number)
            attempt_started = time.perf_counter()
            sup_log.info("stage.start", request=request.model_dump(mode="json"))
            try:
                result = agent.handle(SCORE_STAGE, request)
            except Exception as exc:
                sup_log.warning(
                    "stage.attempt_failed", error=str(exc), error_type=type(exc).__name__,
                    transient=_is_transient(exc),
                    duration_s=round(time.perf_counter() - attempt_started, 3),
                )
                raise
    duration = round(time.perf_counter() - started, 3)
    assert isinstance(result, ScoreResult)
    result = result.model_copy(
        update={"run_id": run_id, "duration_s": duration, "finished_at": datetime.now(UTC)}
    )
    report = cfg.report_path(SCORE_STAGE)
    atomic_write_json(report, result.model_dump(mode="json"))
    sup_log.info("stage.done", duration_s=duration, report=str(report))
    return result
