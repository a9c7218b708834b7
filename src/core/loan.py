"""A loan application as copied from a LendingClub file → parsed values → derived features.

Pure Python, no Spark: every parser mirrors its Spark twin in
`src/pipelines/preparation/cleaning.py` and every derived feature its twin in
`src/pipelines/preparation/features.py`, bit for bit, so the served model sees the numbers it was
trained on (`tests/test_serving_parity.py` proves it on every loan of a test split).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

# Same pattern as cleaning._NUMBER. Spark's `\s` is Java's ASCII whitespace; spelled out here
# because Python's `\s` also matches Unicode spaces.
_JAVA_SPACE = r"[ \t\n\x0b\f\r]"
_NUMBER = re.compile(rf"^(-?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?){_JAVA_SPACE}*(?:%|months?)?$")
_EMP_YEARS = re.compile(rf"^([0-9]+)\+?{_JAVA_SPACE}*years?$")
_EMP_UNDER_ONE = re.compile(rf"^<{_JAVA_SPACE}*1{_JAVA_SPACE}*years?$")
SUB_GRADE = re.compile(r"^[A-G][1-5]$")
GRADES = "ABCDEFG"
SUB_GRADE_STEPS = 5
# Spark's `dd-MMM-yyyy` parser is case-insensitive and takes English month abbreviations.
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
_LC_MONTH = re.compile(r"^([A-Za-z]{3})-([0-9]{4})$")
# A convenience for API users, not in LendingClub files: ISO `2011-12`.
_ISO_MONTH = re.compile(r"^([0-9]{4})-([0-9]{2})$")
MONTHS_PER_YEAR = 12
# A working life: an employment length given as a bare number beyond this is refused.
MAX_YEARS = 100


class ParseError(ValueError):
    """A raw value that does not parse; the message says what was expected."""


def blank_to_null(value: str) -> str | None:
    """As cleaning._blank_to_null: trimmed text, None for empty or "n/a" (any case)."""
    # Spark's trim() strips only the space character.
    trimmed = value.strip(" ")
    return None if trimmed == "" or trimmed.lower() == "n/a" else trimmed


def parse_number(value: object) -> float | None:
    """`13.49`, `"13.49%"`, `" 36 months"` → float, as cleaning.parse_number; blank → None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ParseError("expected a number or a numeric string such as 13.49 or \"13.49%\"")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # a JSON integer with hundreds of digits
            raise ParseError("number out of range") from None
        if not math.isfinite(number):
            raise ParseError("expected a finite number")
        return number
    text = blank_to_null(value)
    if text is None:
        return None
    match = _NUMBER.match(text)
    if match is None:
        raise ParseError(
            f"cannot parse {value!r} as a number (e.g. 13.49, \"13.49%\", \" 36 months\")"
        )
    number = float(match.group(1))
    if not math.isfinite(number):
        raise ParseError(f"{value!r} is out of range")
    return number


def parse_emp_length(value: object) -> float | None:
    """`"10+ years"` → 10, `"< 1 year"` → 0, `"3 years"` → 3, `"n/a"`/empty → None."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_YEARS:
        # A bare number of years is unambiguous; the files always write text.
        return float(value)
    if not isinstance(value, str):
        raise ParseError(
            "expected LendingClub text such as \"10+ years\", \"< 1 year\", \"3 years\""
        )
    text = blank_to_null(value)
    if text is None:
        return None
    lowered = text.lower()
    if _EMP_UNDER_ONE.match(lowered):
        return 0.0
    match = _EMP_YEARS.match(lowered)
    if match is None:
        raise ParseError(
            f"cannot parse {value!r} as an employment length "
            "(\"10+ years\", \"< 1 year\", \"3 years\")"
        )
    return float(match.group(1))


def parse_month(value: object) -> date | None:
    """`"Dec-2011"` (or ISO `"2011-12"`) → the first day of that month; blank → None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParseError("expected a month such as \"Dec-2011\"")
    text = blank_to_null(value)
    if text is None:
        return None
    lc = _LC_MONTH.match(text)
    iso = _ISO_MONTH.match(text)
    year, month = (
        (int(lc.group(2)), _MONTHS.get(lc.group(1).lower(), 0)) if lc
        else (int(iso.group(1)), int(iso.group(2))) if iso
        else (0, 0)
    )
    if not 1 <= month <= MONTHS_PER_YEAR or year < 1:
        raise ParseError(f"cannot parse {value!r} as a month such as \"Dec-2011\"")
    return date(year, month, 1)


def check_text(value: str) -> str:
    """`value` unchanged if it is valid Unicode (JSON lets a lone surrogate through)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ParseError("not valid Unicode text") from None
    return value


def parse_category(value: object) -> str | None:
    """Trimmed text, None for empty or "n/a" (as cleaning._blank_to_null)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParseError("expected text")
    return blank_to_null(check_text(value))


def current_month() -> date:
    """First day of the current month (UTC): the issue date of an application made today."""
    today = datetime.now(UTC).date()
    return date(today.year, today.month, 1)


# --- derived features (features.py) --------------------------------------------------------------


def months_between(later: date, earlier: date) -> float:
    """Spark's months_between for two first-of-month dates: a whole number of months."""
    return float((later.year - earlier.year) * MONTHS_PER_YEAR + (later.month - earlier.month))


def sub_grade_ordinal(sub_grade: str) -> float:
    """A1 → 1 … G5 → 35, as features._sub_grade_ordinal."""
    return float((ord(sub_grade[0]) - ord("A")) * SUB_GRADE_STEPS + int(sub_grade[1]))


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    # features._safe_ratio: null unless the denominator is positive.
    if numerator is None or denominator is None or not denominator > 0:
        return None
    return numerator / denominator


def derive(values: Mapping[str, object], names: Sequence[str]) -> dict[str, float | None]:
    """The derived features `names` of parsed `values` (None where an input is missing)."""
    v = values

    def num(name: str) -> float | None:
        x = v.get(name)
        return float(x) if isinstance(x, int | float) else None

    out: dict[str, float | None] = {}
    for name in names:
        if name == "credit_history_months":
            issue, earliest = v.get("issue_d"), v.get("earliest_cr_line")
            out[name] = (
                months_between(issue, earliest)
                if isinstance(issue, date) and isinstance(earliest, date)
                else None
            )
        elif name == "fico_mid":
            low, high = num("fico_range_low"), num("fico_range_high")
            out[name] = None if low is None or high is None else (low + high) / 2.0
        elif name == "income_to_loan":
            out[name] = _ratio(num("annual_inc"), num("loan_amnt"))
        elif name == "installment_to_income":
            installment = num("installment")
            out[name] = _ratio(
                None if installment is None else installment * 12.0, num("annual_inc")
            )
        elif name == "sub_grade_ordinal":
            sub_grade = v.get("sub_grade")
            out[name] = (
                sub_grade_ordinal(sub_grade)
                if isinstance(sub_grade, str) and SUB_GRADE.match(sub_grade)
                else None
            )
        else:
            raise KeyError(f"unknown derived feature '{name}'")
    return out


@dataclass(frozen=True)
class ParsedApplication:
    """One application after parsing: model inputs by name (numbers, categories, derived)."""

    id: str | None
    values: dict[str, object]

    def vector(self, names: Sequence[str]) -> list[float]:
        """Values of `names` as floats, NaN where missing (the segmentation's row layout)."""
        row = []
        for name in names:
            x = self.values.get(name)
            row.append(float(x) if isinstance(x, int | float) else math.nan)
        return row
