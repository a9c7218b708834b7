"""One definition of a loan: every raw column prep reads, its grammar, its rules, derived features.

Pure Python, no Spark. The table below is the single source: serving validates with the functions
of this module, and prep and batch scoring build their Spark expressions from the same table
(`src/pipelines/preparation/cleaning.py`, `features.py`). `tests/test_loan_property.py` feeds
random raw values through both and requires identical values, rejections and reason texts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Literal

# --- grammar of raw text -------------------------------------------------------------------------
# Patterns are matched against the whole trimmed text (Python `re.fullmatch`, Spark `^(?:p)\z`), and
# use only constructs Java and Python regexes read alike: ASCII classes, no `\s`, `\d`, `.`, `$`
# or case folding (Python folds Unicode, Java ASCII).

WS = r"[ \t\n\x0B\f\r]"
NUMBER = r"(-?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"
# LendingClub writes "n/a" where a value is unknown (emp_length, mostly).
BLANK = r"[Nn]/[Aa]"

Kind = Literal["number", "percent", "term", "emp_length", "month", "category"]
NUMERIC_KINDS: frozenset[str] = frozenset({"number", "percent", "term", "emp_length"})
PATTERNS: dict[str, str] = {
    "number": NUMBER,
    "percent": rf"{NUMBER}(?:{WS}*%)?",
    "term": rf"{NUMBER}(?:{WS}*[Mm][Oo][Nn][Tt][Hh][Ss]?)?",
    # group 1: "<" of "< 1 year"; group 2: the years of "3 years" / "10+ years"
    "emp_length": rf"(?:(<){WS}*1|([0-9]+)\+?){WS}*[Yy][Ee][Aa][Rr][Ss]?",
    # group 1: English month abbreviation (any case), group 2: year
    "month": r"([A-Za-z]{3})-([0-9]{4})",
}
EXPECTED: dict[str, str] = {
    "number": "a number such as 5000 or 13.49",
    "percent": "a percentage such as 13.49 or 13.49%",
    "term": "a term such as 36 or 36 months",
    "emp_length": "an employment length such as 10+ years, < 1 year or 3 years",
    "month": "a month such as Dec-2011",
    "category": "text",
}
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
MONTHS_PER_YEAR = 12
# Raw text quoted in a reason is cut to this many characters.
SHOWN_CHARS = 40
# A reason is "<field>: <problem>" or "<field>: <problem>: '<raw text>'"; the part before
# VALUE_MARK is its kind, what reports count.
VALUE_MARK = ": '"
REQUIRED_MESSAGE = "required"
FINITE_MESSAGE = "must be a finite number"
GRADES = "ABCDEFG"
SUB_GRADE = re.compile(r"[A-G][1-5]")
SUB_GRADE_STEPS = 5


# --- rules ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finite:
    """A number that is neither infinite nor NaN ("1e400" overflows to infinity)."""

    message: str = FINITE_MESSAGE


@dataclass(frozen=True)
class Between:
    """A number within [low, high] (`low_open`: strictly above low); infinite bounds are absent."""

    message: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False


@dataclass(frozen=True)
class OneOf:
    """A number equal to one of `values`."""

    message: str
    values: tuple[float, ...]


@dataclass(frozen=True)
class Matches:
    """Text matching `pattern` as a whole."""

    message: str
    pattern: str


@dataclass(frozen=True)
class MaxChars:
    """Text of at most `limit` characters."""

    message: str
    limit: int


@dataclass(frozen=True)
class MonthWithin:
    """A month from `first` to `last`."""

    message: str
    first: date
    last: date


Rule = Finite | Between | OneOf | Matches | MaxChars | MonthWithin


@dataclass(frozen=True)
class NotAbove:
    """`field` must not exceed `other` (both present); the reason names `field`."""

    field: str
    other: str
    message: str


@dataclass(frozen=True)
class SameLetter:
    """`field` must start with the letter of `other` (a sub-grade within its grade)."""

    field: str
    other: str
    message: str


CrossRule = NotAbove | SameLetter


@dataclass(frozen=True)
class LoanColumn:
    """One raw column: how its text parses (`kind`), whether a loan needs it, what is plausible."""

    name: str
    kind: Kind
    doc: str
    required: bool = False
    rules: tuple[Rule, ...] = field(default=())

    @property
    def group(self) -> Literal["numeric", "categorical", "dates"]:
        """The allowlist of params.yaml (`prep.numeric`, ...) the column belongs in."""
        if self.kind in NUMERIC_KINDS:
            return "numeric"
        return "dates" if self.kind == "month" else "categorical"

    def checks(self) -> tuple[Rule, ...]:
        """Rules in the order they are tried; numbers are first checked to be finite."""
        finite = (Finite(),) if self.group == "numeric" else ()
        return (*finite, *self.rules)


# Domain facts, not tunables.
_POSITIVE = Between("must be positive", low=0.0, low_open=True)
_NON_NEGATIVE = Between("cannot be negative", low=0.0)
_FICO = Between("must be on the FICO scale, 300 to 850", low=300.0, high=850.0)
# LendingClub's own range for months is 1900s onwards; anything outside is a typo or garbage.
_MONTH = MonthWithin(
    "must be a month from Jan-1900 to Dec-2100", date(1900, 1, 1), date(2100, 12, 1)
)
# Longest category text accepted: LendingClub's longest level is a few dozen characters.
MAX_CATEGORY_CHARS = 200
_TEXT = MaxChars(f"is longer than {MAX_CATEGORY_CHARS} characters", MAX_CATEGORY_CHARS)

LOAN_COLUMNS: dict[str, LoanColumn] = {
    c.name: c
    for c in (
        LoanColumn("loan_amnt", "number", "amount applied for, USD (> 0)", True, (_POSITIVE,)),
        LoanColumn(
            "term", "term", "36 or 60 months; `36` or LendingClub's `\" 36 months\"`", True,
            (OneOf("must be 36 or 60 months", (36.0, 60.0)),),
        ),
        LoanColumn(
            "int_rate", "percent", "interest rate, percent (0–100); `13.49` or `\"13.49%\"`", True,
            (Between("must be a percentage between 0 and 100", low=0.0, high=100.0),),
        ),
        LoanColumn("installment", "number", "monthly payment, USD (≥ 0)", rules=(_NON_NEGATIVE,)),
        LoanColumn(
            "annual_inc", "number", "self-reported annual income, USD (≥ 0)", rules=(_NON_NEGATIVE,)
        ),
        # The Kaggle file holds a few -1 and 999 values; beyond them a ratio is garbage.
        LoanColumn(
            "dti", "number", "debt-to-income ratio, percent (0–999)",
            rules=(Between("must be between 0 and 999", low=0.0, high=999.0),),
        ),
        LoanColumn(
            "delinq_2yrs", "number", "30+ days delinquencies in the past 2 years",
            rules=(_NON_NEGATIVE,),
        ),
        LoanColumn(
            "inq_last_6mths", "number", "credit inquiries in the past 6 months",
            rules=(_NON_NEGATIVE,),
        ),
        LoanColumn("open_acc", "number", "open credit lines", rules=(_NON_NEGATIVE,)),
        LoanColumn("pub_rec", "number", "derogatory public records", rules=(_NON_NEGATIVE,)),
        LoanColumn("revol_bal", "number", "revolving balance, USD", rules=(_NON_NEGATIVE,)),
        # Utilization above 100% is real (balances over the limit: 119 in the 2007–2011 sample).
        LoanColumn(
            "revol_util", "percent", "revolving line utilization, percent; `29.7` or `\"29.7%\"`",
            rules=(_NON_NEGATIVE,),
        ),
        LoanColumn("total_acc", "number", "credit lines ever", rules=(_NON_NEGATIVE,)),
        LoanColumn("fico_range_low", "number", "FICO range, low end (300–850)", rules=(_FICO,)),
        LoanColumn("fico_range_high", "number", "FICO range, high end (300–850)", rules=(_FICO,)),
        LoanColumn(
            "emp_length", "emp_length",
            "employment length: `\"10+ years\"`, `\"< 1 year\"`, `\"3 years\"`, `\"n/a\"`",
            rules=(Between("must be from 0 to 10 years (10+ years)", low=0.0, high=10.0),),
        ),
        LoanColumn(
            "pub_rec_bankruptcies", "number", "public record bankruptcies", rules=(_NON_NEGATIVE,)
        ),
        LoanColumn(
            "mths_since_last_delinq", "number", "months since the last delinquency (absent: never)",
            rules=(_NON_NEGATIVE,),
        ),
        LoanColumn(
            "grade", "category", "LendingClub grade A–G", True,
            (_TEXT, Matches("is not a LendingClub grade (A–G)", "[A-G]")),
        ),
        LoanColumn(
            "sub_grade", "category", "LendingClub sub-grade A1–G5, within `grade`", True,
            (_TEXT, Matches("is not a LendingClub sub-grade (A1–G5)", SUB_GRADE.pattern)),
        ),
        LoanColumn("home_ownership", "category", "RENT, MORTGAGE, OWN, OTHER, …", rules=(_TEXT,)),
        LoanColumn(
            "verification_status", "category", "Verified, Source Verified, Not Verified",
            rules=(_TEXT,),
        ),
        LoanColumn(
            "purpose", "category", "loan purpose, e.g. debt_consolidation", rules=(_TEXT,)
        ),
        LoanColumn("addr_state", "category", "two-letter US state", rules=(_TEXT,)),
        LoanColumn(
            "earliest_cr_line", "month", "month of the first credit line, `\"Dec-1999\"`",
            rules=(_MONTH,),
        ),
        LoanColumn(
            "issue_d", "month",
            "month the loan is issued, `\"Dec-2011\"`; default: the current month", True,
            (_MONTH,),
        ),
    )
}

CROSS_RULES: tuple[CrossRule, ...] = (
    SameLetter("sub_grade", "grade", "not within grade"),
    NotAbove("fico_range_low", "fico_range_high", "is above fico_range_high"),
    NotAbove("earliest_cr_line", "issue_d", "is after the issue month"),
)

# Every raw file must have these columns: the key, the outcome and every column of the table
# (fetch checks a local file's header against this list; the Kaggle layout holds all of them).
REQUIRED_RAW_COLUMNS: tuple[str, ...] = ("id", "loan_status", *LOAN_COLUMNS)
ISSUE_COLUMN = "issue_d"


def application_columns(
    numeric: Iterable[str], categorical: Iterable[str], dates: Iterable[str]
) -> list[str]:
    """The columns a loan is judged on, in reason order: the allowlist, then the issue month."""
    ordered = [*numeric, *categorical, *dates, ISSUE_COLUMN]
    return list(dict.fromkeys(ordered))


def required_columns(columns: Iterable[str]) -> list[str]:
    """Those of `columns` a loan cannot do without."""
    return [c for c in columns if LOAN_COLUMNS[c].required]


# --- derived features ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Derived:
    """A feature computed from parsed columns by one of a few operations (Spark twin: features.py).

    ratio: inputs[0] * scale / inputs[1], null unless the denominator is positive;
    mean: of two inputs; months_between: whole months from inputs[1] to inputs[0];
    sub_grade_ordinal: A1 → 1 … G5 → 35.
    """

    name: str
    op: Literal["months_between", "mean", "ratio", "sub_grade_ordinal"]
    inputs: tuple[str, ...]
    scale: float = 1.0


DERIVED: dict[str, Derived] = {
    d.name: d
    for d in (
        Derived("credit_history_months", "months_between", ("issue_d", "earliest_cr_line")),
        Derived("fico_mid", "mean", ("fico_range_low", "fico_range_high")),
        Derived("income_to_loan", "ratio", ("annual_inc", "loan_amnt")),
        Derived("installment_to_income", "ratio", ("installment", "annual_inc"), scale=12.0),
        Derived("sub_grade_ordinal", "sub_grade_ordinal", ("sub_grade",)),
    )
}


# --- parsing and judging, in Python --------------------------------------------------------------


class ValueRefusedError(ValueError):
    """A value refused: `code` says how (missing, unparseable, wrong_type, impossible_value)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def blank_to_null(value: str) -> str | None:
    """Trimmed text (spaces only, as Spark's trim), None for empty or "n/a" in any case."""
    trimmed = value.strip(" ")
    return None if trimmed == "" or re.fullmatch(BLANK, trimmed) else trimmed


def check_text(value: str) -> str:
    """`value` unchanged if it is valid Unicode (JSON lets a lone surrogate through)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueRefusedError("wrong_type", "not valid Unicode text") from None
    return value


def with_value(message: str, shown: str) -> str:
    """A problem and the raw text it is about."""
    return f"{message}{VALUE_MARK}{shown}'"


def reason_kind(reason: str) -> str:
    """The reason without the raw text it quotes: what reports count."""
    return reason.split(VALUE_MARK, 1)[0]


def _parse_text(kind: str, text: str) -> object | None:
    if kind == "category":
        return text
    match = re.fullmatch(PATTERNS[kind], text)
    if match is None:
        return None
    if kind == "emp_length":
        return 0.0 if match.group(1) else float(match.group(2))
    if kind == "month":
        month = MONTH_NAMES.index(match.group(1).lower()) + 1 if (
            match.group(1).lower() in MONTH_NAMES
        ) else 0
        year = int(match.group(2))
        return date(year, month, 1) if month and year >= 1 else None
    return float(match.group(1))


def _number(value: int | float) -> tuple[float, str]:
    """A JSON number as a float (infinite when out of range) and as it is quoted."""
    try:
        number = float(value)
    except OverflowError:  # a JSON integer with hundreds of digits
        number = math.inf if value > 0 else -math.inf
    return number, repr(number) if isinstance(value, float) or math.isinf(number) else str(value)


def _holds(rule: Rule, value: object) -> bool:
    if isinstance(rule, Finite):
        return math.isfinite(float(value))  # type: ignore[arg-type]
    if isinstance(rule, Between):
        x = float(value)  # type: ignore[arg-type]
        above = x > rule.low if rule.low_open else x >= rule.low
        return above and x <= rule.high
    if isinstance(rule, OneOf):
        return value in rule.values
    if isinstance(rule, Matches):
        return re.fullmatch(rule.pattern, str(value)) is not None
    if isinstance(rule, MaxChars):
        return len(str(value)) <= rule.limit
    return rule.first <= value <= rule.last  # type: ignore[operator]


def judge_value(column: LoanColumn, value: object, required: bool) -> object | None:
    """The parsed value of one raw field (None: blank), or ValueRefusedError with the problem."""
    if value is None:
        text: str | None = None
    elif isinstance(value, str):
        text = blank_to_null(check_text(value))
    elif column.kind in ("number", "percent", "term") and isinstance(value, int | float) and (
        not isinstance(value, bool)
    ):
        number, shown = _number(value)
        return _apply_rules(column, number, shown[:SHOWN_CHARS])
    else:
        expected = "a number or numeric text" if column.kind in ("number", "percent", "term") else (
            "text"
        )
        raise ValueRefusedError("wrong_type", f"expected {expected}, e.g. {EXPECTED[column.kind]}")
    if text is None:
        if required:
            raise ValueRefusedError("missing", REQUIRED_MESSAGE)
        return None
    shown = text[:SHOWN_CHARS]
    parsed = _parse_text(column.kind, text)
    if parsed is None:
        problem = f"cannot parse as {EXPECTED[column.kind]}"
        raise ValueRefusedError("unparseable", with_value(problem, shown))
    return _apply_rules(column, parsed, shown)


def _apply_rules(column: LoanColumn, parsed: object, shown: str) -> object:
    for rule in column.checks():
        if not _holds(rule, parsed):
            raise ValueRefusedError("impossible_value", with_value(rule.message, shown))
    return parsed


def cross_problems(values: Mapping[str, object]) -> list[tuple[str, str]]:
    """(field, problem) of every cross-field rule `values` break; absent fields break none."""
    problems = []
    for rule in CROSS_RULES:
        a, b = values.get(rule.field), values.get(rule.other)
        if a is None or b is None:
            continue
        broken = a[:1] != b if isinstance(rule, SameLetter) else a > b  # type: ignore[index,operator]
        if broken:
            problems.append((rule.field, rule.message))
    return problems


@dataclass(frozen=True)
class Judgement:
    """A raw loan parsed: its values, and why it is refused (empty: accepted)."""

    values: dict[str, object]
    reasons: list[str]


def judge(
    raw: Mapping[str, object], columns: Sequence[str], required: Collection[str]
) -> Judgement:
    """Parse and check `columns` of one raw loan, as prep and the API do.

    Each field gives at most one reason (blank but required, unparseable, or the first rule it
    breaks); the cross-field rules are checked only when every field is valid.
    """
    values: dict[str, object] = {}
    reasons: list[str] = []
    for name in columns:
        try:
            values[name] = judge_value(LOAN_COLUMNS[name], raw.get(name), name in required)
        except ValueRefusedError as exc:
            values[name] = None
            reasons.append(f"{name}: {exc.message}")
    if not reasons:
        reasons = [f"{f}: {m}" for f, m in cross_problems(values)]
    return Judgement(values, reasons)


def current_month() -> date:
    """First day of the current month (UTC): the issue date of an application made today."""
    today = datetime.now(UTC).date()
    return date(today.year, today.month, 1)


def month_text(month: date) -> str:
    """A month as LendingClub writes it, `Dec-2011`."""
    return f"{MONTH_NAMES[month.month - 1].capitalize()}-{month.year:04d}"


# --- derived features, in Python -----------------------------------------------------------------


def months_between(later: date, earlier: date) -> float:
    """Whole months between two first-of-month dates."""
    return float((later.year - earlier.year) * MONTHS_PER_YEAR + (later.month - earlier.month))


def sub_grade_ordinal(sub_grade: str) -> float:
    """A1 → 1 … G5 → 35."""
    return float((ord(sub_grade[0]) - ord("A")) * SUB_GRADE_STEPS + int(sub_grade[1]))


def _derive_one(spec: Derived, v: Mapping[str, object]) -> float | None:
    args = [v.get(name) for name in spec.inputs]
    if any(a is None for a in args):
        return None
    if spec.op == "months_between":
        return months_between(args[0], args[1])  # type: ignore[arg-type]
    if spec.op == "mean":
        return (float(args[0]) + float(args[1])) / 2.0  # type: ignore[arg-type]
    if spec.op == "ratio":
        denominator = float(args[1])  # type: ignore[arg-type]
        return float(args[0]) * spec.scale / denominator if denominator > 0 else None  # type: ignore[arg-type]
    sub_grade = args[0]
    return sub_grade_ordinal(sub_grade) if SUB_GRADE.fullmatch(str(sub_grade)) else None


def derive(values: Mapping[str, object], names: Sequence[str]) -> dict[str, float | None]:
    """The derived features `names` of parsed `values` (None where an input is missing)."""
    unknown = [n for n in names if n not in DERIVED]
    if unknown:
        raise KeyError(f"unknown derived feature {unknown}")
    return {name: _derive_one(DERIVED[name], values) for name in names}


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
