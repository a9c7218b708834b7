"""Binary classification metrics of a predictions table, computed in Spark."""

from __future__ import annotations

from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from src.contracts import ModelMetrics
from src.core.metrics import LOG_LOSS_EPS
from src.utils.errors import DataError

_P1 = "_p_default"
_Y = "_y"


def positive_probability(prob_col: str) -> Column:
    """Probability of class 1 from a Spark ML probability vector column (or a double column)."""
    return vector_to_array(F.col(prob_col))[1]


def _scored(pred_df: DataFrame, label_col: str, prob_col: str) -> DataFrame:
    is_vector = pred_df.schema[prob_col].dataType.typeName() != "double"
    p1 = positive_probability(prob_col) if is_vector else F.col(prob_col)
    return pred_df.select(F.col(label_col).cast("double").alias(_Y), p1.alias(_P1))


def log_loss_term(y: Column, p: Column) -> Column:
    """Binary cross-entropy of one row (label 0/1), its probability clipped at LOG_LOSS_EPS."""
    clipped = F.least(F.greatest(p, F.lit(LOG_LOSS_EPS)), F.lit(1.0 - LOG_LOSS_EPS))
    return -(y * F.log(clipped) + (1.0 - y) * F.log(1.0 - clipped))


def log_loss(scored: DataFrame) -> float:
    """Mean binary cross-entropy of `_y` against `_p_default`, with clipped probabilities."""
    return float(scored.agg(F.avg(log_loss_term(F.col(_Y), F.col(_P1)))).first()[0])


def binary_metrics(pred_df: DataFrame, label_col: str, prob_col: str) -> ModelMetrics:
    """AUC-ROC, AUC-PR and log loss of class-1 probabilities in `prob_col` against `label_col`."""
    # One partition: the evaluator sums curve segments (and avg sums losses) across partitions in
    # task-completion order, which moves the last bits between identical runs.
    scored = _scored(pred_df, label_col, prob_col).coalesce(1).cache()
    try:
        classes = {r[_Y] for r in scored.select(_Y).distinct().collect()}
        if classes != {0.0, 1.0}:
            raise DataError(f"metrics: need both classes in '{label_col}', found {sorted(classes)}")
        # numBins=0: the exact curves, not a down-sampled approximation.
        evaluator = BinaryClassificationEvaluator(rawPredictionCol=_P1, labelCol=_Y, numBins=0)
        return ModelMetrics(
            auc_roc=evaluator.evaluate(scored, {evaluator.metricName: "areaUnderROC"}),
            auc_pr=evaluator.evaluate(scored, {evaluator.metricName: "areaUnderPR"}),
            log_loss=log_loss(scored),
        )
    finally:
        scored.unpersist()
