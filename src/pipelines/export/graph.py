"""Shared pieces of our own float64 ONNX graphs: opsets, the classifier's input and output, heads.

Every graph built here takes `features` double [n, n_features] and returns `probability` double
[n, 2], computed with the same double operations, in the same order, as Spark.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from src.core.bundle import ONNX_INPUT, ONNX_PROBABILITY_OUTPUT

# The default-domain opset of our graphs and the ai.onnx.ml opset whose TreeEnsemble (since 5)
# takes and returns float64; tests/test_onnx_parity.py fails when onnxruntime stops running them.
ONNX_OPSET = 21
ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 5


def constant(name: str, value: float | np.ndarray) -> onnx.TensorProto:
    """A float64 initializer."""
    return numpy_helper.from_array(np.asarray(value, dtype=np.float64), name)


def binary_head(
    margin: str, scale: float, prefix: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """[P0, P1] from the margin [n, 1] as Spark's binary classifiers compute it.

    Spark's raw prediction is [-m, m]; P0 = 1 / (1 + exp(-scale · (-m))) = 1 / (1 + exp(scale · m))
    and P1 = 1 − P0 (scale 2 for GBT's log loss, 1 for logistic regression).
    """
    p = prefix
    initializers = [constant(f"{p}_scale", scale), constant(f"{p}_one", 1.0)]
    nodes = [
        helper.make_node("Mul", [margin, f"{p}_scale"], [f"{p}_scaled"]),
        helper.make_node("Exp", [f"{p}_scaled"], [f"{p}_exp"]),
        helper.make_node("Add", [f"{p}_one", f"{p}_exp"], [f"{p}_denominator"]),
        helper.make_node("Div", [f"{p}_one", f"{p}_denominator"], [f"{p}_p0"]),
        helper.make_node("Sub", [f"{p}_one", f"{p}_p0"], [f"{p}_p1"]),
        helper.make_node("Concat", [f"{p}_p0", f"{p}_p1"], [ONNX_PROBABILITY_OUTPUT], axis=1),
    ]
    return nodes, initializers


def classifier_model(
    name: str,
    n_features: int,
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
) -> onnx.ModelProto:
    """A checked model: `features` double [n, n_features] → `probability` double [n, 2]."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(ONNX_INPUT, TensorProto.DOUBLE, [None, n_features])],
        [helper.make_tensor_value_info(ONNX_PROBABILITY_OUTPUT, TensorProto.DOUBLE, [None, 2])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", ONNX_OPSET),
            helper.make_opsetid(ML_DOMAIN, ML_OPSET),
        ],
        producer_name="credit-risk",
    )
    onnx.checker.check_model(model, full_check=True)
    return model
