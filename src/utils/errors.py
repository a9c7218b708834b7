"""Error taxonomy: the supervisor retries transient faults and fails at once on permanent ones."""

from __future__ import annotations

import errno


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose; its message is one clear line."""


class PermanentError(PipelineError):
    """Bad data, bad config, a stale upstream result: retrying cannot help."""


class TransientError(PipelineError):
    """Network trouble, a timeout, a server not up yet: worth another attempt."""


class ConfigError(PermanentError):
    """`params.yaml` (or an override) is invalid."""


class DataError(PermanentError):
    """An input file is missing, malformed or inconsistent."""


class StaleUpstreamError(PermanentError):
    """An upstream stage's result is missing or no longer matches its artifacts."""


# MLflow error codes that mean "try again later" (a 5xx or 429 answer, a server not ready).
TRANSIENT_CODES = frozenset(
    {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "INTERNAL_ERROR", "DEADLINE_EXCEEDED"}
)
# What MLflow puts in a message when it wraps a network error without chaining it.
_NETWORK_TEXT = ("Max retries exceeded", "Connection refused", "Connection reset", "timed out")
_MAX_ERROR_CHARS = 300
# How a full disk reads once Spark has carried it from an executor or the JVM to Python.
_DISK_FULL_TEXT = "No space left on device"


def short_error(exc: BaseException) -> str:
    """One line of an exception, bounded in length."""
    text = " ".join(str(exc).split())
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "…"


def _chain(exc: BaseException) -> list[BaseException]:
    links: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not link for link in links):
        links.append(current)
        current = current.__cause__ or current.__context__
    return links


def _is_network_error(exc: BaseException) -> bool:
    import requests

    return isinstance(
        exc,
        ConnectionError | TimeoutError | requests.ConnectionError | requests.Timeout
        | requests.exceptions.RetryError,
    )


def _http_status(exc: BaseException) -> int | None:
    # MlflowException maps its error code to an HTTP status; read it without importing MLflow.
    getter = getattr(exc, "get_http_status_code", None)
    try:
        return int(getter()) if callable(getter) else None
    except (TypeError, ValueError):
        return None


def _is_mlflow_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("mlflow") and hasattr(exc, "error_code")


def is_transient(exc: BaseException) -> bool:
    """True for faults a later attempt can cure: network errors, timeouts, 5xx and 429 answers."""
    if isinstance(exc, PipelineError):
        return isinstance(exc, TransientError)
    for link in _chain(exc):
        if isinstance(link, PipelineError):
            return isinstance(link, TransientError)
        if _is_network_error(link) or getattr(link, "error_code", None) in TRANSIENT_CODES:
            return True
        if _is_mlflow_error(link) and (_http_status(link) or 0) in (429, *range(500, 600)):
            return True
    text = str(exc)
    return _is_mlflow_error(exc) and any(marker in text for marker in _NETWORK_TEXT)


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc`, or what caused it, is a write refused for want of disk space."""
    return any(
        (isinstance(link, OSError) and link.errno == errno.ENOSPC) or _DISK_FULL_TEXT in str(link)
        for link in _chain(exc)
    )


def as_pipeline_error(exc: BaseException, what: str) -> PipelineError | None:
    """Name a library fault: transient (network, 5xx) or permanent (a full disk, an MLflow
    refusal), else None. `what` says what was being done ("train_sup", "create a version of ...").
    """
    if isinstance(exc, PipelineError):
        return exc
    if is_disk_full(exc):
        # Spark's own message is pages of JVM trace with the cause at the bottom; the log event
        # keeps it. Every output is renamed into place only when complete (atomic_path).
        return PermanentError(
            f"{what}: a disk is full ({_DISK_FULL_TEXT}); the previous outputs are unchanged. "
            "Free space where the project, TMPDIR and spark.local.dir live, then rerun"
        )
    if is_transient(exc):
        return TransientError(f"{what}: unreachable or overloaded service: {short_error(exc)}")
    if _is_mlflow_error(exc):
        return PermanentError(f"{what}: MLflow refused the request: {short_error(exc)}")
    return None
