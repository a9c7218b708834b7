"""Derived origination features, as the Spark expressions of the table in `src/core/loan.py`."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from src.core.loan import DERIVED, MONTHS_PER_YEAR, SUB_GRADE, SUB_GRADE_STEPS, Derived
from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN


def _spark_op(spec: Derived) -> Column:
    """The Spark expression of one derived feature of the table (loan._derive_one's twin)."""
    args = [F.col(name) for name in spec.inputs]
    if spec.op == "months_between":
        later, earlier = args
        return (F.year(later) - F.year(earlier)) * MONTHS_PER_YEAR + (
            F.month(later) - F.month(earlier)
        )
    if spec.op == "mean":
        return (args[0] + args[1]) / 2.0
    if spec.op == "ratio":
        numerator, denominator = args
        return F.when(denominator > 0, numerator * spec.scale / denominator)
    # A1 → 1 … G5 → 35: LendingClub's own risk ladder as one number.
    sub_grade = args[0]
    letter = F.substring(sub_grade, 1, 1)
    step = F.substring(sub_grade, 2, 1).try_cast("int")
    return F.when(
        sub_grade.rlike(f"^(?:{SUB_GRADE.pattern})\\z"),
        (F.ascii(letter) - F.ascii(F.lit("A"))) * SUB_GRADE_STEPS + step,
    )


def add_derived_features(loans: DataFrame, names: list[str]) -> DataFrame:
    """Add each derived feature in `names` as a double column."""
    return loans.withColumns({name: _spark_op(DERIVED[name]).cast("double") for name in names})


def model_table(
    loans: DataFrame, numeric: list[str], categorical: list[str], derived: list[str]
) -> DataFrame:
    """The processed table: key, issue date, label and the allowlisted features, nothing else."""
    with_derived = add_derived_features(loans, derived)
    return with_derived.select(
        KEY_COLUMN,
        "issue_d",
        LABEL_COLUMN,
        *[F.col(c).cast("double").alias(c) for c in numeric],
        *categorical,
        *derived,
    )
