"""MLflow set-up: the embedded SQLite store of params.yaml, or the server of MLFLOW_TRACKING_URI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from src.utils.config import Config, MlflowHttpConfig
from src.utils.errors import as_pipeline_error
from src.utils.logging import get_logger

log = get_logger(component="tracking")

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
_SQLITE_PREFIX = "sqlite:///"
_GIT_TIMEOUT_S = 10


def _disable_telemetry() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def http_env(http: MlflowHttpConfig) -> dict[str, str]:
    """MLflow's HTTP client variables for `mlflow.http` of params.yaml."""
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(http.max_retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(http.backoff_factor),
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": str(http.backoff_jitter),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(http.timeout_s),
        # Progress bars would flood the JSON logs.
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }


def apply_http_settings(cfg: Config) -> None:
    """Cap MLflow's own HTTP retries (its default, 7 retries with backoff, takes minutes against a
    dead server); a variable the user set wins. MLflow reads them at every request."""
    for name, value in http_env(cfg.mlflow.http).items():
        os.environ.setdefault(name, value)


def resolve_tracking_uri(cfg: Config) -> tuple[str, bool]:
    """The tracking URI to use and whether it is the embedded store of params.yaml."""
    override = os.environ.get(TRACKING_URI_ENV)
    if override:
        return override, False
    uri = cfg.mlflow.tracking_uri
    if uri.startswith(_SQLITE_PREFIX):
        # sqlite:///relative.db is relative to the working directory; params mean the project root.
        db = cfg.path(uri.removeprefix(_SQLITE_PREFIX))
        db.parent.mkdir(parents=True, exist_ok=True)
        return f"{_SQLITE_PREFIX}{db.resolve()}", True
    return uri, True


def _set_tracking_uri(mlflow: Any, uri: str) -> None:
    # MLflow copies the URI into MLFLOW_TRACKING_URI; left there, the next project configured in
    # this process would take it for a user's server override. Keep the variable as it was.
    before = os.environ.get(TRACKING_URI_ENV)
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop(TRACKING_URI_ENV, None)
    else:
        os.environ[TRACKING_URI_ENV] = before


def configure_mlflow(cfg: Config) -> str:
    """Point MLflow at the configured store and return the experiment id (created if absent).

    A server that cannot be reached raises TransientError, a refusal PermanentError.
    """
    _disable_telemetry()
    apply_http_settings(cfg)
    import mlflow  # after the telemetry switch: MLflow reads it at import

    uri, embedded = resolve_tracking_uri(cfg)
    _set_tracking_uri(mlflow, uri)
    name = cfg.mlflow.experiment
    try:
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            location = None
            if embedded:
                root = cfg.path(cfg.mlflow.artifact_root).resolve()
                root.mkdir(parents=True, exist_ok=True)
                location = root.as_uri()
            experiment_id = mlflow.create_experiment(name, artifact_location=location)
    except Exception as exc:
        named = as_pipeline_error(exc, f"MLflow at {uri}, experiment '{name}'")
        if named is None:
            raise
        raise named from exc
    log.info(
        "mlflow.configured",
        tracking_uri=uri,
        embedded=embedded,
        experiment=name,
        experiment_id=experiment_id,
    )
    return experiment_id


def git_commit(root: Path) -> str | None:
    """`git rev-parse HEAD` in `root`, or None outside a git repository (or before a commit)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None
