"""Column expressions the metrics are built from: a model's P(default) and one row's log loss."""

from __future__ import annotations

from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column
from pyspark.sql import functions as F

from src.core.metrics import LOG_LOSS_EPS


def positive_probability(prob_col: str) -> Column:
    """Probability of class 1 from a Spark ML probability vector column (or a double column)."""
    return vector_to_array(F.col(prob_col))[1]


def log_loss_term(y: Column, p: Column) -> Column:
    """Binary cross-entropy of one row (label 0/1), its probability clipped at LOG_LOSS_EPS."""
    clipped = F.least(F.greatest(p, F.lit(LOG_LOSS_EPS)), F.lit(1.0 - LOG_LOSS_EPS))
    return -(y * F.log(clipped) + (1.0 - y) * F.log(1.0 - clipped))
