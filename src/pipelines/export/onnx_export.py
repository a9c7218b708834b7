"""Spark classifier → ONNX, and the parity check against Spark on the test split.

Only the classifier stage is converted: its input is the plain numeric `features` vector that the
VectorAssembler builds from spec.features; the spec itself runs in numpy (`transform_records`)
at serving time. Every graph takes `features` as float64, as Spark does: tree ensembles and
logistic regression and the MLP are our own float64 graphs (trees.py, linear.py, mlp.py);
XGBoost is onnxmltools' parse of the booster, re-emitted to add its float32 leaves in XGBoost's
order (xgboost_export.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.ml.classification import (
    GBTClassificationModel,
    LogisticRegressionModel,
    MultilayerPerceptronClassificationModel,
    RandomForestClassificationModel,
)
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import DataFrame, SparkSession

from src.core.bundle import (
    DEFAULT_CLASS_INDEX,
    ONNX_INPUT,
    ONNX_PROBABILITY_OUTPUT,
    input_dtype,
)
from src.core.feature_spec import FeatureSpec, transform_records
from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.pipelines.evaluation.spark_metrics import positive_probability
from src.pipelines.export.linear import logistic_regression_model
from src.pipelines.export.mlp import mlp_model
from src.pipelines.export.trees import gbt_model, random_forest_model
from src.pipelines.export.xgboost_export import is_xgboost, xgboost_model
from src.pipelines.training.classifiers import PROBABILITY_COLUMN
from src.utils.errors import DataError, PermanentError
from src.utils.logging import get_logger

log = get_logger(component="onnx_export")

_SPARK_P1 = "_spark_p_default"


# --- conversion ---------------------------------------------------------------------------------


def assembler_inputs(pipeline: PipelineModel) -> list[str]:
    """The VectorAssembler's input columns: the order of the classifier's feature vector."""
    assemblers = [s for s in pipeline.stages if isinstance(s, VectorAssembler)]
    if len(assemblers) != 1:
        raise PermanentError(f"expected one VectorAssembler in the pipeline, got {len(assemblers)}")
    return list(assemblers[0].getInputCols())


def export_classifier(
    spark: SparkSession, pipeline: PipelineModel, n_features: int, name: str
) -> onnx.ModelProto:
    """The pipeline's classifier stage as ONNX: input `features` double [None, n_features]."""
    classifier = pipeline.stages[-1]
    if isinstance(classifier, RandomForestClassificationModel):
        model = random_forest_model(spark, classifier, n_features, name)
    elif isinstance(classifier, GBTClassificationModel):
        model = gbt_model(spark, classifier, n_features, name)
    elif isinstance(classifier, LogisticRegressionModel):
        model = logistic_regression_model(classifier, n_features, name)
    elif isinstance(classifier, MultilayerPerceptronClassificationModel):
        model = mlp_model(classifier, n_features, name)
    elif is_xgboost(classifier):
        model = xgboost_model(classifier, n_features, name)
    else:
        raise PermanentError(f"ONNX export of {name}: no exporter for {type(classifier).__name__}")
    outputs = [o.name for o in model.graph.output]
    if ONNX_PROBABILITY_OUTPUT not in outputs:
        raise PermanentError(
            f"ONNX export of {name}: no '{ONNX_PROBABILITY_OUTPUT}' output (outputs: {outputs})"
        )
    onnx.checker.check_model(model)
    log.info(
        "onnx.exported", model=name, kind=type(classifier).__name__, nodes=len(model.graph.node)
    )
    return model


# --- parity --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredTest:
    """The test split with labels, parsed records and Spark's P(default), in loan_key order."""

    keys: list[str]
    labels: np.ndarray
    records: list[dict[str, Any]]
    spark_probability: np.ndarray


@dataclass(frozen=True)
class Parity:
    """ONNX vs Spark on the same rows."""

    rows: int
    max_abs_diff: float
    worst_key: str | None
    onnx_probability: np.ndarray


def _records(frame: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    # NaN and None both mean missing to transform_records; object columns keep their strings.
    return frame[columns].to_dict("records")  # type: ignore[return-value]


def score_test_with_spark(
    pipeline: PipelineModel, spec: FeatureSpec, test: DataFrame, extra_columns: list[str]
) -> ScoredTest:
    """Spark's probabilities of the test rows, with the rows themselves for the numpy path."""
    inputs = [f.name for f in spec.numeric] + [c.name for c in spec.categorical]
    wanted = list(dict.fromkeys([*inputs, *extra_columns]))
    missing = [c for c in [KEY_COLUMN, LABEL_COLUMN, *wanted] if c not in test.columns]
    if missing:
        raise DataError(f"test split lacks columns {missing}")
    scored = pipeline.transform(test).select(
        KEY_COLUMN,
        LABEL_COLUMN,
        *wanted,
        positive_probability(PROBABILITY_COLUMN).alias(_SPARK_P1),
    )
    frame = scored.toPandas().sort_values(KEY_COLUMN, kind="stable").reset_index(drop=True)
    return ScoredTest(
        keys=frame[KEY_COLUMN].astype(str).tolist(),
        labels=frame[LABEL_COLUMN].to_numpy(dtype=np.int64),
        records=_records(frame, wanted),
        spark_probability=frame[_SPARK_P1].to_numpy(dtype=np.float64),
    )


def onnx_probabilities(model: onnx.ModelProto | bytes, matrix: np.ndarray) -> np.ndarray:
    """P(default) of a feature matrix through ONNX Runtime (float64 result)."""
    import onnxruntime as ort

    payload = model if isinstance(model, bytes) else model.SerializeToString()
    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(
        [ONNX_PROBABILITY_OUTPUT], {ONNX_INPUT: np.asarray(matrix, dtype=input_dtype(session))}
    )
    return np.asarray(probabilities, dtype=np.float64)[:, DEFAULT_CLASS_INDEX]


def check_parity(model: onnx.ModelProto, spec: FeatureSpec, test: ScoredTest) -> Parity:
    """Spec in numpy + ONNX Runtime against Spark's probabilities, row by row."""
    onnx_p = onnx_probabilities(model, transform_records(spec, test.records))
    return parity_of(np.abs(onnx_p - test.spark_probability), test.keys, onnx_p)


def parity_of(diff: np.ndarray, keys: list[str], onnx_probability: np.ndarray) -> Parity:
    """The largest of the row-wise differences `diff` and the loan it occurs on."""
    worst = int(diff.argmax()) if len(diff) else None
    return Parity(
        rows=len(diff),
        max_abs_diff=float(diff.max()) if len(diff) else 0.0,
        worst_key=keys[worst] if worst is not None else None,
        onnx_probability=onnx_probability,
    )
