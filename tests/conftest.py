"""Shared fixtures: one SparkSession, the real sample (or a synthetic stand-in), project folders."""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from src.utils.config import deep_merge
from tests.kaggle_stub import (  # noqa: F401  (fixtures register by name)
    kaggle_stub_fixture,
    kaggle_stub_server_fixture,
)

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLE = Path(
    os.environ.get(
        "CREDIT_RISK_SAMPLE", REPO.parent / "shared" / "data" / "lendingclub_2007_2011.csv.gz"
    )
)
SUBSAMPLE_ROWS = 8000

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# Tests never talk to Kaggle unless a test sets fake credentials for its stub server.
for _name in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
    os.environ.pop(_name, None)

WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    # execnet starts a worker with `python -c`, so __main__ has neither __spec__ nor __file__.
    # pyspark 4.3 takes that for its own doctest run and exits 0 when pyspark.ml.connect is
    # imported without grpc, as mlflow.spark.log_model does (test_pyspark_main_module pins it).
    _main = sys.modules["__main__"]
    if getattr(_main, "__spec__", None) is None and not hasattr(_main, "__file__"):
        _main.__file__ = "<pytest-xdist worker>"


def pytest_xdist_make_scheduler(config: Any, log: Any) -> Any:
    """Share tests between workers by file, with one worker for the trained project's tests."""
    from tests.xdist_groups import TrainedProjectScheduling

    return TrainedProjectScheduling(config, log)


def _data_note() -> str:
    if REAL_SAMPLE.is_file():
        return f"real sample {REAL_SAMPLE}"
    return f"real sample {REAL_SAMPLE} is absent: tests use synthetic loans of the same layout"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    # Printed by xdist's controller, which runs no fixture: the same check as `sample_path`.
    terminalreporter.write_line(f"DATA: {_data_note()}")


def write_params(root: Path, overrides: dict[str, Any] | None = None) -> Path:
    """Write the repo's params.yaml, with `overrides` merged in, into project folder `root`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = deep_merge(params, overrides or {})
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def replace_models(params_path: Path, models: dict[str, dict[str, Any]]) -> Path:
    """Rewrite a project's params with `train.models` replaced, not merged: only these train."""
    params = yaml.safe_load(params_path.read_text())
    params["train"]["models"] = models
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    return params_path


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder`, keyed by its path relative to `folder`."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """The one SparkSession of the test run."""
    from src.utils.config import load_config
    from src.utils.spark import get_spark

    session = get_spark(load_config(REPO / "params.yaml").spark)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def sample_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real LendingClub sample; where absent, synthetic loans of its layout (said aloud)."""
    if REAL_SAMPLE.is_file():
        return REAL_SAMPLE
    from src.pipelines.acquisition.synthetic import write_synthetic_loans

    warnings.warn(_data_note(), stacklevel=1)
    path = tmp_path_factory.mktemp("synthetic") / "loans.csv.gz"
    write_synthetic_loans(path, rows=42535, seed=7, chunk_rows=20000)
    return path


@pytest.fixture(scope="session")
def subsample_path(sample_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A deterministic subsample (every k-th record) of about SUBSAMPLE_ROWS loans."""
    # Records, not lines: free-text fields may hold quoted newlines.
    with gzip.open(sample_path, "rt", newline="") as handle:
        records = list(csv.reader(handle))
    header, body = records[0], records[1:]
    step = max(1, len(body) // SUBSAMPLE_ROWS)
    path = tmp_path_factory.mktemp("subsample") / "loans.csv.gz"
    with gzip.open(path, "wt", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(body[::step][:SUBSAMPLE_ROWS])
    return path


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Any]:
    """Factory: a project folder under tmp_path with params overrides; returns its Config."""
    from src.utils.config import load_config

    def factory(overrides: dict[str, Any] | None = None, name: str = "project") -> Any:
        return load_config(write_params(tmp_path / name, overrides))

    return factory


@pytest.fixture(scope="module")
def make_project_module(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """Like make_project, for module-scoped fixtures."""
    from src.utils.config import load_config

    def factory(overrides: dict[str, Any] | None = None) -> Any:
        return load_config(write_params(tmp_path_factory.mktemp("project"), overrides))

    return factory


@pytest.fixture(scope="session")
def split_project(
    subsample_path: Path, spark: Any, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """A project where fetch → prep → split ran on the real subsample; returns its Config."""
    from src.supervisor import run_stages
    from src.utils.config import load_config

    root = tmp_path_factory.mktemp("split_project")
    cfg = load_config(
        write_params(root, {"data": {"source": "file", "file_path": str(subsample_path)}})
    )
    run_stages(cfg, ["fetch", "prep", "split"], run_id="test-split")
    return cfg


# Small, fast models for the tests that need trained ones (the defaults are for the full sample).
# L-BFGS iterations are the MLP's only regulariser: on a 5k-loan fit it overfits sooner than on the
# full sample (validation AUC 0.670 after 20 iterations, 0.631 after 40).
SMALL_TRAINING: dict[str, Any] = {
    "mlflow": {
        "tracking_uri": "sqlite:///mlruns_train_sup/mlflow.db",
        "artifact_root": "mlruns_train_sup/artifacts",
        "experiment": "train-sup-test",
    },
    "train": {
        "models_dir": "models/train_sup_test",
        "models": {
            "random_forest": {"numTrees": 40},
            "gbt": {"maxIter": 30},
            "mlp": {"maxIter": 20},
            "logistic": {"maxIter": 20},
            "xgboost": {"n_estimators": 30},
        },
    },
    # fit_rows below the split's ~6,000 loans: the candidates fit on the stratified sample.
    "segment": {"k_range": [3, 4], "fit_rows": 3000},
}


@pytest.fixture(scope="session")
def trained_project(
    split_project: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The split project after train_sup, train_unsup and evaluate ran once with small models."""
    from src.supervisor import run_stages
    from src.utils.config import load_config

    if WORKER:
        # Under pytest-xdist, tests/xdist_groups.py sends every test that needs it to one worker.
        built = tmp_path_factory.getbasetemp().parent / "trained_project.built"
        try:
            built.touch(exist_ok=False)
        except FileExistsError:
            pytest.fail(f"{WORKER}: trained_project was built on another worker already: "
                        "a test file that needs it is missing from tests/xdist_groups.py's group")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = load_config(split_project.root / "params.yaml", overrides=SMALL_TRAINING)
        run_stages(cfg, ["train_sup", "train_unsup", "evaluate"], run_id="test-trained")
        yield cfg
