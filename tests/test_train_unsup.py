"""train_unsup on the real subsample: both segmentations, risk order, numpy parity, MLflow runs."""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import numpy as np
import pytest

from src.contracts import SplitResult, TrainUnsupResult
from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.core.segment_params import MODEL_NAMES, assign_segment
from src.pipelines.segmentation.bands import GapRule, RiskGroup, choose_k
from src.pipelines.segmentation.clustering import (
    FEATURES_VECTOR,
    PREDICTION,
    band_names,
    fit_gmm,
    fit_kmeans,
    fit_preprocessing,
    fit_sample,
    full_pipeline,
    gmm_free_parameters,
)
from src.utils.hashing import content_hash
from src.utils.tracking import TRACKING_URI_ENV, configure_mlflow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(trained_project: Any) -> tuple[Any, SplitResult, TrainUnsupResult]:
    """The stage as the supervisor ran it for the session, on the split project."""
    from src.supervisor import load_result

    split = load_result(trained_project, "split")
    result = load_result(trained_project, "train_unsup")
    assert isinstance(split, SplitResult) and isinstance(result, TrainUnsupResult)
    return trained_project, split, result


def _gap_rule(cfg: Any) -> GapRule:
    test_fraction = cfg.split.test_fraction
    return GapRule(cfg.segment.min_band_gap, cfg.segment.band_gap_z,
                   test_fraction / (1 - test_fraction))


def _group(segment: Any) -> RiskGroup:
    return RiskGroup(tuple(segment.clusters), segment.size, segment.default_rate * segment.size)


def _features_and_predictions(
    cfg: Any, spark: Any, name: str, path: str, blank_every: int = 0
) -> Any:
    """Each row's segment features and the Spark model's segment; with `blank_every`, every n-th
    row has one feature (in turn) set to null, so imputation is exercised whatever the data."""
    from pyspark.ml import PipelineModel
    from pyspark.sql import functions as F

    model = PipelineModel.load(str(cfg.path(f"{cfg.segment.models_dir}/{name}/model")))
    data = spark.read.parquet(str(cfg.path(path)))
    if blank_every:
        row = F.monotonically_increasing_id()
        features = cfg.segment.features
        for i, feature in enumerate(features):
            blank = (row % blank_every == 0) & ((row / blank_every) % len(features) == i)
            data = data.withColumn(
                feature, F.when(blank, F.lit(None)).otherwise(F.col(feature))
            )
    rows = model.transform(data)
    return rows.select(*cfg.segment.features, "default", PREDICTION).toPandas()


def test_both_models_chose_k_within_range(trained: Any) -> None:
    cfg, _, result = trained
    low, high = cfg.segment.k_range
    assert set(result.models) == set(MODEL_NAMES)
    assert result.serving_model == cfg.segment.serving_model
    for model in result.models.values():
        assert low <= model.k <= high
        assert sorted(model.selection) == list(range(low, high + 1))
        assert sorted(model.bands_per_k) == sorted(model.selection)
        assert len(model.segments) == model.bands_per_k[model.k]
        clusters = sorted(c for s in model.segments for c in s.clusters)
        assert clusters == list(range(model.k))
        assert sum(s.size for s in model.segments) == trained[1].train.rows
    kmeans, gmm = result.models["kmeans"], result.models["gmm"]
    # The most risk bands first; then the best silhouette (kmeans) or BIC (gmm).
    assert kmeans.k == choose_k(kmeans.selection, kmeans.bands_per_k, higher_is_better=True)
    assert gmm.k == choose_k(gmm.selection, gmm.bands_per_k, higher_is_better=False)
    assert all(-1.0 <= s <= 1.0 for s in kmeans.selection.values())


def test_artifacts_on_disk_match_their_hashes(trained: Any) -> None:
    cfg, _, result = trained
    for name, model in result.models.items():
        for artifact in (model.path, model.params_file):
            assert artifact.path.startswith(f"{cfg.segment.models_dir}/{name}/")
            assert content_hash(cfg.path(artifact.path)) == artifact.sha256
    assert cfg.path(result.profile_plot).read_bytes().startswith(b"\x89PNG")
    report = json.loads(cfg.path(f"{cfg.supervisor.reports_dir}/segments.json").read_text())
    assert report["serving_model"] == cfg.segment.serving_model
    assert set(report["models"]) == set(MODEL_NAMES)


def test_bands_strictly_ordered_by_training_default_rate(trained: Any) -> None:
    cfg, _, result = trained
    for model in result.models.values():
        rates = [s.default_rate for s in model.segments]
        assert all(a < b for a, b in itertools.pairwise(rates)), rates
        bands = band_names(len(model.segments), cfg.segment.risk_bands)
        assert [s.band for s in model.segments] == bands
        rule = _gap_rule(cfg)
        for low, high in itertools.pairwise(model.segments):
            assert rule.separates(_group(low), _group(high)), (low.band, high.band)
        assert model.segments[0].band == cfg.segment.risk_bands[0]
        assert model.segments[-1].band == cfg.segment.risk_bands[-1]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bands_keep_their_order_and_gaps_on_the_test_split(
    trained: Any, spark: Any, name: str
) -> None:
    cfg, split, result = trained
    model = result.models[name]
    rows = _features_and_predictions(cfg, spark, name, split.test.path)
    band_of = {c: s.band for s in model.segments for c in s.clusters}
    test = rows.assign(band=rows[PREDICTION].map(band_of)).groupby("band")["default"]
    rates, sizes = test.mean(), test.size()
    assert set(rates.index) == {s.band for s in model.segments}
    for low, high in itertools.pairwise(model.segments):
        train_gap = high.default_rate - low.default_rate
        test_gap = rates[high.band] - rates[low.band]
        # The gap is re-measured on independent loans: 4 standard errors of the difference.
        se = np.sqrt(sum(r * (1 - r) / n for r, n in (
            (low.default_rate, low.size), (high.default_rate, high.size),
            (rates[low.band], sizes[low.band]), (rates[high.band], sizes[high.band]))))
        assert test_gap > 0, (low.band, high.band, rates.to_dict())
        assert test_gap >= train_gap - 4 * se, (low.band, high.band, test_gap, train_gap, se)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_numpy_assignment_equals_spark_on_every_test_row(
    trained: Any, spark: Any, name: str
) -> None:
    cfg, split, result = trained
    params = json.loads(cfg.path(result.models[name].params_file.path).read_text())
    rows = _features_and_predictions(cfg, spark, name, split.test.path, blank_every=7)
    raw = rows[cfg.segment.features].astype("float64").to_numpy()
    assert np.isnan(raw).any(axis=0).all(), "every feature should be imputed on some row"
    assert assign_segment(params, raw) == rows[PREDICTION].astype(int).tolist()


def test_mlflow_runs_hold_params_metrics_artifacts_and_a_loadable_model(
    trained: Any, spark: Any
) -> None:
    import mlflow
    import mlflow.spark

    cfg, split, result = trained
    saved = os.environ.pop(TRACKING_URI_ENV, None)
    try:
        configure_mlflow(cfg)
        client = mlflow.MlflowClient()
        for name, model in result.models.items():
            run = client.get_run(model.run_id)
            assert run.data.params["model"] == name
            assert run.data.params["seed"] == str(cfg.seed)
            assert run.data.metrics["chosen_k"] == model.k
            metric = "silhouette" if name == "kmeans" else "bic"
            history = {m.step: m.value for m in client.get_metric_history(model.run_id, metric)}
            assert history == pytest.approx(model.selection)
            artifacts = {a.path for a in client.list_artifacts(model.run_id, "reports")}
            assert {"reports/segments.json", "reports/segments.png"} <= artifacts
            assert client.list_artifacts(model.run_id, "segmentation")
            loaded = mlflow.spark.load_model(model.model_uri)
            test = spark.read.parquet(str(cfg.path(split.test.path)))
            assert loaded.transform(test).select(PREDICTION).count() == split.test.rows
    finally:
        if saved is not None:
            os.environ[TRACKING_URI_ENV] = saved


def test_candidates_fit_on_the_sample_and_profiles_cover_every_loan(trained: Any) -> None:
    """segment.fit_rows caps the loans the candidates are fitted on (one per class may round
    either way); the bands' profiles still count every training loan."""
    import mlflow

    cfg, split, result = trained
    assert cfg.segment.fit_rows < split.train.rows
    saved = os.environ.pop(TRACKING_URI_ENV, None)
    try:
        configure_mlflow(cfg)
        client = mlflow.MlflowClient()
        for model in result.models.values():
            params = client.get_run(model.run_id).data.params
            assert int(params["train_rows"]) == split.train.rows
            assert abs(int(params["fit_rows"]) - cfg.segment.fit_rows) <= 2
            assert sum(s.size for s in model.segments) == split.train.rows
    finally:
        if saved is not None:
            os.environ[TRACKING_URI_ENV] = saved


def test_same_seed_gives_the_same_assignments(trained: Any, spark: Any) -> None:
    cfg, split, result = trained
    seg = cfg.segment
    train = spark.read.parquet(str(cfg.path(split.train.path)))
    test = spark.read.parquet(str(cfg.path(split.test.path)))
    preprocessing = fit_preprocessing(train, seg.features)
    scaled = preprocessing.model.transform(train).select(KEY_COLUMN, LABEL_COLUMN, FEATURES_VECTOR)
    # The stage's seeded sample, in the stage's partitioning (k-means|| draws per partition).
    fitting = fit_sample(scaled, seg.fit_rows, split.train.rows, cfg.seed).cache()
    fits = {"kmeans": fit_kmeans, "gmm": fit_gmm}
    for name, fit in fits.items():
        model = fit(fitting, result.models[name].k, cfg.seed, seg.max_iter)
        again = full_pipeline(preprocessing, model).transform(test).select(PREDICTION).toPandas()
        saved = _features_and_predictions(cfg, spark, name, split.test.path)
        assert again[PREDICTION].tolist() == saved[PREDICTION].tolist()
    fitting.unpersist()


def test_band_names_spread_evenly_with_the_ends_pinned() -> None:
    names = ["very_low", "low", "medium", "high", "very_high", "extreme"]
    assert band_names(3, names) == ["very_low", "medium", "extreme"]
    assert band_names(6, names) == names
    for k in range(2, len(names) + 1):
        chosen = band_names(k, names)
        assert len(set(chosen)) == k and chosen[0] == names[0] and chosen[-1] == names[-1]


def test_gmm_free_parameters_of_a_full_covariance_mixture() -> None:
    # 2 components in 2-d: 2×2 means + 2×3 covariance entries + 1 free weight.
    assert gmm_free_parameters(2, 2) == 11
