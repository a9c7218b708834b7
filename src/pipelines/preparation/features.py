"""Derived origination features a credit analyst expects, computed from parsed loan columns."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN


def _safe_ratio(numerator: Column, denominator: Column) -> Column:
    return F.when(denominator > 0, numerator / denominator)


def _sub_grade_ordinal() -> Column:
    # A1 → 1 … G5 → 35: LendingClub's own risk ladder as one number.
    letter = F.substring(F.col("sub_grade"), 1, 1)
    step = F.substring(F.col("sub_grade"), 2, 1).cast("int")
    return ((F.ascii(letter) - F.ascii(F.lit("A"))) * 5 + step).cast("double")


DERIVED: dict[str, Callable[[], Column]] = {
    "credit_history_months": lambda: F.round(
        F.months_between(F.col("issue_d"), F.col("earliest_cr_line"))
    ),
    "fico_mid": lambda: (F.col("fico_range_low") + F.col("fico_range_high")) / 2.0,
    "income_to_loan": lambda: _safe_ratio(F.col("annual_inc"), F.col("loan_amnt")),
    "installment_to_income": lambda: _safe_ratio(F.col("installment") * 12.0, F.col("annual_inc")),
    "sub_grade_ordinal": _sub_grade_ordinal,
}


def add_derived_features(loans: DataFrame, names: list[str]) -> DataFrame:
    """Add each derived feature in `names` as a double column."""
    return loans.withColumns({name: DERIVED[name]().cast("double") for name in names})


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
