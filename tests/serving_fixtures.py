"""Serving bundles for the serving tests, built once per session from models trained on real loans.

Imported by test modules (not conftest): `serving_bundles` takes three of the classifiers that
train_sup trained for the session (`trained_project`, on the real subsample), fits a KMeans
segmentation, and writes one bundle per model in the contract of `src/core/bundle.py` (model.onnx
via the register stage's exporter, feature_spec.json, segmentation.json, serving.json,
model_card.md, spark_model/). Memoized, so every module importing the fixture shares one build.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

# One of each kind of graph the exporter writes (tree ensembles both ways, a network); the parity
# tests need real models of each kind, not good ones, so the session's small ones serve.
SERVED_MODELS = ("random_forest", "gbt", "mlp")
SEGMENT_K = 4
# Optional: a folder where the bundles persist between runs (a quicker edit-test loop).
REUSE_ENV = "CREDIT_RISK_SERVING_TEST_BUNDLES"
SEGMENTATION_DIR = "segmentation_model"
REGISTERED_MODEL = "credit-risk-default"
THRESHOLD = 0.5
API_MODEL = "random_forest"


@dataclass(frozen=True)
class ServingBundles:
    """Bundle folders by model name, the project they were trained in, and its test split."""

    cfg: Any
    root: Path
    test_path: Path

    @property
    def bundles(self) -> dict[str, Path]:
        return {name: self.root / name for name in SERVED_MODELS}

    @property
    def api_bundle(self) -> Path:
        return self.root / API_MODEL

    @property
    def segmentation_model_path(self) -> Path:
        """The Spark segmentation pipeline whose exported parameters the bundles carry."""
        return self.root / SEGMENTATION_DIR


_CACHE: dict[str, ServingBundles] = {}


def placeholder_evaluation(name: str) -> Any:
    """An Evaluation for serving.json: the test bundles are not evaluated (numbers are dummies)."""
    from src.contracts import ConfusionMatrix, Evaluation, Interval, SliceMetrics, ThresholdChoice

    test = SliceMetrics(
        data="test", rows=0, auc_roc=0.5, auc_roc_ci=Interval(low=0.5, high=0.5), auc_pr=0.15,
        auc_pr_ci=Interval(low=0.15, high=0.15), ks=0.0, gini=0.0, brier=0.0, log_loss=0.0,
        calibration_error=0.0,
    )
    return Evaluation(
        name=name, kind="model", test=test,
        threshold=ThresholdChoice(rule="f1", value=THRESHOLD, chosen_on="test fixture"),
        precision=0.0, recall=0.0, f1=0.0, confusion=ConfusionMatrix(tn=0, fp=0, fn=0, tp=0),
    )


def write_bundle(
    target: Path,
    onnx_bytes: bytes,
    spec: Any,
    spark_model_dir: Path,
    segment_params: Any,
    name: str,
    version: str,
    threshold: float = THRESHOLD,
) -> Path:
    """A bundle folder in the serving contract (`src.core.bundle.read_bundle` accepts it)."""
    from src.contracts import ThresholdChoice
    from src.core.bundle import ServingInfo

    target.mkdir(parents=True, exist_ok=True)
    (target / "model.onnx").write_bytes(onnx_bytes)
    (target / "feature_spec.json").write_text(spec.model_dump_json(indent=2))
    if spark_model_dir != target / "spark_model":
        shutil.copytree(spark_model_dir, target / "spark_model", dirs_exist_ok=True)
    (target / "segmentation.json").write_text(segment_params.model_dump_json(indent=2))
    info = ServingInfo(
        registered_model=REGISTERED_MODEL,
        version=version,
        source_model=name,
        threshold=ThresholdChoice(rule="f1", value=threshold, chosen_on="test fixture"),
        metrics=placeholder_evaluation(name),
        features=spec.features,
        trained_at=datetime(2024, 1, 1, tzinfo=UTC),
        train_data_sha256="0" * 64,
        feature_spec_sha256=spec.sha256(),
        training_run_id="test-fixture",
    )
    (target / "serving.json").write_text(json.dumps(info.model_dump(mode="json"), indent=2))
    (target / "model_card.md").write_text(f"# {REGISTERED_MODEL} v{version} ({name}): test\n")
    return target


def _segmentation(spark: Any, cfg: Any, train_path: Path) -> tuple[Any, Any]:
    from src.core.raw_schema import LABEL_COLUMN
    from src.pipelines.segmentation.bands import GapRule, merge_clusters
    from src.pipelines.segmentation.clustering import (
        band_of_cluster,
        cluster_risks,
        export_params,
        fit_kmeans,
        fit_preprocessing,
        full_pipeline,
    )

    train = spark.read.parquet(str(train_path))
    features = list(cfg.segment.features)
    preprocessing = fit_preprocessing(train, features)
    kmeans = fit_kmeans(
        preprocessing.model.transform(train), SEGMENT_K, cfg.seed, cfg.segment.max_iter
    )
    pipeline = full_pipeline(preprocessing, kmeans)
    # No gap required: one band per cluster, whatever their default rates (serving fixtures).
    groups = merge_clusters(
        cluster_risks(pipeline.transform(train), LABEL_COLUMN), GapRule(0.0, 0.0, 1.0),
        len(cfg.segment.risk_bands),
    )
    bands = band_of_cluster(groups, cfg.segment.risk_bands)
    return export_params("kmeans", features, preprocessing, kmeans, bands), pipeline


def build_serving_bundles(spark: Any, trained_project: Any) -> ServingBundles:
    """Segment and bundle once per session (memoized; on disk too with $REUSE_ENV)."""
    if "bundles" in _CACHE:
        return _CACHE["bundles"]
    from src.supervisor import load_result

    cfg = trained_project
    split = load_result(cfg, "split")
    reuse = os.environ.get(REUSE_ENV)
    root = Path(reuse) if reuse else cfg.path("models/serving_bundles")
    built = ServingBundles(cfg, root, cfg.path(split.test.path))
    complete = all((b / "serving.json").is_file() for b in built.bundles.values())
    if not (reuse and complete and built.segmentation_model_path.is_dir()):
        _build(spark, cfg, split, root)
    _CACHE["bundles"] = built
    return built


def _build(spark: Any, cfg: Any, split: Any, root: Path) -> None:
    from src.core.feature_spec import FeatureSpec
    from src.pipelines.export.onnx_export import export_classifier
    from src.pipelines.registry.prepare import load_model
    from src.supervisor import load_result

    trained = load_result(cfg, "train_sup").models
    segment_params, segmentation_model = _segmentation(spark, cfg, cfg.path(split.train.path))
    segmentation_model.write().overwrite().save(str(root / SEGMENTATION_DIR))
    for version, name in enumerate(SERVED_MODELS, start=1):
        spec = FeatureSpec.model_validate_json(
            cfg.path(trained[name].feature_spec.path).read_text()
        )
        model_dir = cfg.path(trained[name].path.path)
        onnx_model = export_classifier(
            spark, load_model(model_dir, spec, name), len(spec.features), name
        )
        write_bundle(
            root / name, onnx_model.SerializeToString(), spec, model_dir, segment_params, name,
            str(version),
        )


@pytest.fixture(scope="session", name="serving_bundles")
def serving_bundles_fixture(spark: Any, trained_project: Any) -> ServingBundles:
    """Three bundles (random_forest, gbt, mlp) of the session's models, trained on the subsample."""
    return build_serving_bundles(spark, trained_project)
