"""split_fit_validation: the out-of-time slice (whole latest months) and the seeded random slice."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.pipelines.preparation.splitting import split_fit_validation
from src.utils.errors import DataError

# 12 months of 100 loans, every 5th a default.
MONTHS = [date(2011, m, 1) for m in range(1, 13)]


@pytest.fixture(scope="module")
def loans(spark: Any) -> Any:
    rows = [
        (f"{m.month:02d}-{i:03d}", int(i % 5 == 0), m) for m in MONTHS for i in range(100)
    ]
    return spark.createDataFrame(rows, [KEY_COLUMN, LABEL_COLUMN, "issue_d"])


def _months(df: Any) -> set[date]:
    return {r[0] for r in df.select("issue_d").distinct().collect()}


def test_time_slice_is_the_latest_whole_months(loans: Any) -> None:
    fit, validation = split_fit_validation(loans, 0.2, seed=1, method="time")
    # 20% of 1200 loans is 240: three whole months (300 loans), never a part of a month.
    assert _months(validation) == set(MONTHS[-3:])
    assert _months(fit) == set(MONTHS[:-3])
    assert validation.count() == 300 and fit.count() == 900
    # Reproducible: the seed plays no part.
    _, again = split_fit_validation(loans, 0.2, seed=2, method="time")
    assert sorted(again.collect()) == sorted(validation.collect())


def test_random_slice_is_seeded_and_stratified(loans: Any) -> None:
    fit, validation = split_fit_validation(loans, 0.2, seed=1, method="random")
    assert validation.count() == 240 and fit.count() == 960
    assert validation.filter(f"`{LABEL_COLUMN}` = 1").count() == 48
    assert len(_months(validation)) > 3
    _, again = split_fit_validation(loans, 0.2, seed=1, method="random")
    assert sorted(again.collect()) == sorted(validation.collect())
    _, other = split_fit_validation(loans, 0.2, seed=2, method="random")
    assert sorted(other.collect()) != sorted(validation.collect())


def test_time_slice_needs_two_months(loans: Any) -> None:
    one_month = loans.filter(loans.issue_d == MONTHS[0])
    with pytest.raises(DataError, match="two issue months"):
        split_fit_validation(one_month, 0.2, seed=1, method="time")


@pytest.mark.parametrize("method", ["time", "random"])
def test_the_recorded_slice_is_the_one_train_sup_drew(loans: Any, method: str) -> None:
    """evaluate and register take train_sup's recorded slice instead of counting months again."""
    from src.contracts import ValidationSlice
    from src.pipelines.preparation.splitting import recorded_fit_validation, side_summary

    fit, validation = split_fit_validation(loans, 0.2, seed=1, method=method)
    summary = side_summary(validation)
    recorded = ValidationSlice.model_validate(
        {"method": method, **{k: summary[k] for k in ValidationSlice.model_fields if k != "method"}}
    )
    if method == "time":
        assert recorded.first_issue_d == str(MONTHS[-3])
    again_fit, again = recorded_fit_validation(loans, recorded, 0.2, seed=1)
    assert sorted(again.collect()) == sorted(validation.collect())
    assert sorted(again_fit.collect()) == sorted(fit.collect())
