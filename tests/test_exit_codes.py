"""MLflow unreachable in a training stage: supervisor retries, then exit 3 (issue 11, item 1)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from src.supervisor import main
from src.utils.errors import PermanentError, TransientError, as_pipeline_error, is_transient
from src.utils.tracking import TRACKING_URI_ENV
from tests.mlflow_server import free_port

ATTEMPTS = 3
FAST_RETRY = {"attempts": ATTEMPTS, "backoff_initial_s": 0.05, "backoff_max_s": 0.1}
# Generous: MLflow's own retries are capped at 2 per request (~2.5 s); without the cap one attempt
# took minutes. Spark start-up and reading the split come on top.
BOUND_S = 120.0


def _project(split_project: Any, root: Path) -> Path:
    """A copy of the session's split project with fast supervisor retries.

    Only fetch → prep → split: the session may have trained in the same folder since.
    """
    shutil.copytree(
        split_project.root, root, ignore=shutil.ignore_patterns("logs", "mlruns*", "models")
    )
    for later in ("train_sup", "train_unsup", "evaluate", "register"):
        (root / "reports" / f"{later}.json").unlink(missing_ok=True)
    params_path = root / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["supervisor"]["retry"] = FAST_RETRY
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    return params_path


def _events(root: Path) -> list[dict[str, Any]]:
    lines = (root / "logs" / "pipeline.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("stage", ["train_sup", "train_unsup"])
def test_mlflow_down_exits_3_after_the_supervisors_retries(
    stage: str, split_project: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    root = tmp_path / "project"
    params = _project(split_project, root)
    port = free_port()  # nothing listens there: connection refused
    monkeypatch.setenv(TRACKING_URI_ENV, f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    code = main(["--params", str(params), "run", stage, "--run-id", "down"])
    elapsed = time.perf_counter() - started
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("{")]
    with capsys.disabled():
        print(f"\n{stage}: exit {code} after {elapsed:.1f} s")
    assert code == 3, err
    assert len(err) == 1 and err[0].startswith("error (gave up after retries): ")
    assert f"127.0.0.1:{port}" in err[0] and "unexpected" not in err[0]
    log = _events(root)
    retries = [e for e in log if e["event"] == "stage.retry" and e["stage"] == stage]
    assert [e["attempt"] for e in retries] == list(range(1, ATTEMPTS))
    failed = [e for e in log if e["event"] == "stage.attempt_failed"]
    assert len(failed) == ATTEMPTS and all(e["transient"] for e in failed)
    assert not (root / "reports" / f"{stage}.json").exists()
    assert elapsed < BOUND_S


class _RefusalError(Exception):
    """Stands for an MLflow exception: same module prefix and attributes, no server needed."""

    __module__ = "mlflow.exceptions"

    def __init__(self, message: str, error_code: str, status: int) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.status = status

    def get_http_status_code(self) -> int:
        return self.status


def test_mlflow_errors_are_classified_in_one_place() -> None:
    import requests
    from mlflow.exceptions import MlflowException, RestException

    try:
        try:
            raise requests.ConnectionError("Connection refused")
        except requests.ConnectionError as inner:
            raise MlflowException(f"API request failed with exception {inner}") from None
    except MlflowException as wrapped:
        # MLflow wraps the network error without chaining it: the message still names it.
        assert is_transient(wrapped)
    unavailable = RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"})
    assert isinstance(as_pipeline_error(unavailable, "x"), TransientError)
    bad_gateway = MlflowException("502 from the proxy", error_code="INTERNAL_ERROR")
    assert isinstance(as_pipeline_error(bad_gateway, "x"), TransientError)
    denied = RestException({"error_code": "PERMISSION_DENIED", "message": "no"})
    named = as_pipeline_error(denied, "create run")
    assert isinstance(named, PermanentError) and "create run" in str(named)
    assert isinstance(as_pipeline_error(_RefusalError("slow down", "X", 429), "x"), TransientError)
    assert as_pipeline_error(ValueError("a bug"), "x") is None
