"""`dvc repro` in a fresh git repo runs the pipeline on synthetic data; a rerun does nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, replace_models, write_params

# Small but real: enough loans for every stage, one small model so the run stays short (these
# tests are about DVC; every model kind is trained in test_train_sup and saved twice, byte for byte,
# in test_reproducible). Each stage here is its own process: most of the time is JVM start-up.
# No tree model: evaluate must still write every plot dvc.yaml declares.
MODELS = {"logistic": {"maxIter": 20}}
SMALL = {
    "data": {"source": "auto", "synthetic": {"rows": 4000}},
    "segment": {"k_range": [3, 3]},
    "evaluate": {"bootstrap_samples": 100},
    # Small models need not beat the lender's grade; the floor has its own test (test_register).
    "register": {"floor_reference": None},
}


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("KAGGLE_USERNAME", None)
    env.pop("KAGGLE_KEY", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dvc_repo")
    tracked = run(["git", "ls-files"], REPO).stdout.split()
    for name in {
        *tracked,
        "src/pipelines/acquisition/synthetic.py",
        "src/pipelines/acquisition/synthetic_calibration.json",
    }:
        if (REPO / name).is_file() and not name.startswith("tests/"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    replace_models(write_params(root, SMALL), MODELS)
    run(["git", "init", "-q"], root)
    if not (root / ".dvc").is_dir():
        run([sys.executable, "-m", "dvc", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], root)
    return root


def test_repro_runs_every_stage_then_is_a_no_op(dvc_repo: Path) -> None:
    first = run([sys.executable, "-m", "dvc", "repro"], dvc_repo)
    for stage in ("fetch", "prep", "split", "train_sup", "train_unsup", "evaluate", "register"):
        assert f"Running stage '{stage}'" in first.stdout
    fetch = json.loads((dvc_repo / "reports" / "fetch.json").read_text())
    assert fetch["source"] == "synthetic"
    prep = json.loads((dvc_repo / "reports" / "prep.json").read_text())
    assert prep["footer_rows"] == 2 and prep["kept_rows"] > 3000
    register = json.loads((dvc_repo / "reports" / "register.json").read_text())
    assert register["alias"] == "champion" and register["version"] == "1"

    second = run([sys.executable, "-m", "dvc", "repro"], dvc_repo)
    assert "Running stage" not in second.stdout
    status = run([sys.executable, "-m", "dvc", "status"], dvc_repo)
    assert "up to date" in status.stdout

    metrics = run([sys.executable, "-m", "dvc", "metrics", "show"], dvc_repo)
    assert "reports/prep.json" in metrics.stdout and "kept_rows" in metrics.stdout


def test_forced_reruns_write_the_same_bytes_and_leave_downstream_up_to_date(
    dvc_repo: Path,
) -> None:
    """prep and train_sup rerun in new processes: every report, and so every artifact hash in
    them, is byte-identical, and DVC reruns nothing after them (issue 11, item 5)."""
    reports = dvc_repo / "reports"
    before = {p.name: p.read_text() for p in sorted(reports.glob("*.json"))}
    runs_before = json.loads((reports / "runs" / "train_sup.json").read_text())
    for stage in ("prep", "train_sup"):
        forced = run([sys.executable, "-m", "dvc", "repro", "--force", "--single-item", stage],
                     dvc_repo)
        assert f"Running stage '{stage}'" in forced.stdout
    after = {p.name: p.read_text() for p in sorted(reports.glob("*.json"))}
    assert after.keys() == before.keys() and len(after) >= 8
    assert [name for name in after if after[name] != before[name]] == []
    # Only the run record moved: new MLflow runs, new times.
    runs_after = json.loads((reports / "runs" / "train_sup.json").read_text())
    assert runs_after["run_id"] != runs_before["run_id"]
    assert runs_after["models"].keys() == runs_before["models"].keys()
    status = run([sys.executable, "-m", "dvc", "status"], dvc_repo)
    assert "up to date" in status.stdout, status.stdout


def test_a_code_change_marks_exactly_the_stages_that_import_it(dvc_repo: Path) -> None:
    """A module only register imports: `dvc status` says register changed, and nothing else."""
    target = dvc_repo / "src" / "pipelines" / "registry" / "model_card.py"
    original = target.read_text()
    target.write_text(original + "\n# a code change\n")
    try:
        status = run([sys.executable, "-m", "dvc", "status", "--json"], dvc_repo)
        changed = set(json.loads(status.stdout))
    finally:
        target.write_text(original)
    assert changed == {"register"}
    after = run([sys.executable, "-m", "dvc", "status"], dvc_repo)
    assert "up to date" in after.stdout


def use_remote(repo: Path, storage: Path) -> None:
    """Point the default remote at `storage` in the repo's local config, as a user would."""
    dvc = [sys.executable, "-m", "dvc"]
    run([*dvc, "remote", "modify", "--local", "storage", "url", str(storage)], repo)


def test_push_then_fresh_clone_pull_restores_everything(dvc_repo: Path, tmp_path: Path) -> None:
    """The quick start's optional `dvc pull`: a fresh clone gets data, models and reports back."""
    storage = tmp_path / "storage"
    use_remote(dvc_repo, storage)
    run([sys.executable, "-m", "dvc", "push"], dvc_repo)
    run(["git", "add", "dvc.lock"], dvc_repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results"], dvc_repo)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(dvc_repo), str(clone)], tmp_path)
    use_remote(clone, storage)
    run([sys.executable, "-m", "dvc", "pull"], clone)
    outs = [
        "data/raw/loans.csv.gz",
        "data/processed/M.parquet",
        "data/split/train.parquet",
        "reports/prep.json",
        "reports/split.json",
    ]
    for out in outs:
        assert (clone / out).exists(), out
    assert (clone / "reports/prep.json").read_text() == (dvc_repo / "reports/prep.json").read_text()
    again = run([sys.executable, "-m", "dvc", "repro"], clone)
    assert "Running stage" not in again.stdout
