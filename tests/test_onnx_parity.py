"""ONNX export against Spark, row by row: every model type, several seeds and datasets.

Besides ordinary rows, every tree model is probed with rows whose values sit exactly on its split
thresholds and on their neighbouring doubles (and float32 values for XGBoost), where a threshold
stored or compared in the wrong precision sends a row down the other branch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from src.core.raw_schema import LABEL_COLUMN

PARITY = 1e-6
MODELS = ("random_forest", "gbt", "logistic_regression", "mlp", "xgboost")
SEEDS = (3, 4)
NUMPY_ROWS = {3: 1500, 4: 4000}
LOAN_ROWS = 3000
LOAN_SEED = 11
PROBE_ROWS = 600
# Splits moved onto their thresholds per probe row.
SPLITS_PER_PROBE = 4
FEATURES = "features"
WEIGHT = "class_weight"


@dataclass
class Case:
    """A dataset's fitted classifiers and the rows both sides score."""

    name: str
    n_features: int
    models: dict[str, Any]
    rows: np.ndarray


# --- fitting -------------------------------------------------------------------------------------


def _fit_models(spark: Any, fit: Any, n_features: int, seed: int) -> dict[str, Any]:
    """Small versions of every model type on a frame with `features`, label and class weight."""
    from pyspark.ml.classification import (
        GBTClassifier,
        LogisticRegression,
        MultilayerPerceptronClassifier,
        RandomForestClassifier,
    )
    from xgboost.spark import SparkXGBClassifier

    common = {"featuresCol": FEATURES, "labelCol": LABEL_COLUMN}
    estimators = {
        "random_forest": RandomForestClassifier(
            numTrees=15, maxDepth=6, weightCol=WEIGHT, seed=seed, **common
        ),
        "gbt": GBTClassifier(maxIter=15, maxDepth=4, weightCol=WEIGHT, seed=seed, **common),
        "logistic_regression": LogisticRegression(weightCol=WEIGHT, **common),
        "mlp": MultilayerPerceptronClassifier(
            layers=[n_features, 6, 2], maxIter=30, seed=seed, **common
        ),
        "xgboost": SparkXGBClassifier(
            features_col=FEATURES,
            label_col=LABEL_COLUMN,
            weight_col=WEIGHT,
            n_estimators=15,
            max_depth=4,
            num_workers=1,
            random_state=seed,
        ),
    }
    fit = fit.cache()
    try:
        return {name: estimator.fit(fit) for name, estimator in estimators.items()}
    finally:
        fit.unpersist()


def _weighted(df: Any) -> Any:
    from src.pipelines.training.classifiers import class_counts, class_weights, with_class_weight

    return with_class_weight(df, class_weights(class_counts(df)))


def _numpy_matrix(seed: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Continuous, heavy-tailed, integer, two-decimal and one-hot columns, and a logistic label."""
    rng = np.random.default_rng(seed)
    category = rng.integers(0, 4, rows)
    x = np.column_stack(
        [
            rng.normal(size=rows),
            rng.normal(size=rows) * 1e-3 + 0.1,
            rng.lognormal(10, 1, rows),
            rng.integers(0, 11, rows).astype(float),
            np.round(rng.uniform(0, 30, rows), 2),
            *(category == k for k in range(3)),
        ]
    ).astype(np.float64)
    margin = x[:, 0] + 400 * (x[:, 1] - 0.1) + 0.2 * x[:, 3] - 0.05 * x[:, 4] + category - 2
    label = (rng.uniform(size=rows) < 1 / (1 + np.exp(-margin))).astype(float)
    return x, label


def _matrix_frame(spark: Any, x: np.ndarray, label: np.ndarray | None = None) -> Any:
    from pyspark.ml.linalg import Vectors

    labels = label if label is not None else np.zeros(len(x))
    pairs = zip(x.tolist(), labels.tolist(), strict=True)
    rows = [(i, Vectors.dense(r), float(y)) for i, (r, y) in enumerate(pairs)]
    return spark.createDataFrame(rows, ["row", FEATURES, LABEL_COLUMN])


def _loans_case(spark: Any, name: str, cfg: Any) -> tuple[Case, Any, Any]:
    """Models on a split project's loans; also its spec pipeline and test split for check_parity."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.classification import LogisticRegression

    from src.contracts import TrainSupRequest
    from src.core.feature_spec import transform_records
    from src.pipelines.export.onnx_export import score_test_with_spark
    from src.pipelines.training.classifiers import build_pipeline
    from src.pipelines.training.data import load_training_data
    from src.supervisor import load_result

    split = load_result(cfg, "split")
    data = load_training_data(spark, cfg, TrainSupRequest(train=split.train, test=split.test))
    try:
        # The production pipeline's spec stages (transformers: nothing to fit); the classifier
        # passed to build_pipeline only fills the last place and is dropped.
        stages = build_pipeline(data.spec, LogisticRegression()).getStages()[:-1]
        prefix = PipelineModel(stages=stages)
        fit = _weighted(prefix.transform(data.fit).select(FEATURES, LABEL_COLUMN))
        n_features = len(data.spec.features)
        models = _fit_models(spark, fit, n_features, cfg.seed)
        pipelines = {
            m: PipelineModel(stages=[*prefix.stages, model]) for m, model in models.items()
        }
        scored = {
            m: score_test_with_spark(p, data.spec, data.test, []) for m, p in pipelines.items()
        }
        rows = transform_records(data.spec, next(iter(scored.values())).records)
        return Case(name, n_features, models, rows), pipelines, (data.spec, scored)
    finally:
        data.unpersist()


# --- probes --------------------------------------------------------------------------------------


def tree_splits(model: onnx.ModelProto) -> list[tuple[int, float]]:
    """(feature, threshold) of every split of the tree ensembles in an ONNX graph."""
    splits: list[tuple[int, float]] = []
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "TreeEnsemble":
            values = numpy_helper.to_array(attrs["nodes_splits"].t).tolist()
            splits += list(zip(attrs["nodes_featureids"].ints, values, strict=True))
        elif node.op_type.startswith("TreeEnsemble"):
            modes = [m.decode() for m in attrs["nodes_modes"].strings]
            values = list(attrs["nodes_values"].floats)
            features = list(attrs["nodes_featureids"].ints)
            splits += [
                (f, v) for f, v, m in zip(features, values, modes, strict=True) if m != "LEAF"
            ]
    return splits


def threshold_probes(rows: np.ndarray, splits: list[tuple[int, float]], seed: int) -> np.ndarray:
    """Copies of random rows with several features set on a split threshold or right beside it."""
    rng = np.random.default_rng(seed)
    probes = rows[rng.integers(0, len(rows), PROBE_ROWS)].copy()
    for probe in probes:
        for index in rng.integers(0, len(splits), SPLITS_PER_PROBE):
            feature, threshold = splits[index]
            t32 = np.float32(threshold)
            probe[feature] = rng.choice(
                [
                    threshold,
                    np.nextafter(threshold, -np.inf),
                    np.nextafter(threshold, np.inf),
                    float(np.nextafter(t32, np.float32(-np.inf))),
                    float(np.nextafter(t32, np.float32(np.inf))),
                    # Halfway to the next float32: the cast to float32 rounds it to even.
                    (float(t32) + float(np.nextafter(t32, np.float32(np.inf)))) / 2,
                ]
            )
    return probes


# --- scoring -------------------------------------------------------------------------------------


def spark_p_default(spark: Any, classifier: Any, rows: np.ndarray) -> np.ndarray:
    """The classifier's P(default) of each row, in row order."""
    from src.pipelines.evaluation.spark_metrics import positive_probability

    frame = classifier.transform(_matrix_frame(spark, rows)).select(
        "row", positive_probability("probability").alias("p")
    )
    scored = frame.toPandas().sort_values("row")
    return scored["p"].to_numpy(dtype=np.float64)


def _export(spark: Any, classifier: Any, n_features: int, name: str) -> onnx.ModelProto:
    from pyspark.ml import PipelineModel

    from src.pipelines.export.onnx_export import export_classifier

    return export_classifier(spark, PipelineModel(stages=[classifier]), n_features, name)


def _assert_parity(spark: Any, case: Case, model_name: str) -> None:
    from src.pipelines.export.onnx_export import onnx_probabilities

    classifier = case.models[model_name]
    exported = _export(spark, classifier, case.n_features, model_name)
    rows = case.rows
    splits = tree_splits(exported)
    if splits:
        rows = np.vstack([rows, threshold_probes(case.rows, splits, seed=len(case.rows))])
    spark_p = spark_p_default(spark, classifier, rows)
    onnx_p = onnx_probabilities(exported, rows)
    diff = float(np.abs(onnx_p - spark_p).max())
    print(
        f"{case.name} {model_name}: max |ONNX − Spark| {diff:.2e} on {len(rows)} rows "
        f"({len(rows) - len(case.rows)} on thresholds)"
    )
    assert len(onnx_p) == len(spark_p) == len(rows)
    assert diff <= PARITY, (case.name, model_name, diff)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=SEEDS, ids=lambda s: f"numpy-{NUMPY_ROWS[s]}-seed{s}")
def numpy_case(request: pytest.FixtureRequest, spark: Any) -> Case:
    seed = request.param
    x, label = _numpy_matrix(seed, NUMPY_ROWS[seed])
    models = _fit_models(spark, _weighted(_matrix_frame(spark, x, label)), x.shape[1], seed)
    held_out, _ = _numpy_matrix(seed + 100, 500)
    return Case(f"numpy-{len(x)}-seed{seed}", x.shape[1], models, held_out)


@pytest.fixture(scope="module")
def synthetic_loans_project(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """fetch → prep → split on LOAN_ROWS synthetic loans of another seed than the session's."""
    from src.pipelines.acquisition.synthetic import write_synthetic_loans
    from src.supervisor import run_stages
    from src.utils.config import load_config
    from tests.conftest import write_params

    root = tmp_path_factory.mktemp("parity_loans")
    raw = root / "source.csv.gz"
    write_synthetic_loans(raw, rows=LOAN_ROWS, seed=LOAN_SEED, chunk_rows=LOAN_ROWS)
    cfg = load_config(write_params(root, {"data": {"source": "file", "file_path": str(raw)}}))
    run_stages(cfg, ["fetch", "prep", "split"], run_id="test-parity-loans")
    yield cfg


@pytest.fixture(scope="module", params=["synthetic", "split_project"])
def loans(request: pytest.FixtureRequest, spark: Any) -> tuple[Case, Any, Any]:
    """Loans through the production spec: a small synthetic set, and the session's split project
    (the real subsample when the sample is present, synthetic loans otherwise)."""
    if request.param == "synthetic":
        cfg = request.getfixturevalue("synthetic_loans_project")
        name = f"loans-synthetic-{LOAN_ROWS}-seed{LOAN_SEED}"
    else:
        from tests.conftest import REAL_SAMPLE, SUBSAMPLE_ROWS

        cfg = request.getfixturevalue("split_project")
        source = "real" if REAL_SAMPLE.is_file() else "synthetic"
        name = f"loans-{source}-subsample-{SUBSAMPLE_ROWS}"
    return _loans_case(spark, name, cfg)


# --- tests ---------------------------------------------------------------------------------------


def test_onnxruntime_runs_float64_tree_ensemble_with_spark_comparisons() -> None:
    """Fails loudly when onnxruntime drops ai.onnx.ml TreeEnsemble in float64 or changes how it
    compares: a value on the threshold goes left, the next double and NaN go right (as in Spark)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from src.pipelines.export.graph import ML_DOMAIN, ML_OPSET, ONNX_OPSET
    from src.pipelines.export.trees import SparkNode, tree_ensemble

    threshold = 0.1
    tree = {
        0: SparkNode(0, 1, threshold, 1, 2, 0.0, ()),
        1: SparkNode(1, -1, 0.0, -1, -1, 0.0, ()),
        2: SparkNode(2, -1, 0.0, -1, -1, 0.0, ()),
    }
    one_leaf = {0: SparkNode(0, -1, 0.0, -1, -1, 0.0, ())}
    # Sums float32 cannot hold: 0.1 + 1e-10 and 0.7 + 1e-10 are distinct doubles only.
    ensemble = tree_ensemble([tree, one_leaf], [{1: 0.1, 2: 0.7}, {0: 1e-10}], "sum")
    graph = helper.make_graph(
        [ensemble],
        "probe",
        [helper.make_tensor_value_info("features", TensorProto.DOUBLE, [None, 2])],
        [helper.make_tensor_value_info("sum", TensorProto.DOUBLE, [None, 1])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", ONNX_OPSET),
            helper.make_opsetid(ML_DOMAIN, ML_OPSET),
        ],
    )
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(double)"
    assert session.get_outputs()[0].type == "tensor(double)"
    values = [np.nextafter(threshold, 0), threshold, np.nextafter(threshold, 1), np.nan]
    (out,) = session.run(None, {"features": np.array([[0.0, v] for v in values])})
    left, right = 0.1 + 1e-10, 0.7 + 1e-10
    assert out[:, 0].tolist() == [left, left, right, right]


@pytest.mark.parametrize("threads", [1, 2])
def test_xgboost_export_adds_trees_in_xgboost_order(threads: int) -> None:
    """300 trees, with NaNs: the graph's probability is XGBoost's float32 one (its margin bit for
    bit; the sigmoid within an ulp). onnxmltools' own graph, which adds the base margin last and
    lets ONNX Runtime split trees among threads, fails both checks: 9% exact, 138 ulps apart."""
    import onnxruntime as ort
    import xgboost as xgb

    from src.pipelines.export.xgboost_export import booster_model

    rng = np.random.default_rng(5)
    x = rng.normal(size=(20_000, 8))
    x[rng.uniform(size=x.shape) < 0.05] = np.nan
    margin = np.nan_to_num(x[:, 0] + 0.5 * x[:, 1]) - 1.8
    label = (rng.uniform(size=len(x)) < 1 / (1 + np.exp(-margin))).astype(int)
    params = {"max_depth": 3, "eta": 0.05, "subsample": 0.8, "objective": "binary:logistic"}
    booster = xgb.train({**params, "seed": 5}, xgb.DMatrix(x, label), num_boost_round=300)
    expected = booster.inplace_predict(x.astype(np.float32))

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    model = booster_model(booster, x.shape[1], "xgb300")
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    (probability,) = session.run(None, {"features": x})
    p1 = probability[:, 1]
    ulp = np.spacing(expected.astype(np.float32)).astype(np.float64)
    assert np.all(np.abs(p1 - expected) <= ulp), np.max(np.abs(p1 - expected) / ulp)
    assert np.mean(p1 == expected) >= 0.99
    assert np.array_equal(probability[:, 0], 1.0 - p1)


def test_no_private_onnxmltools_reader_is_patched() -> None:
    import src.pipelines.export.onnx_export as export

    source = Path(export.__file__).read_text()
    assert "_fast_tree_reader" not in source
    assert "setattr(module" not in source


@pytest.mark.parametrize("model_name", MODELS)
def test_numpy_rows_and_thresholds(spark: Any, numpy_case: Case, model_name: str) -> None:
    _assert_parity(spark, numpy_case, model_name)


@pytest.mark.parametrize("model_name", MODELS)
def test_loans_rows_and_thresholds(
    spark: Any, loans: tuple[Case, Any, Any], model_name: str
) -> None:
    case, pipelines, (spec, scored) = loans
    _assert_parity(spark, case, model_name)
    # The production path too: full pipeline in Spark vs spec in numpy + ONNX, every test loan.
    from src.pipelines.export.onnx_export import check_parity, export_classifier

    exported = export_classifier(spark, pipelines[model_name], case.n_features, model_name)
    parity = check_parity(exported, spec, scored[model_name])
    print(
        f"{case.name} {model_name}: check_parity {parity.max_abs_diff:.2e} on {parity.rows} loans"
    )
    assert parity.rows == len(case.rows)
    assert parity.max_abs_diff <= PARITY, (case.name, model_name, parity.max_abs_diff)
