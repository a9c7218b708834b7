"""Error taxonomy: the supervisor retries transient faults and fails at once on permanent ones."""

from __future__ import annotations


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
