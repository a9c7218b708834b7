"""Spark's binary LogisticRegressionModel → ONNX in float64: margin x · β + b, then the logit."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper
from pyspark.ml.classification import LogisticRegressionModel

from src.core.bundle import ONNX_INPUT
from src.pipelines.export.graph import binary_head, classifier_model, constant
from src.utils.errors import PermanentError


def logistic_regression_model(
    model: LogisticRegressionModel, n_features: int, name: str
) -> onnx.ModelProto:
    """Spark's binomial LR: raw = [-m, m], P0 = 1 / (1 + exp(m)), P1 = 1 − P0."""
    if model.numClasses != 2 or model.coefficientMatrix.numRows != 1:
        raise PermanentError(
            f"{name}: only binomial logistic regression exports "
            f"({model.numClasses} classes, {model.coefficientMatrix.numRows} coefficient rows)"
        )
    coefficients = model.coefficients.toArray().astype(np.float64)
    if coefficients.shape != (n_features,):
        raise PermanentError(
            f"{name}: {coefficients.shape[0]} coefficients for {n_features} features"
        )
    nodes = [
        helper.make_node("MatMul", [ONNX_INPUT, "coefficients"], ["dot"]),
        helper.make_node("Add", ["dot", "intercept"], ["margin"]),
    ]
    head, head_initializers = binary_head("margin", 1.0, "lr")
    initializers = [
        constant("coefficients", coefficients.reshape(n_features, 1)),
        constant("intercept", float(model.intercept)),
        *head_initializers,
    ]
    return classifier_model(name, n_features, [*nodes, *head], initializers)
