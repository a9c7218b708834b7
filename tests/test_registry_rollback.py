"""Rolling back a version with a real `mlflow server` up deletes it and ends its run FAILED.
Registry client only, no trained model needed. The server dying between version and alias (issue
11, item 8) is tested end to end through `register` in test_register."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.pipelines.registry.client import Registry
from src.utils.config import load_config
from src.utils.tracking import TRACKING_URI_ENV
from tests.conftest import write_params
from tests.mlflow_server import MlflowServer, free_port

NAME = "rollback-test"


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
