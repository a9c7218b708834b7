"""The supervisor: builds each request from upstream results, runs the agent, retries faults.

python -m src.supervisor run STAGE|all     python -m src.supervisor agents
python -m src.supervisor status
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dotenv import load_dotenv
from pydantic import ValidationError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from src.agents.base import Agent, Skill
from src.contracts import (
    EvaluateRequest,
    FetchRequest,
    Message,
    PrepRequest,
    RegisterRequest,
    SplitRequest,
    StageResult,
    TrainSupRequest,
    TrainUnsupRequest,
)
from src.utils.config import Config, load_config
from src.utils.errors import (
    PermanentError,
    StaleUpstreamError,
    TransientError,
    as_pipeline_error,
    is_transient,
)
from src.utils.hashing import content_hash
from src.utils.logging import bind_context, clear_context, configure_logging, get_logger
from src.utils.stage_reports import read_stage_report, run_record_path, write_stage_report

log = get_logger(component="supervisor")

Upstream = dict[str, StageResult]


def _fetch_request(cfg: Config, _: Upstream) -> FetchRequest:
    source = cfg.data.source
    if source != "auto":
        return FetchRequest(source=source, reason="data.source in params.yaml")
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return FetchRequest(source="kaggle", reason="auto: Kaggle credentials are set")
    return FetchRequest(
        source="synthetic", reason="auto: no Kaggle credentials, embedded synthetic data"
    )


def import_agent(path: str) -> type[Agent]:
    """The agent class at "module:Class"; imported on use, so `serve` never loads Spark modules."""
    module, name = path.split(":")
    agent: type[Agent] = getattr(importlib.import_module(module), name)
    return agent


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: the agent that runs it, the stages it reads, how its request is built."""

    name: str
    agent_path: str  # "module:Class", imported on first use
    upstream: tuple[str, ...]
    build_request: Callable[[Config, Upstream], Message]

    @property
    def agent(self) -> type[Agent]:
        return import_agent(self.agent_path)

    @property
    def agent_name(self) -> str:
        return self.agent_path.split(":")[1]

    @property
    def skill(self) -> Skill:
        return next(s for s in self.agent.skills if s.stage == self.name)


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("fetch", "src.agents.data_agent:DataAgent", (), _fetch_request),
        Stage(
            "prep",
            "src.agents.feature_agent:FeatureAgent",
            ("fetch",),
            lambda _, up: PrepRequest(raw=up["fetch"].raw),
        ),
        Stage(
            "split",
            "src.agents.feature_agent:FeatureAgent",
            ("prep",),
            lambda _, up: SplitRequest(processed=up["prep"].processed),
        ),
        Stage(
            "train_sup",
            "src.agents.trainer_agent:TrainerAgent",
            ("split",),
            lambda _, up: TrainSupRequest(train=up["split"].train, test=up["split"].test),
        ),
        Stage(
            "train_unsup",
            "src.agents.segmenter_agent:SegmenterAgent",
            ("split",),
            lambda _, up: TrainUnsupRequest(train=up["split"].train),
        ),
        Stage(
            "evaluate",
            "src.agents.evaluator_agent:EvaluatorAgent",
            ("split", "train_sup", "train_unsup"),
            lambda _, up: EvaluateRequest(
                test=up["split"].test, train_sup=up["train_sup"], train_unsup=up["train_unsup"]
            ),
        ),
        Stage(
            "register",
            "src.agents.registry_agent:RegistryAgent",
            ("fetch", "split", "train_sup", "train_unsup", "evaluate"),
            lambda _, up: RegisterRequest(
                test=up["split"].test,
                train_sup=up["train_sup"],
                train_unsup=up["train_unsup"],
                evaluate=up["evaluate"],
                split=up["split"],
                fetch=up["fetch"],
            ),
        ),
    )
}
# Agents that serve rather than run a pipeline stage (`score`, `serve`).
SERVICE_AGENTS = ("src.agents.serving_agent:ServingAgent",)


def load_result(cfg: Config, stage_name: str, verify: bool = True) -> StageResult:
    """Read and validate `reports/<stage>.json`; with `verify`, check its artifacts still match."""
    stage = STAGES[stage_name]
    path = cfg.report_path(stage_name)
    if not path.is_file():
        raise StaleUpstreamError(f"{path}: no result of stage '{stage_name}'; run it first")
    try:
        result = read_stage_report(path, stage.skill.result)
    except json.JSONDecodeError as exc:
        raise StaleUpstreamError(f"{path}: not a {stage_name} result: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise StaleUpstreamError(
            f"{path}: not a valid {stage_name} result (with its run record "
            f"{run_record_path(path)}): {where}: {first['msg']}"
        ) from exc
    if verify:
        for artifact in result.artifacts():
            target = cfg.path(artifact.path)
            if not target.exists():
                raise StaleUpstreamError(
                    f"{path}: artifact {artifact.path} is missing; rerun '{stage_name}'"
                )
            if content_hash(target) != artifact.sha256:
                raise StaleUpstreamError(
                    f"{path}: artifact {artifact.path} changed since '{stage_name}' ran; rerun it"
                )
    return result


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning(
        "stage.retry",
        attempt=state.attempt_number,
        error=str(exc),
        error_type=type(exc).__name__,
        sleep_s=round(state.next_action.sleep, 3) if state.next_action else None,
    )


def run_stage(cfg: Config, stage_name: str, run_id: str) -> StageResult:
    """Build the request from upstream results, run the agent with retries, write the report."""
    stage = STAGES[stage_name]
    bind_context(run_id=run_id, stage=stage_name, agent=stage.agent_name)
    upstream = {name: load_result(cfg, name) for name in stage.upstream}
    request = stage.build_request(cfg, upstream)
    return run_agent(cfg, stage_name, stage.agent(cfg), request, run_id)


def run_agent(
    cfg: Config, stage_name: str, agent: Agent, request: Message, run_id: str
) -> StageResult:
    """Hand `request` to `agent` with retries on transient faults; write `reports/<stage>.json`."""
    bind_context(run_id=run_id, stage=stage_name, agent=agent.name)
    retry = cfg.supervisor.retry
    started = time.perf_counter()
    for attempt in Retrying(
        stop=stop_after_attempt(retry.attempts),
        wait=wait_exponential(multiplier=retry.backoff_initial_s, max=retry.backoff_max_s),
        retry=retry_if_exception(is_transient),
        before_sleep=_log_retry,
        reraise=True,
    ):
        with attempt:
            number = attempt.retry_state.attempt_number
            bind_context(attempt=number)
            attempt_started = time.perf_counter()
            log.info("stage.start", request=request.model_dump(mode="json"))
            try:
                result = agent.handle(stage_name, request)
            except Exception as exc:
                # A library's network fault or refusal becomes our TransientError/PermanentError,
                # so the retry decision and the exit code come from one classification.
                named = as_pipeline_error(exc, stage_name)
                log.warning(
                    "stage.attempt_failed",
                    error=str(exc),
                    error_type=type(exc).__name__,
                    transient=is_transient(exc),
                    duration_s=round(time.perf_counter() - attempt_started, 3),
                )
                if named is None or named is exc:
                    raise
                raise named from exc
    duration = round(time.perf_counter() - started, 3)
    result = result.model_copy(
        update={"run_id": run_id, "duration_s": duration, "finished_at": datetime.now(UTC)}
    )
    write_stage_report(cfg.report_path(stage_name), result)
    log.info("stage.done", duration_s=duration, report=str(cfg.report_path(stage_name)))
    return result


def run_stages(cfg: Config, names: Sequence[str], run_id: str) -> None:
    for name in names:
        run_stage(cfg, name, run_id)
        clear_context()


def _print_agents() -> None:
    paths = dict.fromkeys([*(stage.agent_path for stage in STAGES.values()), *SERVICE_AGENTS])
    for path in paths:
        agent = import_agent(path)
        name = agent.__name__
        print(f"{name}: {(agent.__doc__ or '').strip().splitlines()[0]}")
        for skill in agent.skills:
            print(f"  {skill.stage:<12} {skill.request.__name__} -> {skill.result.__name__}")


def stage_states(cfg: Config) -> dict[str, str]:
    """Each stage's state: "ok", "not run", or "stale: why"; a stage downstream of one that is not
    ok is stale too, since its inputs are about to change."""
    states: dict[str, str] = {}
    for name, stage in STAGES.items():
        if not cfg.report_path(name).is_file():
            states[name] = "not run"
            continue
        try:
            load_result(cfg, name, verify=True)
            states[name] = "ok"
        except StaleUpstreamError as exc:
            states[name] = f"stale: {exc}"
            continue
        behind = [up for up in stage.upstream if states.get(up) != "ok"]
        if behind:
            states[name] = f"stale: upstream '{behind[0]}' is {states[behind[0]].split(':')[0]}"
    return states


def _print_status(cfg: Config) -> None:
    for name, state in stage_states(cfg).items():
        if state != "ok":
            print(f"{name:<12} {state}")
            continue
        result = load_result(cfg, name, verify=False)
        print(
            f"{name:<12} {state:<6} finished {result.finished_at} "
            f"in {result.duration_s} s, run {result.run_id}"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="credit-risk", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--params", type=Path, default=None, help="params file (default params.yaml)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one stage, or all of them in order")
    run.add_argument("stage", choices=[*STAGES, "all"])
    run.add_argument("--run-id", default=None)
    sub.add_parser("agents", help="list the agents and the contracts they take and return")
    sub.add_parser("status", help="last result of each stage")
    serve = sub.add_parser("serve", help="run the REST API (default 127.0.0.1:8000, ONNX)")
    serve.add_argument("--host", default=None, help="default serving.host")
    serve.add_argument("--port", type=int, default=None, help="default serving.port")
    serve.add_argument(
        "--backend",
        choices=["onnx", "spark"],
        default=None,
        help="default serving.backend (spark: for comparison only)",
    )
    serve.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="a bundle folder (e.g. models/registered) instead of the registry",
    )
    score = sub.add_parser("score", help="score a raw LendingClub CSV(.gz) with the champion")
    score.add_argument("--input", required=True, help="raw LendingClub CSV or CSV.gz")
    score.add_argument(
        "--output", required=True, help="predictions folder to write (part files, one row per loan)"
    )
    score.add_argument(
        "--format", choices=["parquet", "csv"], default=None, help="default score.format"
    )
    score.add_argument("--model", default=None, help="model URI (default serving.model_uri)")
    score.add_argument("--run-id", default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.command == "agents":
        _print_agents()
        return 0
    run_id = (
        getattr(args, "run_id", None)
        or os.environ.get("CREDIT_RISK_RUN_ID")
        or uuid.uuid4().hex[:12]
    )
    try:
        cfg = load_config(args.params)
        load_dotenv(cfg.root / ".env", override=False)
        configure_logging(cfg.path(cfg.supervisor.logs_dir) / "pipeline.jsonl")
        if args.command == "status":
            _print_status(cfg)
            return 0
        if args.command == "serve":
            from src.agents.serving_agent import ServingAgent

            ServingAgent(cfg).serve(args.host, args.port, args.backend, args.bundle)
            return 0
        if args.command == "score":
            from src.agents.serving_agent import ServingAgent
            from src.contracts import ScoreRequest

            request = ScoreRequest(
                input_path=args.input,
                output_path=args.output,
                model_uri=args.model or cfg.serving.model_uri,
                format=args.format,
            )
            run_agent(cfg, "score", ServingAgent(cfg), request, run_id)
            return 0
        names = list(STAGES) if args.stage == "all" else [args.stage]
        run_stages(cfg, names, run_id)
        return 0
    except PermanentError as exc:
        log.error("stage.failed", error=str(exc), error_type=type(exc).__name__, transient=False)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TransientError as exc:
        log.error("stage.failed", error=str(exc), error_type=type(exc).__name__, transient=True)
        print(f"error (gave up after retries): {exc}", file=sys.stderr)
        return 3
    except Exception as exc:
        log.exception("stage.crashed", error=str(exc), error_type=type(exc).__name__)
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
