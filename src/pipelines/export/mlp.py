"""Spark's MultilayerPerceptronClassificationModel → ONNX in float64, from its public weights.

Spark stores each layer as a column-major (n_out × n_in) matrix followed by n_out biases, all in
one weight vector; hidden layers apply the logistic sigmoid, the last one softmax. The same
operations in float64 match Spark to rounding (~1e-16), where onnxmltools' float32 graph did not.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import helper
from pyspark.ml.classification import MultilayerPerceptronClassificationModel

from src.core.bundle import ONNX_INPUT, ONNX_PROBABILITY_OUTPUT
from src.pipelines.export.graph import classifier_model, constant
from src.utils.errors import PermanentError


def mlp_model(
    model: MultilayerPerceptronClassificationModel, n_features: int, name: str
) -> onnx.ModelProto:
    """[MatMul + Add + Sigmoid] per hidden layer, then MatMul + Add + Softmax: P(class)."""
    layers = [int(n) for n in model.getLayers()]
    weights = model.weights.toArray().astype(np.float64)
    expected = sum(n_in * n_out + n_out for n_in, n_out in itertools.pairwise(layers))
    if layers[0] != n_features or layers[-1] != 2 or weights.size != expected:
        raise PermanentError(
            f"{name}: MLP layers {layers} with {weights.size} weights do not fit "
            f"{n_features} features and two classes"
        )
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    current, offset = ONNX_INPUT, 0
    last = len(layers) - 2
    for i, (n_in, n_out) in enumerate(itertools.pairwise(layers)):
        # Column-major (n_out × n_in) read row-major as (n_in × n_out) is its transpose: x · Wᵀ.
        matrix = weights[offset : offset + n_in * n_out].reshape(n_in, n_out)
        offset += n_in * n_out
        bias = weights[offset : offset + n_out]
        offset += n_out
        initializers += [constant(f"w{i}", matrix), constant(f"b{i}", bias)]
        nodes += [
            helper.make_node("MatMul", [current, f"w{i}"], [f"dot{i}"]),
            helper.make_node("Add", [f"dot{i}", f"b{i}"], [f"z{i}"]),
        ]
        output = ONNX_PROBABILITY_OUTPUT if i == last else f"a{i}"
        activation = "Softmax" if i == last else "Sigmoid"
        nodes.append(helper.make_node(activation, [f"z{i}"], [output], **(
            {"axis": 1} if i == last else {}
        )))
        current = output
    return classifier_model(name, n_features, nodes, initializers)
