"""Point metrics of a whole scored slice, computed in Spark: only a row per probability bin and one
row of rank aggregates reach the driver, whatever the slice's size. A slice within the driver bound
(`evaluate.driver_sample_rows`) is measured on the driver instead: a dozen small Spark jobs cost
seconds per figure set, which made small data pay big-data costs.

A scored slice has the loan key and three doubles: the label `y`, the probability `p` (Brier, log
loss, calibration, the decision) and the score `rank_score` that ranking metrics order by. Sums are
exact (integer counts; DECIMAL(38,18) sums of double terms), so a figure does not move with the
partitioning or the order tasks finish in. scikit-learn computes the same figures on the driver
sample (src/core/metrics.py); tests/test_evaluation_spark.py checks both agree on the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import numpy as np
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from src.core.metrics import (
    Confusion,
    auc_roc,
    average_precision,
    brier_score,
    confusion_at,
    expected_calibration_error,
    ks_statistic,
    log_loss,
)
from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.pipelines.evaluation.spark_metrics import log_loss_term
from src.utils.errors import DataError

Y = "y"
P = "p"
RANK = "rank_score"
_EXACT = "decimal(38,18)"
_INVALID_BIN = -1
# Score buckets of the ranking's running sums: the parallelism of that step.
_BUCKETS = 1024
_BUCKET = "_score_bucket"


@dataclass(frozen=True)
class PointMetrics:
    """Figures of every row of a slice; `confusion` only when a threshold was given."""

    rows: int
    positives: int
    auc_roc: float
    auc_pr: float
    ks: float
    brier: float
    log_loss: float
    calibration_error: float
    confusion: Confusion | None


def scored_slice(df: DataFrame, p: Column, rank: Column | None = None) -> DataFrame:
    """Key, label, probability and ranking score (the probability unless given) as doubles."""
    return df.select(
        KEY_COLUMN,
        F.col(LABEL_COLUMN).cast("double").alias(Y),
        p.cast("double").alias(P),
        (p if rank is None else rank).cast("double").alias(RANK),
    )


def _exact_sum(term: Column) -> Column:
    return F.sum(term.cast(_EXACT))


def _count_where(condition: Column) -> Column:
    return F.sum(F.when(condition, 1).otherwise(0))


def _bin_rows(scored: DataFrame, bins: int, threshold: float | None) -> list:
    y, p, r = F.col(Y), F.col(P), F.col(RANK)
    valid = y.isin(0.0, 1.0) & p.between(0.0, 1.0) & r.between(0.0, 1.0)
    # Equal-width bins over [0, 1], 1.0 in the last one: calibration_bins' arithmetic.
    index = F.least(F.floor(p * F.lit(float(bins))), F.lit(bins - 1))
    aggregates = [
        F.count(F.lit(1)).alias("n"),
        _count_where(y == 1.0).alias("positives"),
        _exact_sum(p).alias("sum_p"),
        _exact_sum((p - y) * (p - y)).alias("sum_squared"),
        _exact_sum(log_loss_term(y, p)).alias("sum_log_loss"),
    ]
    if threshold is not None:
        declined = p >= F.lit(threshold)
        aggregates += [
            _count_where(~declined & (y == 0.0)).alias("tn"),
            _count_where(declined & (y == 0.0)).alias("fp"),
            _count_where(~declined & (y == 1.0)).alias("fn"),
            _count_where(declined & (y == 1.0)).alias("tp"),
        ]
    binned = scored.withColumn("bin", F.when(valid, index).otherwise(F.lit(_INVALID_BIN)))
    return binned.groupBy("bin").agg(*aggregates).orderBy("bin").collect()


def _score_bucket() -> Column:
    # Equal-width buckets of the score in [0, 1] (checked before): a higher bucket's loans all
    # score above a lower one's, so each bucket's running sums start from the buckets above it.
    return F.least(F.floor(F.col(RANK) * F.lit(float(_BUCKETS))), F.lit(_BUCKETS - 1)).cast("int")


def cumulative_counts(groups: DataFrame) -> DataFrame:
    """Each score group (RANK, pos, neg) with tp and fp: the positives and negatives scored at or
    above it. Running sums per score bucket, in parallel, plus the buckets above: no single task
    sorts every distinct score. `groups` is read twice; the caller persists it."""
    bucketed = groups.withColumn(_BUCKET, _score_bucket())
    totals = bucketed.groupBy(_BUCKET).agg(F.sum("pos").alias("pos"), F.sum("neg").alias("neg"))
    offsets, tp_above, fp_above = [], 0, 0
    for row in totals.orderBy(F.col(_BUCKET).desc()).collect():  # at most _BUCKETS rows
        offsets.append((int(row[_BUCKET]), tp_above, fp_above))
        tp_above += int(row["pos"])
        fp_above += int(row["neg"])
    above = groups.sparkSession.createDataFrame(
        offsets, f"{_BUCKET} int, tp_above long, fp_above long"
    )
    within = (
        Window.partitionBy(_BUCKET)
        .orderBy(F.col(RANK).desc())
        .rowsBetween(Window.unboundedPreceding, 0)
    )
    return (
        bucketed.join(F.broadcast(above), _BUCKET)
        .withColumn("tp", F.col("tp_above") + F.sum("pos").over(within))
        .withColumn("fp", F.col("fp_above") + F.sum("neg").over(within))
    )


def _ranking(scored: DataFrame, positives: int, negatives: int) -> tuple[float, float, float]:
    """AUC-ROC (Mann–Whitney, ties half), average precision and KS over tie groups of the score."""
    groups = scored.groupBy(RANK).agg(
        _count_where(F.col(Y) == 1.0).cast("long").alias("pos"),
        _count_where(F.col(Y) == 0.0).cast("long").alias("neg"),
    )
    # Two reads of the groups (bucket totals, running sums): one pass over the scored slice.
    groups = groups.persist()
    try:
        cumulative = cumulative_counts(groups)
        pos, neg, tp, fp = (F.col(c) for c in ("pos", "neg", "tp", "fp"))
        row = cumulative.agg(
            # Σ pos·(2·fp − neg) counts twice the pairs a positive loses or ties: an exact integer.
            F.sum(pos * (2 * fp - neg)).alias("lost_twice"),
            _exact_sum(pos * (tp / (tp + fp))).alias("precision_sum"),
            F.max(tp / F.lit(float(positives)) - fp / F.lit(float(negatives))).alias("ks"),
        ).first()
    finally:
        groups.unpersist()
    pairs_twice = 2 * positives * negatives
    auc = (pairs_twice - int(row["lost_twice"])) / pairs_twice
    average_precision = float(Decimal(row["precision_sum"]) / positives)
    # The ROC curve starts at (0, 0): KS is never below 0.
    return auc, average_precision, max(float(row["ks"]), 0.0)


def _checked_table(
    scored: DataFrame, bins: int, threshold: float | None, what: str
) -> tuple[list, int, int]:
    """The per-bin aggregates of `scored`, its rows and positives; refuses bad rows, one class."""
    table = _bin_rows(scored, bins, threshold)
    invalid = sum(r["n"] for r in table if r["bin"] == _INVALID_BIN)
    rows = sum(int(r["n"]) for r in table)
    positives = sum(int(r["positives"]) for r in table)
    _refuse_bad_rows(invalid, rows, positives, what)
    return table, rows, positives


def _refuse_bad_rows(invalid: int, rows: int, positives: int, what: str) -> None:
    if invalid:
        raise DataError(
            f"evaluate: {what} has {invalid} rows whose label is not 0/1 or whose probability is "
            "missing or outside [0, 1]"
        )
    if not 0 < positives < rows:
        raise DataError(f"evaluate: {what} needs both classes among its {rows} labels")


def _calibration_error(table: list, rows: int) -> float:
    ece = 0.0
    for r in table:
        n = int(r["n"])
        mean_predicted = float(Decimal(r["sum_p"]) / n)
        ece += n / rows * abs(mean_predicted - int(r["positives"]) / n)
    return ece


def _brier(table: list, rows: int) -> float:
    return float(sum(Decimal(r["sum_squared"]) for r in table) / rows)


@dataclass(frozen=True)
class ProbabilityFigures:
    """Figures of a slice's probabilities alone: they need no ranking pass."""

    brier: float
    log_loss: float
    calibration_error: float


def _log_loss(table: list, rows: int) -> float:
    return float(sum(Decimal(r["sum_log_loss"]) for r in table) / rows)


def probability_figures(scored: DataFrame, bins: int, what: str = "slice") -> ProbabilityFigures:
    """Brier, log loss and ECE of every row of `scored`, from one binned aggregate."""
    table, rows, _ = _checked_table(scored, bins, None, what)
    return ProbabilityFigures(
        brier=_brier(table, rows),
        log_loss=_log_loss(table, rows),
        calibration_error=_calibration_error(table, rows),
    )


def point_metrics(
    scored: DataFrame, bins: int, threshold: float | None = None, what: str = "slice"
) -> PointMetrics:
    """Ranking, probability and (at `threshold`) decision figures of every row of `scored`."""
    table, rows, positives = _checked_table(scored, bins, threshold, what)
    auc, average_precision, ks = _ranking(scored, positives, rows - positives)
    confusion = None
    if threshold is not None:
        confusion = Confusion(*(sum(int(r[c]) for r in table) for c in ("tn", "fp", "fn", "tp")))
    return PointMetrics(
        rows=rows,
        positives=positives,
        auc_roc=auc,
        auc_pr=average_precision,
        ks=ks,
        brier=_brier(table, rows),
        log_loss=_log_loss(table, rows),
        calibration_error=_calibration_error(table, rows),
        confusion=confusion,
    )


# --- the same figures of a slice small enough to hold on the driver (scikit-learn) --------------


def _checked_arrays(
    y: np.ndarray, probabilities: tuple[np.ndarray, ...], what: str
) -> tuple[np.ndarray, ...]:
    # The rows the Spark path bins as invalid: a label not 0/1, a score missing (NaN) or outside
    # [0, 1] (NaN compares false).
    arrays = tuple(np.asarray(a, dtype=np.float64) for a in (y, *probabilities))
    valid = np.isin(arrays[0], (0.0, 1.0))
    for a in arrays[1:]:
        valid &= (a >= 0.0) & (a <= 1.0)
    _refuse_bad_rows(int(np.sum(~valid)), arrays[0].size, int(np.sum(arrays[0] == 1.0)), what)
    return arrays


def driver_point_metrics(
    y: np.ndarray, p: np.ndarray, rank: np.ndarray, bins: int, threshold: float | None = None,
    what: str = "slice",
) -> PointMetrics:
    """`point_metrics` of a whole slice held on the driver, with scikit-learn's metrics."""
    y, p, rank = _checked_arrays(y, (p, rank), what)
    return PointMetrics(
        rows=int(y.size),
        positives=int(np.sum(y == 1.0)),
        auc_roc=auc_roc(y, rank),
        auc_pr=average_precision(y, rank),
        ks=ks_statistic(y, rank),
        brier=brier_score(y, p),
        log_loss=log_loss(y, p),
        calibration_error=expected_calibration_error(y, p, bins),
        confusion=None if threshold is None else confusion_at(y, p, threshold),
    )


def driver_probability_figures(
    y: np.ndarray, p: np.ndarray, bins: int, what: str = "slice"
) -> ProbabilityFigures:
    """`probability_figures` of a whole slice held on the driver."""
    y, p = _checked_arrays(y, (p,), what)
    return ProbabilityFigures(brier=brier_score(y, p), log_loss=log_loss(y, p),
                              calibration_error=expected_calibration_error(y, p, bins))
