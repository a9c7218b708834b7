"""The pipeline on a real Spark standalone cluster (two workers) gives local mode's results.

The cluster is started by the same script as `make cluster-up`, on free ports, and stopped in a
finalizer. One process holds one SparkContext, and this one holds the local session of the test
run, so the cluster stages run as DVC runs them: one `python -m src.supervisor` process each, with
SPARK_MASTER pointing at the cluster. Marked `cluster` and left out of `make test` (it starts four
Spark applications with their executors); `make test-cluster` runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from pyspark.sql import functions as F

from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.pipelines.training.classifiers import PROBABILITY_COLUMN
from src.supervisor import load_result, main, run_stages
from src.utils.config import deep_merge, load_config
from tests.conftest import REPO, SMALL_TRAINING, replace_models, write_params
from tests.serving_fixtures import ServingBundles, serving_bundles_fixture  # noqa: F401

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(3600)]
STAGES = ("fetch", "prep", "split", "train_sup")
MODELS = {"random_forest": {"numTrees": 10, "maxDepth": 5}, "logistic": {"maxIter": 20}}
EXACT = 1e-9
# Logistic regression matched local mode exactly in every run. The forest did in one run; in the
# next its test AUC differed by 6.2e-4: most likely a split flipped by node statistics summed in a
# different order (class-balancing weights are not integers), so it is held to a loose bound.
# GBT and the MLP differed in the fourth digit of AUC and are left out.
TOLERANCE = {"logistic": EXACT, "random_forest": 5e-3}
CLUSTER_TRAINING: dict[str, Any] = deep_merge(
    SMALL_TRAINING,
    {
        "mlflow": {
            "tracking_uri": "sqlite:///mlruns_cluster/mlflow.db",
            "artifact_root": "mlruns_cluster/artifacts",
            "experiment": "cluster-test",
        },
        "train": {"models_dir": "models/cluster_test"},
    },
)


def _params(path: Path, base: dict[str, Any]) -> Path:
    """`base` merged with CLUSTER_TRAINING, the models replaced by MODELS, written to `path`."""
    path.write_text(yaml.safe_dump(deep_merge(base, CLUSTER_TRAINING), sort_keys=False))
    return replace_models(path, MODELS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cluster_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.cluster", *args],
        cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A master and two workers on 127.0.0.1; stopped however the tests end."""
    folder = tmp_path_factory.mktemp("cluster")
    port, webui = _free_port(), _free_port()
    ports = ["--dir", str(folder), "--master-port", str(port), "--webui-port", str(webui)]
    started = time.perf_counter()
    try:
        up = _cluster_script("up", *ports, "--workers", "2")
        assert up.returncode == 0, up.stdout + up.stderr
        yield {
            "url": f"spark://127.0.0.1:{port}",
            "webui": f"http://127.0.0.1:{webui}/json/",
            "dir": folder,
            "start_s": time.perf_counter() - started,
        }
    finally:
        down = _cluster_script("down", "--dir", str(folder))
        assert down.returncode == 0, down.stdout + down.stderr


def _supervisor_on_cluster(cluster: dict[str, Any], root: Path, *args: str) -> dict[str, Any]:
    """subprocess arguments for one supervisor command of the project at `root` on the cluster."""
    env = {**os.environ, "SPARK_MASTER": cluster["url"]}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "src.supervisor", "--params", str(root / "params.yaml"), *args]
    return {"args": cmd, "cwd": root, "env": env, "text": True}


def _on_cluster(cluster: dict[str, Any], root: Path, *args: str) -> float:
    """One supervisor command on the cluster in its own process; returns its wall seconds."""
    started = time.perf_counter()
    done = subprocess.run(
        **_supervisor_on_cluster(cluster, root, *args), capture_output=True, check=False
    )
    assert done.returncode == 0, f"{args} on the cluster failed:\n{done.stderr[-3000:]}"
    return round(time.perf_counter() - started, 1)


@pytest.fixture(scope="module")
def cluster_run(
    cluster: dict[str, Any],
    subsample_path: Path,
    serving_bundles: ServingBundles,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """fetch → prep → split → train_sup, then score, on the cluster: one process per command."""
    root = tmp_path_factory.mktemp("cluster_project")
    base = yaml.safe_load(write_params(root).read_text())
    base["data"] = {**base["data"], "source": "file", "file_path": str(subsample_path)}
    params = _params(root / "params.yaml", base)
    seconds = {stage: _on_cluster(cluster, root, "run", stage) for stage in STAGES}
    seconds["score"] = _on_cluster(
        cluster, root, "score", "--input", str(subsample_path), "--output", str(root / "scored"),
        "--model", str(serving_bundles.api_bundle),
    )
    return {
        "cfg": load_config(params), "root": root, "seconds": seconds, "scored": root / "scored"
    }


@pytest.fixture(scope="module")
def local_run(split_project: Any, spark: Any) -> Any:
    """train_sup in local mode on the shared split project, with the cluster run's settings."""
    assert spark.sparkContext.master.startswith("local")
    base = yaml.safe_load((split_project.root / "params.yaml").read_text())
    params = _params(split_project.root / "params_cluster_test.yaml", base)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("SPARK_MASTER", raising=False)
        cfg = load_config(params)
        run_stages(cfg, ["train_sup"], run_id="test-cluster-local")
    return cfg


def _keys(spark: Any, path: Path) -> list[str]:
    return sorted(r[0] for r in spark.read.parquet(str(path)).select(KEY_COLUMN).collect())


def test_every_command_ran_on_both_workers(
    cluster: dict[str, Any], cluster_run: dict[str, Any]
) -> None:
    cfg = cluster_run["cfg"]
    events = [
        json.loads(line)
        for line in (cfg.path(cfg.supervisor.logs_dir) / "pipeline.jsonl").read_text().splitlines()
    ]
    sessions = [e for e in events if e.get("event") == "spark.session"]
    assert {e["stage"] for e in sessions} == {"prep", "split", "train_sup", "score"}
    assert all(e["master"] == cluster["url"] for e in sessions)
    with urllib.request.urlopen(cluster["webui"], timeout=5) as response:
        master = json.loads(response.read())
    assert master["aliveworkers"] == 2
    finished = {app["id"] for app in master["completedapps"]}
    assert {e["app_id"] for e in sessions} <= finished
    for worker in ("worker-1", "worker-2"):
        apps = {p.name for p in (cluster["dir"] / worker).iterdir() if p.name.startswith("app-")}
        assert apps == {e["app_id"] for e in sessions}, worker
    print(f"\ncluster: start {cluster['start_s']:.1f} s, commands {cluster_run['seconds']}")


def test_prep_and_split_equal_local_mode(
    cluster_run: dict[str, Any], split_project: Any, spark: Any
) -> None:
    remote, local = cluster_run["cfg"], split_project
    prep_remote, prep_local = load_result(remote, "prep"), load_result(local, "prep")
    assert prep_remote.kept_rows == prep_local.kept_rows > 0
    assert prep_remote.rejected_reasons == prep_local.rejected_reasons
    # Deterministic writes: the same bytes, not only the same rows.
    assert prep_remote.processed.sha256 == prep_local.processed.sha256
    for side in ("train_path", "test_path"):
        assert _keys(spark, remote.path(getattr(remote.split, side))) == _keys(
            spark, local.path(getattr(local.split, side))
        ), side


def test_train_sup_predictions_equal_local_mode(
    cluster_run: dict[str, Any], local_run: Any, spark: Any
) -> None:
    remote = load_result(cluster_run["cfg"], "train_sup")
    local = load_result(local_run, "train_sup")
    assert set(remote.models) == set(local.models) == set(MODELS)
    for name in MODELS:
        r_model, l_model = remote.models[name], local.models[name]
        assert r_model.feature_spec.sha256 == l_model.feature_spec.sha256, name
        paired = (
            spark.read.parquet(str(cluster_run["cfg"].path(r_model.validation_predictions.path)))
            .alias("r")
            .join(
                spark.read.parquet(str(local_run.path(l_model.validation_predictions.path)))
                .alias("l"),
                KEY_COLUMN,
                "full_outer",
            )
        )
        r_prob, l_prob = F.col(f"r.{PROBABILITY_COLUMN}"), F.col(f"l.{PROBABILITY_COLUMN}")
        row = paired.agg(
            F.count(F.lit(1)).alias("rows"),
            F.count(r_prob).alias("remote"),
            F.count(l_prob).alias("local"),
            F.max(F.abs(r_prob - l_prob)).alias("diff"),
            F.count_if(F.col(f"r.{LABEL_COLUMN}") != F.col(f"l.{LABEL_COLUMN}")).alias("labels"),
        ).first()
        print(f"{name}: {row['rows']} validation loans, max |cluster - local| {row['diff']:.3g}")
        assert row["rows"] == row["remote"] == row["local"] > 0, name
        assert row["labels"] == 0, name
        assert row["diff"] <= TOLERANCE[name], (name, row["diff"])
        assert abs(r_model.test.auc_roc - l_model.test.auc_roc) <= TOLERANCE[name], name


def test_score_on_the_cluster_equals_local_mode(
    cluster_run: dict[str, Any],
    split_project: Any,
    serving_bundles: ServingBundles,
    subsample_path: Path,
    spark: Any,
    tmp_path: Path,
) -> None:
    """The same loans and bundle scored in local mode: every row and column equal."""
    local_out = tmp_path / "scored"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SPARK_MASTER", raising=False)
        code = main(["--params", str(split_project.root / "params.yaml"), "score", "--input",
                     str(subsample_path), "--output", str(local_out), "--model",
                     str(serving_bundles.api_bundle)])
    assert code == 0
    remote = spark.read.parquet(str(cluster_run["scored"]))
    local = spark.read.parquet(str(local_out))
    assert remote.schema == local.schema
    assert remote.count() == local.count() > 0
    assert remote.exceptAll(local).isEmpty() and local.exceptAll(remote).isEmpty()


def _executors(app_id: str) -> list[psutil.Process]:
    """The executor JVMs the workers launched for application `app_id`."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = p.info["cmdline"] or []
        if any("CoarseGrainedExecutorBackend" in part for part in cmdline) and app_id in cmdline:
            found.append(p)
    return found


def _running_python(executor: psutil.Process) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess):
        return any("pyspark" in " ".join(c.cmdline()) for c in executor.children(recursive=True))
    return False


def test_an_executor_killed_while_score_runs_costs_time_not_rows(
    cluster: dict[str, Any],
    cluster_run: dict[str, Any],
    serving_bundles: ServingBundles,
    subsample_path: Path,
    spark: Any,
    tmp_path: Path,
) -> None:
    """kill -9 of an executor running scoring tasks: Spark reruns the lost tasks, cached blocks
    and shuffle output on what is left, and the output is the undisturbed run's, row for row."""
    params = yaml.safe_load((cluster_run["root"] / "params.yaml").read_text())
    # Progress five times a second and several output files, so the kill lands mid-stage.
    override = {"spark": {"progress_interval_s": 0.2}, "score": {"rows_per_file": 2000}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(deep_merge(params, override)))
    out = tmp_path / "scored"
    run = subprocess.Popen(
        **_supervisor_on_cluster(
            cluster, tmp_path, "score", "--input", str(subsample_path), "--output", str(out),
            "--model", str(serving_bundles.api_bundle),
        ),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    assert run.stderr is not None
    app_id, killed, before = None, None, []
    try:
        for line in run.stderr:
            before.append(line)
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "spark.session":
                app_id = event["app_id"]
            scoring = event.get("event") == "score.progress" and event.get("phase") == "score"
            if app_id and scoring and any(s["running"] for s in event["stages"]):
                busy = [e for e in _executors(app_id) if _running_python(e)]
                if busy:
                    killed = busy[0]
                    killed.kill()
                    break
        after = run.stderr.read()
    finally:
        run.wait(timeout=600)
    log = "".join(before) + after
    assert killed is not None, f"never saw an executor running scoring tasks:\n{log[-3000:]}"
    assert run.returncode == 0, f"score after the kill failed:\n{log[-3000:]}"
    assert "Lost executor" in after, after[-3000:]
    remote = spark.read.parquet(str(out))
    undisturbed = spark.read.parquet(str(cluster_run["scored"]))
    assert remote.count() == undisturbed.count() > 0
    assert remote.exceptAll(undisturbed).isEmpty() and undisturbed.exceptAll(remote).isEmpty()
    executors = [
        d.name for w in ("worker-1", "worker-2") for d in (cluster["dir"] / w / app_id).iterdir()
    ]
    print(f"\nexecutor {killed.pid} killed mid-score; the application's executors: {executors}")
