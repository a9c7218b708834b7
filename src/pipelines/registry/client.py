"""The MLflow tracking and model registry calls of the register stage and batch scoring.

No retry loop here: every fault is classified once (src/utils/errors.py) and the supervisor's
retry is the only one; MLflow's own HTTP retries are capped by `mlflow.http` of params.yaml.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from src.utils.config import Config
from src.utils.errors import (
    PermanentError,
    TransientError,
    as_pipeline_error,
    is_transient,
    short_error,
)
from src.utils.logging import get_logger
from src.utils.tracking import apply_http_settings, configure_mlflow, resolve_tracking_uri

log = get_logger(component="registry")

T = TypeVar("T")

NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"})
# Version tags that say what really happened: a version is created "pending" with no alias, and
# marked "complete" with its alias only once the alias is set. A pending version without an alias
# is an orphan (the server died in between) and the next registration removes it.
ALIAS_TAG = "alias_at_registration"
STATE_TAG = "registration"
ROLLBACK_TAG = "rollback"
PENDING, COMPLETE, NO_ALIAS = "pending", "complete", "none"
RUN_STAGE_TAG = "stage"
ALIAS_NOT_FOUND = "alias"
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")

__all__ = ["Registry", "is_not_found", "is_transient", "short_error"]


def is_not_found(exc: BaseException) -> bool:
    """True when MLflow says the registered model or alias does not exist."""
    code = getattr(exc, "error_code", None)
    if code in NOT_FOUND_CODES:
        return True
    return code == "INVALID_PARAMETER_VALUE" and ALIAS_NOT_FOUND in str(exc).lower()


class Registry:
    """MLflow tracking + model registry calls, each fault named transient or permanent."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        apply_http_settings(cfg)
        self.uri, self.embedded = resolve_tracking_uri(cfg)
        self.experiment_id: str | None = None
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`, its faults named: TransientError (server unreachable, 5xx) or
        PermanentError (a refusal); the supervisor decides whether to try the stage again."""
        try:
            return fn(*args, **kwargs)
        except (TransientError, PermanentError):
            raise
        except Exception as exc:
            named = as_pipeline_error(exc, f"MLflow at {self.uri}: {what}")
            if named is None:
                raise
            raise named from exc

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
        """A new version of `name` from `source`, tagged pending and without alias until
        `set_alias`; finds the version a lost reply created."""
        tags = {**tags, ALIAS_TAG: NO_ALIAS, STATE_TAG: PENDING}

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
        """Point `alias` at `version`, then tag the version with it (complete)."""
        self.call(
            f"set {name}@{alias}", self.client.set_registered_model_alias, name, alias, version
        )
        self.tag_version(name, version, {ALIAS_TAG: alias, STATE_TAG: COMPLETE})

    def tag_version(self, name: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.call(
                f"tag {name} v{version}", self.client.set_model_version_tag, name, version, key,
                value,
            )

    def delete_version(self, name: str, version: str) -> None:
        self.call(f"delete {name} v{version}", self.client.delete_model_version, name, version)

    def roll_back(self, name: str, version: str | None, run_id: str, cause: BaseException) -> None:
        """Best effort after a failed registration: delete the version that got no alias (or tag
        it so when it cannot be deleted), end the run FAILED. Never raises; what a dead server
        prevents here, `sweep_orphans` finishes on the next registration."""
        if version is not None:
            try:
                self.delete_version(name, version)
                log.warning("register.rolled_back", model_name=name, version=version,
                            error=short_error(cause), effect="version deleted, aliases unchanged")
            except Exception as delete_error:
                try:
                    self.tag_version(name, version, {ALIAS_TAG: NO_ALIAS, ROLLBACK_TAG: "failed"})
                    tagged = True
                except Exception:
                    tagged = False
                log.error("register.rollback_failed", model_name=name, version=version,
                          error=short_error(cause), delete_error=short_error(delete_error),
                          tagged=tagged,
                          effect="the version stays pending without alias; the next "
                                 "registration deletes it")
        try:
            self.end_run(run_id, "FAILED")
        except Exception as end_error:
            log.warning("register.run_not_closed", run_id=run_id, error=short_error(end_error),
                        effect="the next registration ends it FAILED")

    def sweep_orphans(self, name: str) -> list[str]:
        """Delete versions of `name` a failed registration left pending without an alias, and end
        the register runs left RUNNING as FAILED; returns the deleted versions.

        Assumes one registration at a time (register is one DVC stage)."""
        deleted: list[str] = []
        for found in self.versions(name):
            tags = dict(found.tags or {})
            if tags.get(STATE_TAG) != PENDING:
                continue
            version = str(found.version)
            aliases = list(getattr(found, "aliases", None) or [])
            if aliases:  # the alias was set, only the final tags were lost
                self.tag_version(name, version, {ALIAS_TAG: aliases[0], STATE_TAG: COMPLETE})
                continue
            self.delete_version(name, version)
            deleted.append(version)
            log.warning("register.orphan_deleted", model_name=name, version=version,
                        run_id=found.run_id)
        if self.experiment_id is None:
            self.connect()
        running = self.call(
            "find unfinished register runs", self.client.search_runs, [self.experiment_id],
            filter_string=f"tags.{RUN_STAGE_TAG} = 'register' and attributes.status = 'RUNNING'",
        )
        for run in running:
            self.end_run(run.info.run_id, "FAILED")
            log.warning("register.orphan_run_ended", run_id=run.info.run_id, status="FAILED")
        return deleted

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
