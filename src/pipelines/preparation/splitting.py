"""Train/test splits with the same rows on every machine: stratified by label, or by issue date."""

from __future__ import annotations

from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from src.contracts import ValidationSlice
from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.utils.errors import DataError

# The top bits of the 64-bit hash bucket the rows: the k-th smallest hash of a class is found from
# bucket counts, then among the rows of one bucket (about n / 65536 of them) on the driver.
_BUCKET_SHIFT = 48


def _class_quota(rows: int, fraction: float) -> int:
    """round(rows * fraction), half up on the exact double value (what Spark's round does)."""
    return int(Decimal(rows * fraction).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _thresholds(
    scored: DataFrame, fraction: float
) -> dict[object, tuple[int, str] | None]:
    """Per label, the largest (hash, key) that goes to test; None where no row of it does.

    Exact, from the rows alone: bucket counts (parallel partial aggregation), then one bucket per
    label brought to the driver. No window over a whole class, so no single-task sort.
    """
    bucket = F.shiftright(F.col("_order"), _BUCKET_SHIFT)
    counts: dict[object, list[tuple[int, int]]] = {}
    for row in scored.groupBy(LABEL_COLUMN, bucket.alias("_bucket")).count().collect():
        counts.setdefault(row[LABEL_COLUMN], []).append((row["_bucket"], row["count"]))
    wanted: dict[object, tuple[int, int]] = {}  # label -> (bucket, rank inside the bucket)
    for label, buckets in counts.items():
        quota = _class_quota(sum(n for _, n in buckets), fraction)
        if quota == 0:
            continue
        before = 0
        for b, n in sorted(buckets):
            if before + n >= quota:
                wanted[label] = (b, quota - before)
                break
            before += n
    thresholds: dict[object, tuple[int, str] | None] = dict.fromkeys(counts)
    if not wanted:
        return thresholds
    in_bucket = F.lit(False)
    for label, (b, _) in wanted.items():
        in_bucket = in_bucket | ((F.col(LABEL_COLUMN) == F.lit(label)) & (bucket == F.lit(b)))
    candidates: dict[object, list[tuple[int, str]]] = {}
    for row in scored.filter(in_bucket).select(LABEL_COLUMN, "_order", KEY_COLUMN).collect():
        candidates.setdefault(row[LABEL_COLUMN], []).append((row["_order"], row[KEY_COLUMN]))
    for label, (_, rank) in wanted.items():
        thresholds[label] = sorted(candidates[label])[rank - 1]
    return thresholds


def split_stratified(
    loans: DataFrame, test_fraction: float, seed: int, salt: str = ""
) -> tuple[DataFrame, DataFrame]:
    """Exactly `test_fraction` of each label class to test, chosen by a seeded hash of the row key.

    A hash of the key, not rand(), so the choice depends on the rows alone, not on partitioning:
    test holds the round(fraction * n) rows of each class with the smallest (hash, key).
    """
    # `salt` gives an independent draw from the same seed (the validation slice of the train side).
    order = F.xxhash64(F.lit(f"{seed}{salt}"), F.col(KEY_COLUMN))
    scored = loans.withColumn("_order", order)
    is_test = F.lit(False)
    for label, last in _thresholds(scored, test_fraction).items():
        if last is None:
            continue
        t_order, t_key = last
        upto = (F.col("_order") < F.lit(t_order)) | (
            (F.col("_order") == F.lit(t_order)) & (F.col(KEY_COLUMN) <= F.lit(t_key))
        )
        is_test = is_test | ((F.col(LABEL_COLUMN) == F.lit(label)) & upto)
    marked = scored.withColumn("_is_test", is_test).drop("_order")
    return (
        marked.filter(~F.col("_is_test")).drop("_is_test"),
        marked.filter(F.col("_is_test")).drop("_is_test"),
    )


# Salted so the validation slice is not the continuation of the test split's hash order.
VALIDATION_SALT = ":validation"


ValidationMethod = Literal["time", "random"]


def split_fit_validation(
    train: DataFrame, fraction: float, seed: int, method: ValidationMethod
) -> tuple[DataFrame, DataFrame]:
    """The training split as (fit, validation): the slice every stage validates and tunes on.

    `time`: the latest whole issue months holding about `fraction` of the loans (out of time, as
    the model will score later loans); `random`: a seeded stratified slice.
    """
    if method == "random":
        return split_stratified(train, fraction, seed, salt=VALIDATION_SALT)
    if method != "time":
        raise ValueError(f"split_fit_validation: unknown method {method!r}")
    fit, validation, _ = split_by_time(train, fraction)
    return fit, validation


def recorded_fit_validation(
    train: DataFrame, recorded: ValidationSlice, fraction: float, seed: int
) -> tuple[DataFrame, DataFrame]:
    """The (fit, validation) parts train_sup used and recorded in its result: a time slice starts
    at its first issue month, so the months need not be counted again; a random one is redrawn."""
    if recorded.method == "time" and recorded.first_issue_d is not None:
        return _split_at(train, date.fromisoformat(recorded.first_issue_d))
    return split_fit_validation(train, fraction, seed, method=recorded.method)


def time_cutoff(loans: DataFrame, test_fraction: float) -> date:
    """First issue month of the latest months holding at least `test_fraction` of the loans."""
    months = loans.groupBy("issue_d").count().orderBy(F.col("issue_d").desc()).collect()
    total = sum(row["count"] for row in months)
    if len(months) < 2:
        raise DataError("split.method time needs loans from at least two issue months")
    taken = 0
    for row in months[:-1]:
        taken += row["count"]
        if taken >= test_fraction * total:
            return row["issue_d"]
    return months[-2]["issue_d"]


def split_by_time(loans: DataFrame, test_fraction: float) -> tuple[DataFrame, DataFrame, date]:
    """Train on loans issued before the cutoff month, test on the cutoff month and later."""
    cutoff = time_cutoff(loans, test_fraction)
    return *_split_at(loans, cutoff), cutoff


def _split_at(loans: DataFrame, cutoff: date) -> tuple[DataFrame, DataFrame]:
    earlier = F.col("issue_d") < F.lit(cutoff)
    return loans.filter(earlier), loans.filter(~earlier)


def side_summary(side: DataFrame) -> dict[str, object]:
    """Rows, defaults, default share and issue-date range of one side of a split."""
    row = side.agg(
        F.count(F.lit(1)).alias("rows"),
        F.coalesce(F.sum(LABEL_COLUMN), F.lit(0)).alias("defaults"),
        F.min("issue_d").alias("first"),
        F.max("issue_d").alias("last"),
    ).first()
    rows = int(row["rows"])
    defaults = int(row["defaults"])
    return {
        "rows": rows,
        "defaults": defaults,
        "default_share": round(defaults / rows, 6) if rows else 0.0,
        "first_issue_d": str(row["first"]) if row["first"] else None,
        "last_issue_d": str(row["last"]) if row["last"] else None,
    }
