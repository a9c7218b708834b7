"""Raw LendingClub CSV → typed loans: both raw formats, footers and open loans out, label derived.

Every row ends in exactly one class: footer, unresolved, rejected (with its reasons) or kept. The
parsers and plausibility rules are generated from the loan table of `src/core/loan.py`, so a row
is refused here exactly when `loan.judge` (and so the API) refuses it, with the same reason text.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections.abc import Sequence
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from src.core.loan import (
    BLANK,
    CROSS_RULES,
    EXPECTED,
    LOAN_COLUMNS,
    MONTH_NAMES,
    PATTERNS,
    REQUIRED_MESSAGE,
    SHOWN_CHARS,
    VALUE_MARK,
    Between,
    CrossRule,
    Finite,
    LoanColumn,
    Matches,
    MaxChars,
    OneOf,
    Rule,
    SameLetter,
    application_columns,
)
from src.core.raw_schema import (
    DEFAULT_STATUSES,
    KEY_COLUMN,
    LABEL_COLUMN,
    PAID_STATUSES,
    RAW_COLUMNS,
    UNRESOLVED_STATUSES,
)
from src.pipelines.preparation.raw_parts import DEFAULT_CHUNK_BYTES, stage_parts
from src.utils.errors import DataError
from src.utils.spark import spark_uri

ROW_CLASS = "_row_class"
REASON = "_reason"
REASONS = "_reasons"
REASON_SEPARATOR = "; "
# Columns prep needs whatever the allowlist says: the key, the label and the issue date.
REQUIRED_RAW = ("id", "loan_amnt", "issue_d", "loan_status")


def read_header(path: Path) -> list[str]:
    """Column names of a raw CSV or CSV.gz, read without Spark."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as handle:  # type: ignore[operator]
            header = next(csv.reader(io.StringIO(handle.readline())), [])
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the CSV header: {exc}") from exc
    if not header:
        raise DataError(f"{path}: empty file, no CSV header")
    missing = [c for c in REQUIRED_RAW if c not in header]
    if missing:
        raise DataError(f"{path}: not a LendingClub loan file, header lacks {missing}")
    return [h.strip() for h in header]


def read_raw(
    spark: SparkSession, path: Path, multiline: bool, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> DataFrame:
    """Read a raw CSV with an explicit all-string schema taken from its own header.

    Strings first, typed parsing after: the two raw exports write the same field differently.
    A CSV.gz, or any CSV with multi-line fields, is first streamed into parts read in parallel.
    """
    header = read_header(path)
    schema = StructType([StructField(name, StringType(), True) for name in header])
    source = stage_parts(path, chunk_bytes) if multiline or path.suffix == ".gz" else path
    df = spark.read.csv(
        spark_uri(source),
        schema=schema,
        header=True,
        multiLine=multiline,
        escape='"',
        mode="PERMISSIVE",
    )
    # Columns an export lacks (later or earlier layouts) become empty, not fatal.
    for name in RAW_COLUMNS:
        if name not in header:
            df = df.withColumn(name, F.lit(None).cast(StringType()))
    return df


def anchored(pattern: str) -> str:
    """A table pattern matched against the whole text, as Python's re.fullmatch does.

    `\\z` is the absolute end; Java's `$` would also match before a final line terminator.
    """
    return f"^(?:{pattern})\\z"


def blank_to_null(col: Column) -> Column:
    # As loan.blank_to_null: Spark's trim strips spaces only.
    trimmed = F.trim(col)
    return F.when((trimmed == "") | trimmed.rlike(anchored(BLANK)), None).otherwise(trimmed)


def _parse(kind: str, text: Column) -> Column:
    """Trimmed non-blank text → the value of a column of `kind` (loan._parse_text); null if not."""
    if kind == "category":
        return text
    pattern = anchored(PATTERNS[kind])
    group = lambda i: F.regexp_extract(text, pattern, i)  # noqa: E731
    matched = text.rlike(pattern)
    if kind == "emp_length":
        return F.when(matched & (group(1) == "<"), F.lit(0.0)).when(
            matched, group(2).try_cast("double")
        )
    if kind == "month":
        name = F.lower(group(1))
        month = F.lit(None).cast("int")
        for number, month_name in reversed(list(enumerate(MONTH_NAMES, start=1))):
            month = F.when(name == month_name, F.lit(number)).otherwise(month)
        year = group(2).try_cast("int")
        return F.when(
            matched & month.isNotNull() & (year >= 1), F.make_date(year, month, F.lit(1))
        )
    return F.when(matched, group(1).try_cast("double"))


def _breaks(rule: Rule, value: Column) -> Column:
    """True where a parsed, non-null `value` breaks `rule` (loan._holds, negated)."""
    if isinstance(rule, Finite):
        return F.isnan(value) | (F.abs(value) == F.lit(math.inf))
    if isinstance(rule, Between):
        low = value > rule.low if rule.low_open else value >= rule.low
        holds = (low if math.isfinite(rule.low) else F.lit(True)) & (
            value <= rule.high if math.isfinite(rule.high) else F.lit(True)
        )
        return ~holds
    if isinstance(rule, OneOf):
        return ~value.isin(*rule.values)
    if isinstance(rule, Matches):
        return ~value.rlike(anchored(rule.pattern))
    if isinstance(rule, MaxChars):
        return F.length(value) > rule.limit
    return (value < F.lit(rule.first)) | (value > F.lit(rule.last))


def _with_value(message: str, text: Column) -> Column:
    shown = F.substring(text, 1, SHOWN_CHARS)
    return F.concat(F.lit(message + VALUE_MARK), shown, F.lit("'"))


def _field_reason(column: LoanColumn, required: bool, text: Column, value: Column) -> Column:
    """At most one reason for one field, as loan.judge_value gives it."""
    name = column.name
    reason = F.when(text.isNull(), F.lit(f"{name}: {REQUIRED_MESSAGE}" if required else None))
    reason = reason.when(
        value.isNull(), _with_value(f"{name}: cannot parse as {EXPECTED[column.kind]}", text)
    )
    for rule in column.checks():
        reason = reason.when(_breaks(rule, value), _with_value(f"{name}: {rule.message}", text))
    return reason


def _cross_reason(rule: CrossRule) -> Column:
    a, b = F.col(rule.field), F.col(rule.other)
    broken = F.substring(a, 1, 1) != b if isinstance(rule, SameLetter) else a > b
    return F.when(a.isNotNull() & b.isNotNull() & broken, F.lit(f"{rule.field}: {rule.message}"))


def row_key(df: DataFrame) -> Column:
    """Stable key: `id` where the file has one, else a 64-bit hash of the whole raw row.

    xxhash64 is Spark's own fixed algorithm, so the key is the same on every machine and version.
    """
    whole_row = F.xxhash64(*[F.coalesce(F.col(c), F.lit("")) for c in RAW_COLUMNS])
    loan_id = blank_to_null(F.col("id"))
    return F.when(loan_id.rlike(r"^\d+$"), F.concat(F.lit("id:"), loan_id)).otherwise(
        F.concat(F.lit("h:"), F.lpad(F.hex(whole_row), 16, "0"))
    )


def classify_rows(
    raw: DataFrame,
    numeric: list[str],
    categorical: list[str],
    dates: list[str],
    required: list[str],
    passthrough: Sequence[str] = (),
) -> DataFrame:
    """Parse and judge allowlisted columns; tag each row footer, unresolved, rejected or kept.

    `REASONS` holds every reason a row is refused (loan.judge's, then an unknown loan_status),
    `REASON` the same joined by "; " for rejected rows. `passthrough` columns are kept as they are.
    """
    columns = [LOAN_COLUMNS[name] for name in application_columns(numeric, categorical, dates)]
    status = blank_to_null(F.col("loan_status"))
    label = F.when(status.isin(*DEFAULT_STATUSES), 1).when(status.isin(*PAID_STATUSES), 0)
    # Parse once into columns, then judge: the checks below refer to the parsed columns by name,
    # which keeps Spark from inlining (and compiling) every parser several times.
    texts = raw.select(
        row_key(raw).alias(KEY_COLUMN),
        blank_to_null(F.col("id")).alias("_id"),
        status.alias("loan_status"),
        label.cast("int").alias(LABEL_COLUMN),
        *[blank_to_null(F.col(c.name)).alias(f"_text_{c.name}") for c in columns],
        *[F.col(c.name).alias(f"raw_{c.name}") for c in columns],
        *[F.col(c) for c in passthrough],
    )
    parsed = texts.select(
        "*", *[_parse(c.kind, F.col(f"_text_{c.name}")).alias(c.name) for c in columns]
    )
    field_reasons = F.array_compact(
        F.array(
            *[
                _field_reason(c, c.name in required, F.col(f"_text_{c.name}"), F.col(c.name))
                for c in columns
            ]
        )
    )
    names = {c.name for c in columns}
    cross = [_cross_reason(r) for r in CROSS_RULES if {r.field, r.other} <= names]
    loan_reasons = F.when(
        F.size(field_reasons) > 0, field_reasons
    ).otherwise(F.array_compact(F.array(*cross, F.lit(None).cast("string"))))
    status_reason = F.when(
        F.col(LABEL_COLUMN).isNull(),
        F.concat(
            F.lit("loan_status: unknown status" + VALUE_MARK),
            F.substring(F.coalesce(F.col("loan_status"), F.lit("")), 1, SHOWN_CHARS),
            F.lit("'"),
        ),
    )
    judged = parsed.withColumn(
        REASONS, F.concat(loan_reasons, F.array_compact(F.array(status_reason)))
    ).drop(*[f"_text_{c.name}" for c in columns])

    # Footers carry text in `id` and nothing in the loan fields.
    loan_id = F.col("_id")
    is_footer = loan_id.isNotNull() & ~loan_id.rlike(r"^\d+$") & F.col("loan_status").isNull()
    row_class = (
        F.when(is_footer, F.lit("footer"))
        .when(F.col("loan_status").isin(*UNRESOLVED_STATUSES), F.lit("unresolved"))
        .when(F.size(REASONS) > 0, F.lit("rejected"))
        .otherwise(F.lit("kept"))
    )
    judged = judged.withColumn(ROW_CLASS, row_class)
    rejected = F.col(ROW_CLASS) == "rejected"
    return judged.select(
        *[c for c in judged.columns if c not in (REASONS, "_id")],
        F.when(rejected, F.col(REASONS)).alias(REASONS),
        F.when(rejected, F.array_join(F.col(REASONS), REASON_SEPARATOR)).alias(REASON),
    )


def reason_kinds(reasons: Column) -> Column:
    """The kinds (loan.reason_kind) of an array of reasons."""
    return F.transform(reasons, lambda r: F.substring_index(r, VALUE_MARK, 1))
