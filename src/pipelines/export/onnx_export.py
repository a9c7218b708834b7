"""Spark classifier → ONNX with onnxmltools, and the parity check against Spark on the test split.

Only the classifier stage is converted: its input is the plain numeric `features` vector that the
VectorAssembler builds from spec.features; the spec itself runs in numpy (`transform_records`)
at serving time. onnxmltools' converters emit float32 graphs (tree thresholds, MLP weights), so
the input is float32: differences to Spark are rounding, ~1e-7, checked on every row.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.ml.classification import MultilayerPerceptronClassificationModel
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
from src.pipelines.training.classifiers import PROBABILITY_COLUMN
from src.utils.errors import DataError, PermanentError
from src.utils.logging import get_logger

log = get_logger(component="onnx_export")

_CONVERTER_PACKAGE = "onnxmltools.convert.sparkml.operator_converters"
_TREE_READER = "save_read_sparkml_model_data"
_SPARK_P1 = "_spark_p_default"


# --- conversion ----------------------------------------------------------------------------------


class _TreeFrame:
    """The two DataFrame methods onnxmltools calls on one tree's node table."""

    def __init__(self, nodes: pd.DataFrame) -> None:
        self._nodes = nodes

    def toPandas(self) -> pd.DataFrame:  # noqa: N802  (the DataFrame method name onnxmltools calls)
        return self._nodes.copy()

    def count(self) -> int:
        return len(self._nodes)


def _ensemble_nodes(spark: SparkSession, classifier: Any) -> dict[str, _TreeFrame] | None:
    """Node tables of every tree of an ensemble, by tree uid, from one save of the whole model.

    None when the trees' uids are not unique (the lookup would be ambiguous).
    """
    trees = list(classifier.trees)
    uids = [tree.uid for tree in trees]
    if len(set(uids)) != len(uids):
        return None
    with tempfile.TemporaryDirectory(prefix="onnx-trees-") as folder:
        path = str(Path(folder) / "ensemble")
        classifier.write().overwrite().save(path)
        data = spark.read.parquet(f"{path}/data").toPandas()
    frames: dict[str, _TreeFrame] = {}
    for tree_id, group in data.groupby("treeID"):
        nodes = pd.DataFrame(list(group["nodeData"]))
        frames[uids[int(tree_id)]] = _TreeFrame(nodes.sort_values("id").reset_index(drop=True))
    if len(frames) != len(trees):
        return None
    return frames


@contextmanager
def _fast_tree_reader(spark: SparkSession, classifier: Any) -> Iterator[None]:
    """Serve onnxmltools' per-tree reads from one save of the ensemble.

    onnxmltools saves and re-reads every tree through Spark (four jobs per tree, ~2 s each on two
    cores: minutes for a 200-tree forest); one save of the ensemble holds the same node tables.
    A tree the cache does not know falls back to onnxmltools' own reader.
    """
    if not hasattr(classifier, "trees"):
        yield
        return
    # The converters register (and import the reader) when the sparkml converter is imported.
    importlib.import_module(_CONVERTER_PACKAGE)
    frames = _ensemble_nodes(spark, classifier)
    if frames is None:
        log.warning("onnx.tree_cache_unavailable", reason="tree uids are not unique")
        yield
        return
    modules = [
        module
        for name, module in list(sys.modules.items())
        if name.startswith(_CONVERTER_PACKAGE) and hasattr(module, _TREE_READER)
    ]
    originals = {module: getattr(module, _TREE_READER) for module in modules}
    if not originals:
        log.warning("onnx.tree_cache_unavailable", reason=f"no {_TREE_READER} in onnxmltools")
        yield
        return
    original: Callable[..., Any] = next(iter(originals.values()))

    def cached(session: SparkSession, model: Any) -> Any:
        frame = frames.get(getattr(model, "uid", ""))
        if frame is None or frame.count() != model.numNodes:
            return original(session, model)
        return frame

    for module in modules:
        setattr(module, _TREE_READER, cached)
    try:
        yield
    finally:
        for module, function in originals.items():
            setattr(module, _TREE_READER, function)


def assembler_inputs(pipeline: PipelineModel) -> list[str]:
    """The VectorAssembler's input columns: the order of the classifier's feature vector."""
    assemblers = [s for s in pipeline.stages if isinstance(s, VectorAssembler)]
    if len(assemblers) != 1:
        raise PermanentError(f"expected one VectorAssembler in the pipeline, got {len(assemblers)}")
    return list(assemblers[0].getInputCols())


def double_precision(model: onnx.ModelProto) -> onnx.ModelProto:
    """The ONNX graph in float64 (initializers, inputs, outputs): for graphs of standard ops.

    onnxmltools writes the MLP in float32, which moves its probabilities by up to ~1e-6 against
    Spark's float64; the same Gemm/Sigmoid/Softmax graph in float64 matches Spark to ~1e-15.
    """
    from onnx import TensorProto, numpy_helper

    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            array = numpy_helper.to_array(tensor).astype("float64")
            graph.initializer[i].CopyFrom(numpy_helper.from_array(array, tensor.name))
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    onnx.checker.check_model(converted)
    return converted


def export_classifier(
    spark: SparkSession, pipeline: PipelineModel, n_features: int, name: str
) -> onnx.ModelProto:
    """The pipeline's classifier stage as ONNX: input `features` float [None, n_features]."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    classifier = pipeline.stages[-1]
    with _fast_tree_reader(spark, classifier):
        model = onnxmltools.convert_sparkml(
            classifier,
            name,
            [(ONNX_INPUT, FloatTensorType([None, n_features]))],
            spark_session=spark,
        )
    if isinstance(classifier, MultilayerPerceptronClassificationModel):
        model = double_precision(model)
    outputs = [o.name for o in model.graph.output]
    if ONNX_PROBABILITY_OUTPUT not in outputs:
        raise PermanentError(
            f"ONNX export of {name}: no '{ONNX_PROBABILITY_OUTPUT}' output (outputs: {outputs})"
        )
    onnx.checker.check_model(model)
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
    diff = np.abs(onnx_p - test.spark_probability)
    worst = int(diff.argmax()) if len(diff) else None
    return Parity(
        rows=len(diff),
        max_abs_diff=float(diff.max()) if len(diff) else 0.0,
        worst_key=test.keys[worst] if worst is not None else None,
        onnx_probability=onnx_p,
    )
