"""A server that dies between creating a version and setting its alias leaves no orphan behind
(issue 11, item 8): the version says it has no alias, and the next registration deletes it and
ends its run FAILED. Registry client against a real `mlflow server`, no trained model needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.pipelines.registry.client import ALIAS_TAG, PENDING, STATE_TAG, Registry
from src.utils.config import load_config
from src.utils.errors import TransientError
from src.utils.tracking import TRACKING_URI_ENV
from tests.conftest import write_params
from tests.mlflow_server import MlflowServer, free_port

NAME = "rollback-test"


def test_server_dies_between_version_and_alias(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    server = MlflowServer(tmp_path / "server", port=free_port())
    monkeypatch.setenv(TRACKING_URI_ENV, server.uri)
    cfg = load_config(write_params(tmp_path / "project"))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.onnx").write_bytes(b"not really a model")
    db = f"sqlite:///{(tmp_path / 'server' / 'mlflow.db').resolve()}"
    try:
        server.start()
        registry = Registry(cfg)
        registry.connect()
        run_id = registry.create_run("register-test", {"stage": "register"})
        registry.log_artifacts(run_id, bundle, "bundle")
        registry.ensure_registered_model(NAME)
        source = registry.run_artifact_uri(run_id, "bundle")
        created = registry.create_version(NAME, source, run_id, {ALIAS_TAG: "champion"})
        version = str(created.version)
        server.stop()  # dies before the alias
        with pytest.raises(TransientError, match="unreachable") as failure:
            registry.set_alias(NAME, "champion", version)
        registry.roll_back(NAME, version, run_id, failure.value)  # never raises

        store = MlflowClient(tracking_uri=db, registry_uri=db)
        (orphan,) = store.search_model_versions(f"name='{NAME}'")
        assert orphan.tags[ALIAS_TAG] == "none" and orphan.tags[STATE_TAG] == PENDING
        assert store.get_run(run_id).info.status == "RUNNING"

        server.start()
        assert Registry(cfg).sweep_orphans(NAME) == [version]
    finally:
        server.stop()
    store = MlflowClient(tracking_uri=db, registry_uri=db)
    assert store.search_model_versions(f"name='{NAME}'") == []
    assert store.get_run(run_id).info.status == "FAILED"
    runs = store.search_runs([store.get_experiment_by_name(cfg.mlflow.experiment).experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_rollback_with_the_server_up_deletes_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = MlflowServer(tmp_path / "server", port=free_port())
    monkeypatch.setenv(TRACKING_URI_ENV, server.uri)
    cfg = load_config(write_params(tmp_path / "project"))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.onnx").write_bytes(b"x")
    with server:
        registry = Registry(cfg)
        run_id = registry.create_run("register-test", {"stage": "register"})
        registry.log_artifacts(run_id, bundle, "bundle")
        registry.ensure_registered_model(NAME)
        created = registry.create_version(
            NAME, registry.run_artifact_uri(run_id, "bundle"), run_id, {}
        )
        registry.roll_back(NAME, str(created.version), run_id, RuntimeError("simulated"))
        assert registry.versions(NAME) == []
        assert registry.client.get_run(run_id).info.status == "FAILED"
