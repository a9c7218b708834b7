"""xgboost.spark classifiers → ONNX through onnxmltools' `convert_xgboost`, with a float64 input.

XGBoost casts every feature to float32 before it compares it with its float32 thresholds, so the
graph does the same: `features` (double, like every other model's) → Cast → onnxmltools' graph.
Its float32 probabilities are cast to double; Spark's column holds the same float32 numbers.
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx import TensorProto, helper

from src.core.bundle import ONNX_INPUT, ONNX_PROBABILITY_OUTPUT
from src.pipelines.export.graph import ONNX_OPSET
from src.utils.errors import PermanentError

_FLOAT_INPUT = "features_float32"
# The output onnxmltools' XGBoost classifier converter names its [n, 2] probabilities.
_CONVERTER_PROBABILITIES = "probabilities"


def is_xgboost(classifier: Any) -> bool:
    """True for a fitted xgboost.spark classifier."""
    from xgboost.spark import SparkXGBClassifierModel

    return isinstance(classifier, SparkXGBClassifierModel)


def xgboost_model(classifier: Any, n_features: int, name: str) -> onnx.ModelProto:
    """A SparkXGBClassifierModel's booster as ONNX: `features` double → `probability` double."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster = classifier.get_booster()
    if booster.num_features() != n_features:
        raise PermanentError(
            f"{name}: booster has {booster.num_features()} features, the spec {n_features}"
        )
    converted = onnxmltools.convert_xgboost(
        booster, name, [(_FLOAT_INPUT, FloatTensorType([None, n_features]))]
    )
    outputs = [o.name for o in converted.graph.output]
    if _CONVERTER_PROBABILITIES not in outputs:
        raise PermanentError(
            f"{name}: onnxmltools' XGBoost graph has no '{_CONVERTER_PROBABILITIES}' output "
            f"(outputs: {outputs})"
        )
    graph = converted.graph
    nodes = [
        helper.make_node("Cast", [ONNX_INPUT], [_FLOAT_INPUT], to=TensorProto.FLOAT),
        *graph.node,
        helper.make_node(
            "Cast", [_CONVERTER_PROBABILITIES], [ONNX_PROBABILITY_OUTPUT], to=TensorProto.DOUBLE
        ),
    ]
    wrapped = helper.make_graph(
        nodes,
        graph.name,
        [helper.make_tensor_value_info(ONNX_INPUT, TensorProto.DOUBLE, [None, n_features])],
        [helper.make_tensor_value_info(ONNX_PROBABILITY_OUTPUT, TensorProto.DOUBLE, [None, 2])],
        initializer=list(graph.initializer),
    )
    # onnxmltools imports ai.onnx.ml only; the casts need the default domain too.
    opsets = {o.domain: o.version for o in converted.opset_import}
    opsets.setdefault("", ONNX_OPSET)
    model = helper.make_model(
        wrapped,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in opsets.items()],
        producer_name=converted.producer_name,
        producer_version=converted.producer_version,
    )
    onnx.checker.check_model(model, full_check=True)
    return model
