"""Train/test splits with the same rows on every machine: stratified by label, or by issue date."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.utils.errors import DataError


def split_stratified(
    loans: DataFrame, test_fraction: float, seed: int, salt: str = ""
) -> tuple[DataFrame, DataFrame]:
    """Exactly `test_fraction` of each label class to test, chosen by a seeded hash of the row key.

    A hash of the key, not rand(), so the choice depends on the rows alone, not on partitioning.
    """
    # `salt` gives an independent draw from the same seed (the validation slice of the train side).
    order = F.xxhash64(F.lit(f"{seed}{salt}"), F.col(KEY_COLUMN))
    by_label = Window.partitionBy(LABEL_COLUMN)
    ranked = loans.withColumns(
        {
            "_rank": F.row_number().over(by_label.orderBy(order, F.col(KEY_COLUMN))),
            "_class_rows": F.count(F.lit(1)).over(by_label),
        }
    )
    is_test = F.col("_rank") <= F.round(F.col("_class_rows") * test_fraction)
    ranked = ranked.withColumn("_is_test", is_test).drop("_rank", "_class_rows")
    return (
        ranked.filter(~F.col("_is_test")).drop("_is_test"),
        ranked.filter(F.col("_is_test")).drop("_is_test"),
    )


# Salted so the validation slice is not the continuation of the test split's hash order.
VALIDATION_SALT = ":validation"


ValidationMethod = Literal["time", "random"]


def split_fit_validation(
    train: DataFrame, fraction: float, seed: int, method: ValidationMethod = "time"
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
    earlier = F.col("issue_d") < F.lit(cutoff)
    return loans.filter(earlier), loans.filter(~earlier), cutoff


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
