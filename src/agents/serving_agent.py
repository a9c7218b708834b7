"""ServingAgent: batch scoring of raw files (skill `score`) and the champion's REST API (`serve`).

Nothing here imports Spark at module level: `score` starts Spark when called, `serve` runs the
Spark-free FastAPI app (`src.serving.app`) unless the Spark comparison backend is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from src.agents.base import Agent, Skill
from src.contracts import ScoreRequest, ScoreResult
from src.utils.logging import get_logger

log = get_logger(agent="ServingAgent")

SCORE_STAGE = "score"


class ServingAgent(Agent):
    """Serving: scores raw LendingClub files in batch and serves the champion over REST."""

    skills = (Skill(SCORE_STAGE, ScoreRequest, ScoreResult, "score"),)

    def score(self, request: ScoreRequest) -> ScoreResult:
        """Score every loan of `request.input_path` with `request.model_uri` (Spark executors)."""
        from src.pipelines.scoring.batch import score_file
        from src.utils.spark import get_spark

        spark = get_spark(self.cfg.spark)
        return score_file(
            spark,
            self.cfg,
            self.cfg.path(request.input_path),
            self.cfg.path(request.output_path),
            request.model_uri,
            request.format,
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


