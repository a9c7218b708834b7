"""kill -9 in the middle of real stages (issue 11, item 6): the previous outputs stay whole,
`status` stays true, and the next run removes what the killed one left.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from src.supervisor import run_stages, stage_states
from src.utils.config import deep_merge, load_config
from tests.conftest import SMALL_TRAINING, file_hashes, replace_models


def _debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def _copy_project(cfg: Any, root: Path, overrides: dict[str, Any]) -> Any:
    """The fixture's project copied to `root` (no MLflow store), params with `overrides`."""
    shutil.copytree(cfg.root, root, ignore=shutil.ignore_patterns("mlruns*", "logs"))
    params = yaml.safe_load((cfg.root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(deep_merge(params, overrides)))
    return load_config(root / "params.yaml")


def _kill_stage_when(root: Path, stage: str, ready: Callable[[], bool], timeout_s: float) -> None:
    """Run `stage` in its own process group (Python and its JVM); SIGKILL the group once `ready`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    log = root / f"{stage}.out"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "src.supervisor", "--params", str(root / "params.yaml"),
             "run", stage],
            cwd=Path(__file__).resolve().parents[1], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        try:
            while not ready():
                assert proc.poll() is None, f"{stage} ended before the kill:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"{stage}: not ready in {timeout_s} s"
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_prep_killed_while_writing_keeps_the_old_data_and_the_rerun_cleans_up(
    split_project: Any, spark: Any, tmp_path: Path
) -> None:
    """Killed at a seeded random moment of its writes; whatever the moment, the old outputs (which
    a complete run reproduces byte for byte) and the reports agree, and `status` says so."""
    cfg = _copy_project(split_project, tmp_path / "project", {})
    processed = cfg.path("data/processed")
    outputs = [processed / "M.parquet", processed / "rejected.parquet"]

    def hashes() -> list[dict[str, str]]:
        return [file_hashes(f) for f in outputs]

    before = hashes()
    report = cfg.report_path("prep").read_bytes()
    delay = random.Random(11).uniform(0.0, 1.5)
    writing_since: list[float] = []

    def writing_for_a_while() -> bool:
        if not writing_since and _debris(processed):
            writing_since.append(time.monotonic())
        return bool(writing_since) and time.monotonic() - writing_since[0] >= delay

    _kill_stage_when(cfg.root, "prep", writing_for_a_while, timeout_s=300)
    assert hashes() == before and cfg.report_path("prep").read_bytes() == report
    assert stage_states(cfg)["prep"] == "ok" and stage_states(cfg)["split"] == "ok"

    run_stages(cfg, ["prep"], run_id="after-kill")
    assert _debris(processed) == []
    assert hashes() == before, "a rerun on the same input writes the same bytes"


def test_train_sup_killed_mid_training_leaves_the_old_models_whole_and_the_rerun_cleans_up(
    trained_project: Any, spark: Any, tmp_path: Path
) -> None:
    """Not a mixture: the kill comes at a seeded random moment after the first new model is saved
    in staging, while the next one trains; the old models stay intact until a complete rerun."""
    mlflow = {"tracking_uri": "sqlite:///mlruns_kill/mlflow.db",
              "artifact_root": "mlruns_kill/artifacts", "experiment": "kill-test"}
    cfg = _copy_project(trained_project, tmp_path / "project",
                        {**SMALL_TRAINING, "mlflow": mlflow})
    # The quickest model first: the kill comes once it is saved, while the forest trains.
    params = replace_models(
        cfg.root / "params.yaml",
        {"logistic": {"maxIter": 10}, "random_forest": {"numTrees": 20}},
    )
    cfg = load_config(params)
    models = cfg.path(cfg.train.models_dir)
    before = file_hashes(models)
    report = cfg.report_path("train_sup").read_bytes()
    delay = random.Random(12).uniform(0.0, 2.0)
    saved_since: list[float] = []

    def first_model_saved_a_while_ago() -> bool:
        if not saved_since and any(models.parent.glob(f".{models.name}.tmp-*/*/calibration.json")):
            saved_since.append(time.monotonic())
        return bool(saved_since) and time.monotonic() - saved_since[0] >= delay

    _kill_stage_when(cfg.root, "train_sup", first_model_saved_a_while_ago, timeout_s=400)
    assert _debris(models.parent), "the kill came after the rename: nothing was tested"
    assert file_hashes(models) == before and cfg.report_path("train_sup").read_bytes() == report
    assert stage_states(cfg)["train_sup"] == "ok"

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        run_stages(cfg, ["train_sup"], run_id="after-kill")
    assert _debris(models.parent) == []
    assert sorted(p.name for p in models.iterdir()) == ["logistic", "random_forest"]
    assert stage_states(cfg)["train_sup"] == "ok"
