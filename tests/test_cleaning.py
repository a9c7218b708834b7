"""Both raw formats, footers, open loans, rejects and derived features, on small DataFrames."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN, RAW_COLUMNS
from src.pipelines.preparation.cleaning import (
    REASON,
    REASONS,
    ROW_CLASS,
    classify_rows,
    read_raw,
)
from src.pipelines.preparation.features import model_table
from src.utils.config import load_config
from src.utils.errors import DataError
from tests.conftest import REPO

PREP = load_config(REPO / "params.yaml").prep

KAGGLE_ROW = {
    "id": "1077501",
    "loan_amnt": "5000",
    "term": " 36 months",
    "int_rate": "10.65",
    "installment": "162.87",
    "grade": "B",
    "sub_grade": "B2",
    "emp_length": "10+ years",
    "home_ownership": "RENT",
    "annual_inc": "24000.0",
    "verification_status": "Verified",
    "issue_d": "Dec-2011",
    "loan_status": "Fully Paid",
    "purpose": "credit_card",
    "addr_state": "AZ",
    "dti": "27.65",
    "earliest_cr_line": "Jan-1985",
    "revol_util": "83.7",
    "fico_range_low": "735",
    "fico_range_high": "739",
    "total_rec_prncp": "5000.0",
}
# The same loan as the 2007-2020Q3 export writes it.
EXPORT_ROW = {**KAGGLE_ROW, "int_rate": "10.65%", "revol_util": "83.7%", "id": "1077502"}


def frame(spark, rows: list[dict[str, Any]]):
    schema = StructType([StructField(c, StringType()) for c in RAW_COLUMNS])
    return spark.createDataFrame([tuple(r.get(c) for c in RAW_COLUMNS) for r in rows], schema)


def classify(spark, rows):
    out = classify_rows(
        frame(spark, rows), PREP.numeric, PREP.categorical, PREP.dates, PREP.required
    )
    return out.collect()


def test_both_raw_formats_parse_the_same(spark) -> None:
    a, b = classify(spark, [KAGGLE_ROW, EXPORT_ROW])
    for row in (a, b):
        assert row[ROW_CLASS] == "kept"
        assert row["int_rate"] == pytest.approx(10.65)
        assert row["revol_util"] == pytest.approx(83.7)
        assert row["term"] == 36.0
        assert row["emp_length"] == 10.0
        assert row["issue_d"] == dt.date(2011, 12, 1)
        assert row["earliest_cr_line"] == dt.date(1985, 1, 1)
        assert row[LABEL_COLUMN] == 0
    assert a[KEY_COLUMN] == "id:1077501"


@pytest.mark.parametrize(
    ("raw", "years"),
    [
        ("10+ years", 10.0),
        ("< 1 year", 0.0),
        ("1 year", 1.0),
        ("3 years", 3.0),
        ("n/a", None),
        ("", None),
    ],
)
def test_emp_length(spark, raw: str, years: float | None) -> None:
    (row,) = classify(spark, [{**KAGGLE_ROW, "emp_length": raw}])
    assert row[ROW_CLASS] == "kept"
    assert row["emp_length"] == years


def test_labels_footers_open_loans_and_rejects(spark) -> None:
    rows = [
        {**KAGGLE_ROW, "loan_status": "Charged Off"},
        {**KAGGLE_ROW, "loan_status": "Does not meet the credit policy. Status:Charged Off"},
        {**KAGGLE_ROW, "loan_status": "Does not meet the credit policy. Status:Fully Paid"},
        {**KAGGLE_ROW, "loan_status": "Current"},
        {**KAGGLE_ROW, "loan_status": "Late (31-120 days)"},
        {"id": "Total amount funded in policy code 1: 1465324575"},
        {**KAGGLE_ROW, "int_rate": "abc"},
        {**KAGGLE_ROW, "issue_d": "someday"},
        {**KAGGLE_ROW, "sub_grade": ""},
        {**KAGGLE_ROW, "loan_status": "Sold"},
    ]
    out = classify(spark, rows)
    assert [r[ROW_CLASS] for r in out] == [
        "kept",
        "kept",
        "kept",
        "unresolved",
        "unresolved",
        "footer",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
    ]
    assert [r[LABEL_COLUMN] for r in out[:3]] == [1, 1, 0]
    assert out[6][REASON] == (
        "int_rate: cannot parse as a percentage such as 13.49 or 13.49%: 'abc'"
    )
    assert out[7][REASON] == "issue_d: cannot parse as a month such as Dec-2011: 'someday'"
    assert out[8][REASON] == "sub_grade: required"
    assert out[9][REASON] == "loan_status: unknown status: 'Sold'"


IMPLAUSIBLE = [
    ({"term": "99"}, "term: must be 36 or 60 months: '99'"),
    ({"term": "-36"}, "term: must be 36 or 60 months: '-36'"),
    ({"int_rate": "250"}, "int_rate: must be a percentage between 0 and 100: '250'"),
    ({"loan_amnt": "1e400"}, "loan_amnt: must be a finite number: '1e400'"),
    ({"loan_amnt": "-1e400"}, "loan_amnt: must be a finite number: '-1e400'"),
    ({"fico_range_low": "200"}, "fico_range_low: must be on the FICO scale, 300 to 850: '200'"),
    ({"dti": "-1"}, "dti: must be between 0 and 999: '-1'"),
    ({"emp_length": "15 years"}, "emp_length: must be from 0 to 10 years (10+ years): '15 years'"),
    ({"sub_grade": "C2"}, "sub_grade: not within grade"),
    ({"earliest_cr_line": "Jan-2012"}, "earliest_cr_line: is after the issue month"),
]


def test_implausible_values_are_quarantined_with_the_reason(spark) -> None:
    out = classify(spark, [{**KAGGLE_ROW, **change} for change, _ in IMPLAUSIBLE])
    assert [r[ROW_CLASS] for r in out] == ["rejected"] * len(IMPLAUSIBLE)
    assert [r[REASON] for r in out] == [reason for _, reason in IMPLAUSIBLE]


def test_every_broken_field_is_named(spark) -> None:
    blank = {"loan_amnt": "", "term": "", "int_rate": "n/a", "grade": "", "sub_grade": " "}
    (row,) = classify(spark, [{**KAGGLE_ROW, **blank, "loan_status": "Sold"}])
    assert row[ROW_CLASS] == "rejected"
    assert list(row[REASONS]) == [
        "loan_amnt: required", "term: required", "int_rate: required", "grade: required",
        "sub_grade: required", "loan_status: unknown status: 'Sold'",
    ]


def test_missing_id_gets_a_stable_hash_key(spark) -> None:
    row = {**KAGGLE_ROW, "id": ""}
    first, second, other = classify(spark, [row, row, {**row, "loan_amnt": "5001"}])
    assert first[KEY_COLUMN].startswith("h:")
    assert first[KEY_COLUMN] == second[KEY_COLUMN] != other[KEY_COLUMN]


def test_model_table_has_derived_features_and_no_leaky_column(spark) -> None:
    classified = classify_rows(
        frame(spark, [KAGGLE_ROW, {**KAGGLE_ROW, "fico_range_low": "", "fico_range_high": ""}]),
        PREP.numeric,
        PREP.categorical,
        PREP.dates,
        PREP.required,
    )
    table = model_table(classified, PREP.numeric, PREP.categorical, PREP.derived)
    assert "total_rec_prncp" not in table.columns
    assert set(table.columns) == {KEY_COLUMN, "issue_d", LABEL_COLUMN, *PREP.feature_columns}
    full, no_fico = table.orderBy(F.col("fico_mid").asc_nulls_last()).collect()
    assert full["fico_mid"] == 737.0 and no_fico["fico_mid"] is None
    assert full["credit_history_months"] == 323.0  # Jan-1985 → Dec-2011
    assert full["income_to_loan"] == pytest.approx(24000 / 5000)
    assert full["installment_to_income"] == pytest.approx(162.87 * 12 / 24000)
    assert full["sub_grade_ordinal"] == 7.0  # B2


def test_read_raw_rejects_a_file_that_is_not_a_loan_file(spark, tmp_path) -> None:
    bad = tmp_path / "other.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(DataError, match=r"other\.csv: not a LendingClub loan file"):
        read_raw(spark, bad, multiline=True)


def test_classification_runs_without_whole_stage_codegen_and_the_setting_comes_back(spark) -> None:
    """prep and score plan the classification without whole-stage codegen (its generated method
    outgrows 64 KB); the rows are the same, and the session's setting is restored after the block,
    also when the block fails."""
    from src.utils.spark import WHOLE_STAGE_CODEGEN, whole_stage_codegen_off

    before = spark.conf.get(WHOLE_STAGE_CODEGEN)
    with whole_stage_codegen_off(spark):
        classified = classify_rows(
            frame(spark, [KAGGLE_ROW, EXPORT_ROW]), PREP.numeric, PREP.categorical, PREP.dates,
            PREP.required,
        )
        plan = classified._jdf.queryExecution().executedPlan().toString()
        rows = classified.collect()
    assert "WholeStageCodegen" not in plan and "*(" not in plan, plan
    assert rows == classify(spark, [KAGGLE_ROW, EXPORT_ROW])
    assert spark.conf.get(WHOLE_STAGE_CODEGEN) == before
    with pytest.raises(RuntimeError), whole_stage_codegen_off(spark):
        raise RuntimeError("a failing stage")
    assert spark.conf.get(WHOLE_STAGE_CODEGEN) == before
