"""Property: the Spark parsers and rules (prep, batch scoring) equal the Python ones (the API).

Hypothesis draws raw values as they appear in the files (and garbage); every example goes through
`loan.judge` in Python, and all of them through `classify_rows` + `add_derived_features` in one
Spark DataFrame. Values, derived features, rejections and reason texts must be identical.
"""

from __future__ import annotations

import math
from datetime import date
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql.types import StringType, StructField, StructType

from src.core.loan import DERIVED, LOAN_COLUMNS, MONTH_NAMES, derive, judge
from src.core.raw_schema import RAW_COLUMNS
from src.pipelines.preparation.cleaning import REASONS, ROW_CLASS, classify_rows
from src.pipelines.preparation.features import add_derived_features
from src.utils.config import load_config
from tests.conftest import REPO

PREP = load_config(REPO / "params.yaml").prep
COLUMNS = PREP.application_columns
EXAMPLES = 1500

FILE_LIKE = [
    "", " ", "  ", "n/a", "N/A", "n/A", "na", "null", "NaN", "nan", "inf", "-inf", "Infinity",
    "1e400", "-1e400", "1e-400", "1e3", "0", "-0", "0.0", "1.", "-36", "36", "60", "99",
    " 36 months", " 60 months", "36 months", "36 Months", "36month", "36\tmonths", "48 months",
    "13.49", "13.49%", "13.49 %", "250", "250%", "-3%", "100", "100.0%", "5000", "35000.0",
    "10+ years", "< 1 year", "<1 year", "1 year", "3 years", "10 years", "11 years", "10+ Years",
    "a decade", "Dec-2011", "dec-2011", "DEC-2011", "Sep-1993", "Jan-2012", "2011-12", "Dec-11",
    "Dec-0000", "Dec-1899", "Jan-1900", "Dec-2100", "Jan-2101", "Smr-1993", "A", "B", "D", "G",
    "H", "a", "B3", "D3", "D7", "A0", "G5", " D ", "RENT", "MORTGAGE", "Not Verified", "CA",
    "debt_consolidation", "x" * 201, "1,000", "$5000", "5e", "--5", "+5", "5.5.5", "１２",
    "\u00a012", "12\u2028", "36\n", "\t36", "0x10", "٣", "′",
]


def _numbers() -> st.SearchStrategy[str]:
    floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
    ints = st.integers(min_value=-(10**30), max_value=10**30)
    number = st.one_of(floats.map(repr), floats.map(str), ints.map(str))
    suffix = st.sampled_from(["", "", "%", " %", " months", "months", " month", " years", "e5"])
    return st.builds(lambda n, s: n + s, number, suffix)


def _months() -> st.SearchStrategy[str]:
    name = st.sampled_from([*MONTH_NAMES, "Jan", "DEC", "Sept", "xyz", ""])
    year = st.integers(min_value=0, max_value=9999).map(lambda y: f"{y:04d}")
    return st.builds(lambda m, y: f"{m}-{y}", name, year)


def _emp_lengths() -> st.SearchStrategy[str]:
    years = st.integers(min_value=0, max_value=10**6)
    return st.one_of(
        st.builds(lambda n, plus, unit: f"{n}{plus} {unit}", years, st.sampled_from(["", "+"]),
                  st.sampled_from(["years", "year", "Years", "yrs"])),
        st.sampled_from(["< 1 year", "<1 years", "< 2 year"]),
    )


RAW_VALUE = st.one_of(
    st.none(),
    st.sampled_from(FILE_LIKE),
    _numbers(),
    _months(),
    _emp_lengths(),
    st.text(max_size=12),
    st.builds(
        lambda pad, v: pad + v + pad, st.sampled_from([" ", "  "]), st.sampled_from(FILE_LIKE)
    ),
)
# Mostly plausible rows, so that cross-field rules and derived features get exercised too.
PLAUSIBLE = {
    "loan_amnt": st.sampled_from(["5000", "1e4", "35000.0", "0.01"]),
    "term": st.sampled_from([" 36 months", "60", " 60 months"]),
    "int_rate": st.sampled_from(["13.49%", "7.5", "0", "100"]),
    "grade": st.sampled_from(["A", "B", "D"]),
    "sub_grade": st.sampled_from(["A1", "B3", "D2", "A5"]),
    "issue_d": st.sampled_from(["Dec-2011", "jan-2007", "Jun-2016"]),
    "earliest_cr_line": st.sampled_from(["Sep-1993", "Dec-2011", "Jan-2012", "Jan-1900", ""]),
    "fico_range_low": st.sampled_from(["700", "720", "300", ""]),
    "fico_range_high": st.sampled_from(["704", "700", "850", ""]),
    "annual_inc": st.sampled_from(["0", "24000.0", "", "1e400"]),
    "installment": st.sampled_from(["162.87", "0", ""]),
}


# Any other column: a value of the real sample, or blank.
OTHER_PLAUSIBLE = st.sampled_from(["0", "1", "17", "38.2%", "10+ years", "< 1 year", "RENT", ""])


@st.composite
def raw_rows(draw: Any) -> dict[str, str | None]:
    """A plausible loan with a few (or many) fields replaced by anything."""
    row = {name: draw(PLAUSIBLE.get(name, OTHER_PLAUSIBLE)) for name in COLUMNS}
    for name in COLUMNS:
        if name == "emp_length":
            row[name] = draw(st.sampled_from(["10+ years", "< 1 year", "3 years", "n/a", ""]))
        elif name in ("home_ownership", "verification_status", "purpose", "addr_state"):
            row[name] = draw(st.sampled_from(["RENT", "Verified", "credit_card", "CA", ""]))
    replaced = draw(st.lists(st.sampled_from(COLUMNS), max_size=len(COLUMNS), unique=True))
    for name in replaced[: draw(st.sampled_from([0, 1, 1, 2, 3, len(COLUMNS)]))]:
        row[name] = draw(RAW_VALUE)
    return row


def _collect() -> list[dict[str, str | None]]:
    examples: list[dict[str, str | None]] = []

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(raw_rows())
    def draw(row: dict[str, str | None]) -> None:
        examples.append(row)

    draw()
    return examples


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def test_spark_and_python_judge_every_raw_value_alike(spark) -> None:
    examples = _collect()
    assert len(examples) > EXAMPLES // 2
    rows = [
        {**ex, "id": str(n), "loan_status": "Fully Paid"} for n, ex in enumerate(examples)
    ]
    schema = StructType([StructField(c, StringType()) for c in RAW_COLUMNS])
    frame = spark.createDataFrame([tuple(r.get(c) for c in RAW_COLUMNS) for r in rows], schema)
    classified = classify_rows(frame, PREP.numeric, PREP.categorical, PREP.dates, PREP.required)
    derived = list(DERIVED)
    out = add_derived_features(classified, derived).select(
        "loan_key", ROW_CLASS, REASONS, *COLUMNS, *derived
    ).collect()
    by_key = {r["loan_key"]: r for r in out}
    assert len(by_key) == len(rows)

    mismatches = []
    rejected = 0
    for n, example in enumerate(examples):
        spark_row = by_key[f"id:{n}"]
        py = judge(example, COLUMNS, PREP.required)
        spark_reasons = list(spark_row[REASONS] or [])
        rejected += bool(py.reasons)
        if spark_reasons != py.reasons or spark_row[ROW_CLASS] != (
            "rejected" if py.reasons else "kept"
        ):
            mismatches.append((example, py.reasons, spark_reasons))
            continue
        py_values = {**py.values, **derive(py.values, derived)}
        # A refused field has no value in Python (Spark keeps what it parsed), and features
        # are derived for kept loans only.
        for name in [*COLUMNS, *(derived if not py.reasons else [])]:
            if any(r.startswith(f"{name}: ") for r in py.reasons):
                continue
            if not _same(py_values[name], spark_row[name]):
                mismatches.append((example, name, py_values[name], spark_row[name]))
    assert mismatches == [], mismatches[:5]
    # The draw is varied enough to mean something: both outcomes, many reasons.
    assert 0 < rejected < len(examples)


def test_the_table_covers_the_allowlist_and_its_required_columns() -> None:
    assert set(COLUMNS) <= set(LOAN_COLUMNS)
    assert {c for c in COLUMNS if LOAN_COLUMNS[c].required} == set(PREP.required)
    assert all(LOAN_COLUMNS[c].group == "dates" for c in PREP.dates)
    assert LOAN_COLUMNS["issue_d"].required and date(2011, 12, 1)


def test_an_allowlisted_column_must_be_in_the_table_under_its_kind(tmp_path) -> None:
    from src.utils.config import load_config as load
    from src.utils.errors import ConfigError
    from tests.conftest import write_params

    numeric = [*PREP.numeric, "funded_amnt"]
    with pytest.raises(ConfigError, match="'funded_amnt' has no entry in the loan table"):
        load(write_params(tmp_path / "a", {"prep": {"numeric": numeric}}))
    categorical = [c for c in PREP.categorical if c != "grade"]
    with pytest.raises(ConfigError, match="'grade' is a category column: list it under"):
        overrides = {"numeric": [*PREP.numeric, "grade"], "categorical": categorical}
        load(write_params(tmp_path / "b", {"prep": overrides}))
