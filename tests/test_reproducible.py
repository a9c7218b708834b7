"""Same input, code and params: byte-identical Parquet outputs and models (issue 11, item 5)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from src.supervisor import run_stages
from src.utils.config import load_config
from src.utils.spark_io import save_model_deterministic
from tests.conftest import file_hashes, write_params


def _report_hashes(root: Path) -> dict[str, str]:
    hashes: dict[str, str] = {}

    def visit(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "sha256" in node and "path" in node:
                hashes[f"{where}:{node['path']}"] = node["sha256"]
            for value in node.values():
                visit(value, where)
        elif isinstance(node, list):
            for value in node:
                visit(value, where)

    for report in sorted((root / "reports").glob("*.json")):
        visit(json.loads(report.read_text()), report.name)
    return hashes


def test_prep_and_split_twice_give_the_same_bytes(
    subsample_path: Path, spark: Any, tmp_path: Path
) -> None:
    runs = []
    for run in ("a", "b"):
        root = tmp_path / run
        cfg = load_config(
            write_params(root, {"data": {"source": "file", "file_path": str(subsample_path)}})
        )
        run_stages(cfg, ["fetch", "prep", "split"], run_id=f"repro-{run}")
        outputs = {
            name: file_hashes(root / "data" / name) for name in ("processed", "split")
        }
        runs.append((_report_hashes(root), outputs))
    (hashes_a, files_a), (hashes_b, files_b) = runs
    assert len(hashes_a) >= 4 and hashes_a == hashes_b
    assert files_a == files_b
    names = [name for files in files_a.values() for name in files]
    assert all("_SUCCESS" not in n and not n.endswith(".crc") for n in names)
    assert "M.parquet/part-00000.parquet" in names


def test_a_data_file_streams_through_re_encoding_in_batches_and_keeps_its_rows(
    spark: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """The driver re-encodes a written table batch by batch: row groups of the batch size, the
    same rows in key order with Spark's schema, and the same bytes from a differently spread
    input."""
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    from src.utils import spark_io

    monkeypatch.setattr(spark_io, "REENCODE_BATCH_ROWS", 1000)
    rows = spark.range(4500).select(
        F.format_string("%05d", "id").alias("loan_key"),
        (F.col("id") * 0.5).alias("x"),
        F.when(F.col("id") % 7 == 0, None).otherwise(F.col("id") % 3).alias("grade"),
    )
    files = []
    for run, seed in (("a", 1), ("b", 2)):
        spread = rows.repartition(3).orderBy(F.rand(seed))
        spark_io.write_parquet_deterministic(spread, tmp_path / run, ["loan_key"])
        files.append({p.name: p.read_bytes() for p in (tmp_path / run).iterdir()})
    assert files[0] == files[1] and list(files[0]) == ["part-00000.parquet"]
    meta = pq.ParquetFile(tmp_path / "a" / "part-00000.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000] * 4 + [500]
    back = spark.read.parquet(str(tmp_path / "a"))
    # Spark reads every file column back as nullable; names and types are what it kept.
    assert [(f.name, f.dataType) for f in back.schema] == [
        (f.name, f.dataType) for f in rows.schema
    ]
    assert [tuple(r) for r in back.collect()] == [tuple(r) for r in rows.orderBy("id").collect()]


def _estimators() -> dict[str, Any]:
    """An estimator of every kind the pipelines save, but the one that test_dvc_pipeline already
    retrains in a new process and finds byte-identical (logistic)."""
    from pyspark.ml.classification import (
        GBTClassifier,
        MultilayerPerceptronClassifier,
        RandomForestClassifier,
    )
    from pyspark.ml.clustering import GaussianMixture, KMeans
    from xgboost.spark import SparkXGBClassifier

    return {
        "random_forest": RandomForestClassifier(numTrees=5, seed=1),
        "gbt": GBTClassifier(maxIter=3, seed=1),
        "mlp": MultilayerPerceptronClassifier(layers=[2, 3, 2], maxIter=5, seed=1),
        "xgboost": SparkXGBClassifier(n_estimators=3, num_workers=1, random_state=1),
        "kmeans": KMeans(k=3, seed=1),
        "gmm": GaussianMixture(k=3, seed=1),
    }


def test_every_model_fitted_twice_saves_byte_identical_and_predicts_the_same(
    spark: Any, tmp_path: Path
) -> None:
    """Two fits from freshly built estimators (new random uids, as in a new process), each with
    Imputer and StandardScaler (vector data) before the model, as in the pipelines."""
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import Imputer, StandardScaler, VectorAssembler

    rng = random.Random(5)
    rows = [(i, rng.random(), rng.random(), int(rng.random() < 0.3)) for i in range(300)]
    df = spark.createDataFrame(rows, "id long, a double, b double, label int")
    for name in _estimators():
        fitted = {}
        for run in ("a", "b"):
            stages = [Imputer(inputCols=["a", "b"], outputCols=["a_", "b_"]),
                      VectorAssembler(inputCols=["a_", "b_"], outputCol="raw"),
                      StandardScaler(inputCol="raw", outputCol="features"), _estimators()[name]]
            fitted[run] = Pipeline(stages=stages).fit(df)
            save_model_deterministic(fitted[run], tmp_path / name / run)
        assert fitted["a"].uid != fitted["b"].uid, name
        files = file_hashes(tmp_path / name / "a")
        assert files == file_hashes(tmp_path / name / "b"), name
        assert not any("_SUCCESS" in n or n.endswith(".crc") for n in files), name
        loaded = PipelineModel.load(str(tmp_path / name / "a"))
        expected = fitted["b"].transform(df).orderBy("id").collect()
        assert loaded.transform(df).orderBy("id").collect() == expected, name
