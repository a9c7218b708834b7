"""The MLflow model registry behind retries: a server that comes up late is waited for, one that
stays down fails with one clear error, and MLflow's own long HTTP retry loop is turned off so the
retry policy is `register.retry` alone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import requests
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from src.utils.config import Config, RetryConfig
from src.utils.errors import PermanentError, TransientError
from src.utils.logging import get_logger
from src.utils.tracking import configure_mlflow, resolve_tracking_uri

log = get_logger(component="registry")

T = TypeVar("T")

# MLflow retries each HTTP request up to 7 times with backoff (minutes against a dead server);
# inside the registry's own retry loop one try per call is enough. Progress bars would flood the
# JSON logs.
HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
# MLflow error codes that mean "try again later".
TRANSIENT_CODES = frozenset(
    {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "INTERNAL_ERROR", "DEADLINE_EXCEEDED"}
)
NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"})
ALIAS_NOT_FOUND = "alias"
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")
_MAX_ERROR_CHARS = 300


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient(exc: BaseException) -> bool:
    """True for network faults: refused or reset connections, timeouts, 5xx/429 answers."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, PermanentError):
        return False
    for link in _chain(exc):
        if isinstance(
            link, ConnectionError | TimeoutError | requests.ConnectionError | requests.Timeout
        ):
            return True
        if getattr(link, "error_code", None) in TRANSIENT_CODES:
            return True
    # MLflow wraps the requests error in a message without chaining it in some paths.
    text = str(exc)
    return "Max retries exceeded" in text or "Connection refused" in text


def is_not_found(exc: BaseException) -> bool:
    """True when MLflow says the registered model or alias does not exist."""
    code = getattr(exc, "error_code", None)
    if code in NOT_FOUND_CODES:
        return True
    return code == "INVALID_PARAMETER_VALUE" and ALIAS_NOT_FOUND in str(exc).lower()


def short_error(exc: BaseException) -> str:
    """One line of an exception, bounded in length."""
    text = " ".join(str(exc).split())
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "…"


@contextmanager
def mlflow_http_settings() -> Iterator[None]:
    """Set MLflow's HTTP retry/timeout variables for the block, unless the user set them."""
    saved = {name: os.environ.get(name) for name in HTTP_ENV}
    for name, value in HTTP_ENV.items():
        os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Registry:
    """MLflow tracking + model registry calls, each retried on transient faults."""

    def __init__(self, cfg: Config, retry: RetryConfig | None = None) -> None:
        self.cfg = cfg
        self.retry = retry or cfg.registry.retry
        self.uri, self.embedded = resolve_tracking_uri(cfg)
        self.experiment_id: str | None = None
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def _log_retry(self, what: str) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "registry.retry",
                what=what,
                attempt=state.attempt_number,
                attempts=self.retry.attempts,
                tracking_uri=self.uri,
                error=short_error(exc) if exc else None,
                sleep_s=round(state.next_action.sleep, 3) if state.next_action else None,
            )

        return before_sleep

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` with `register.retry` retries on transient faults.

        Gives up with TransientError (server unreachable) or PermanentError (a refusal).
        """
        retrying = Retrying(
            stop=stop_after_attempt(self.retry.attempts),
            wait=wait_exponential(
                multiplier=self.retry.backoff_initial_s, max=self.retry.backoff_max_s
            ),
            retry=retry_if_exception(is_transient),
            before_sleep=self._log_retry(what),
            reraise=True,
        )
        try:
            with mlflow_http_settings():
                for attempt in retrying:
                    with attempt:
                        return fn(*args, **kwargs)
        except (TransientError, PermanentError):
            raise
        except Exception as exc:
            if is_transient(exc):
                raise TransientError(
                    f"MLflow at {self.uri} unreachable during {what} after "
                    f"{self.retry.attempts} attempts: {short_error(exc)}"
                ) from exc
            raise PermanentError(
                f"MLflow at {self.uri} refused {what}: {short_error(exc)}"
            ) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    # --- tracking --------------------------------------------------------------------------------

    def connect(self) -> str:
        """Point MLflow at the store and get (or create) the experiment; returns its id."""
        self.experiment_id = self.call("connect", configure_mlflow, self.cfg)
        return self.experiment_id

    def create_run(self, run_name: str, tags: dict[str, str]) -> str:
        """A new run in the experiment; returns its id."""
        if self.experiment_id is None:
            self.connect()
        run = self.call(
            "create run", self.client.create_run, self.experiment_id, tags=tags, run_name=run_name
        )
        return str(run.info.run_id)

    def log_run_data(self, run_id: str, params: dict[str, Any], metrics: dict[str, float]) -> None:
        """Params and metrics of a run in one batch."""
        from mlflow.entities import Metric, Param

        timestamp = _now_ms()
        self.call(
            "log params and metrics",
            self.client.log_batch,
            run_id,
            metrics=[Metric(k, float(v), timestamp, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
        )

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str) -> None:
        self.call(
            f"upload {artifact_path}", self.client.log_artifacts, run_id, str(local_dir),
            artifact_path,
        )

    def log_artifact(self, run_id: str, local_file: Path, artifact_path: str) -> None:
        self.call(
            f"upload {artifact_path}/{local_file.name}", self.client.log_artifact, run_id,
            str(local_file), artifact_path,
        )

    def end_run(self, run_id: str, status: str) -> None:
        self.call(f"end run ({status})", self.client.set_terminated, run_id, status)

    def run_artifact_uri(self, run_id: str, artifact_path: str) -> str:
        """Where the run's artifact folder lives: the source of a model version."""
        run = self.call("get run", self.client.get_run, run_id)
        return f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"

    # --- registry --------------------------------------------------------------------------------

    def alias_version(self, name: str, alias: str) -> Any | None:
        """The model version holding `alias`, or None when the model or the alias does not exist."""

        def lookup() -> Any | None:
            try:
                return self.client.get_model_version_by_alias(name, alias)
            except Exception as exc:
                if is_not_found(exc):
                    return None
                raise

        return self.call(f"look up {name}@{alias}", lookup)

    def ensure_registered_model(self, name: str) -> None:
        """Create the registered model unless it exists."""

        def ensure() -> None:
            try:
                self.client.get_registered_model(name)
            except Exception as exc:
                if not is_not_found(exc):
                    raise
                self.client.create_registered_model(name)

        self.call(f"create registered model {name}", ensure)

    def create_version(self, name: str, source: str, run_id: str, tags: dict[str, str]) -> Any:
        """A new version of `name` from `source`; a retry finds the version a lost reply created."""

        def create() -> Any:
            existing = self.client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
            if existing:
                return max(existing, key=lambda v: int(v.version))
            return self.client.create_model_version(name, source, run_id=run_id, tags=tags)

        return self.call(f"create a version of {name}", create)

    def describe_version(self, name: str, version: str, description: str) -> None:
        self.call(
            f"describe {name} v{version}", self.client.update_model_version, name, version,
            description=description,
        )

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.call(
            f"set {name}@{alias}", self.client.set_registered_model_alias, name, alias, version
        )

    def delete_version(self, name: str, version: str) -> None:
        self.call(f"delete {name} v{version}", self.client.delete_model_version, name, version)

    def versions(self, name: str) -> list[Any]:
        """Every live version of `name` (empty when the model does not exist)."""
        return list(self.call(f"list {name}", self.client.search_model_versions, f"name='{name}'"))

    def source_of(self, uri: str) -> str:
        """The artifact location behind `models:/name@alias` or `models:/name/version`.

        Resolved here because MLflow resolves `models:/` through its global registry URI, not
        the one passed to download_artifacts; other URIs come back unchanged.
        """
        match = _MODEL_URI.match(uri)
        if match is None:
            return uri
        name, alias, number = match.group("name", "alias", "version")
        if alias is not None:
            found = self.alias_version(name, alias)
            if found is None:
                raise PermanentError(
                    f"{uri}: no version of '{name}' holds alias '{alias}' at {self.uri} "
                    "(nothing registered yet?)"
                )
        else:
            found = self.call(f"look up {uri}", self.client.get_model_version, name, number)
        return str(found.source)

    def download(self, uri: str, dst: Path) -> Path:
        """Download a model URI's folder into `dst`; returns the local folder."""
        import mlflow

        source = self.source_of(uri)
        dst.mkdir(parents=True, exist_ok=True)
        local = self.call(
            f"download {uri}", mlflow.artifacts.download_artifacts, artifact_uri=source,
            dst_path=str(dst), tracking_uri=self.uri,
        )
        return Path(local)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
