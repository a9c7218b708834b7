"""Raw LendingClub CSV → typed loans: both raw formats, footers and open loans out, label derived.

Every row ends in exactly one class: footer, unresolved, rejected (with a reason) or kept.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

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
# "13.49", "13.49%", " 36 months", "1e3": a number with an optional unit the raw exports append.
_NUMBER = r"^(-?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)\s*(?:%|months?)?$"
_SUB_GRADE = r"^[A-G][1-5]$"
# Columns prep needs whatever the allowlist says: the key, the label and the issue date.
REQUIRED_RAW = ("id", "loan_amnt", "issue_d", "loan_status")


def read_header(path: Path) -> list[str]:
    """Column names of a raw CSV or CSV.gz, read without Spark."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="") as handle:  # type: ignore[operator]
            header = next(csv.reader(io.StringIO(handle.readline())), [])
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
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


def _blank_to_null(col: Column) -> Column:
    # LendingClub writes "n/a" where a value is unknown (emp_length, mostly).
    trimmed = F.trim(col)
    return F.when((trimmed == "") | (F.lower(trimmed) == "n/a"), None).otherwise(trimmed)


def parse_number(col: Column) -> Column:
    """`13.49`, `"13.49%"`, `" 36 months"` → 13.49 / 36.0; null when empty or malformed."""
    digits = F.regexp_extract(_blank_to_null(col), _NUMBER, 1)
    return F.when(digits == "", None).otherwise(digits.try_cast("double"))


def parse_emp_length(col: Column) -> Column:
    """`"10+ years"` → 10, `"< 1 year"` → 0, `"3 years"` → 3, `"n/a"`/empty → null."""
    value = F.lower(_blank_to_null(col))
    years = F.regexp_extract(value, r"^(\d+)\+?\s*years?$", 1)
    return (
        F.when(value.rlike(r"^<\s*1\s*years?$"), F.lit(0.0))
        .when(years != "", years.try_cast("double"))
        .otherwise(None)
    )


def parse_month(col: Column) -> Column:
    """`"Dec-2011"` → 2011-12-01; null when empty or malformed."""
    value = _blank_to_null(col)
    return F.try_to_timestamp(F.concat(F.lit("01-"), value), F.lit("dd-MMM-yyyy")).cast("date")


def _parse_error(name: str, raw: Column, parsed: Column) -> Column:
    """A reason string when `raw` has text that did not parse."""
    return F.when(
        _blank_to_null(raw).isNotNull() & parsed.isNull(),
        F.concat(F.lit(f"{name}: cannot parse '"), F.substring(F.trim(raw), 1, 40), F.lit("'")),
    )


def row_key(df: DataFrame) -> Column:
    """Stable key: `id` where the file has one, else a 64-bit hash of the whole raw row.

    xxhash64 is Spark's own fixed algorithm, so the key is the same on every machine and version.
    """
    whole_row = F.xxhash64(*[F.coalesce(F.col(c), F.lit("")) for c in RAW_COLUMNS])
    loan_id = _blank_to_null(F.col("id"))
    return F.when(loan_id.rlike(r"^\d+$"), F.concat(F.lit("id:"), loan_id)).otherwise(
        F.concat(F.lit("h:"), F.lpad(F.hex(whole_row), 16, "0"))
    )


def classify_rows(
    raw: DataFrame,
    numeric: list[str],
    categorical: list[str],
    dates: list[str],
    required: list[str],
) -> DataFrame:
    """Parse allowlisted columns; tag each row footer, unresolved, rejected (reason) or kept."""
    parsers: dict[str, Callable[[Column], Column]] = {
        **{n: parse_emp_length if n == "emp_length" else parse_number for n in numeric},
        **{n: _blank_to_null for n in categorical},
        **{n: parse_month for n in ["issue_d", *dates]},
    }
    parsers.setdefault("loan_amnt", parse_number)
    status = _blank_to_null(F.col("loan_status"))
    label = F.when(status.isin(*DEFAULT_STATUSES), 1).when(status.isin(*PAID_STATUSES), 0)
    # Parse once into columns, then judge: the checks below refer to the parsed columns by name,
    # which keeps Spark from inlining (and compiling) every parser several times.
    parsed = raw.select(
        row_key(raw).alias(KEY_COLUMN),
        _blank_to_null(F.col("id")).alias("_id"),
        status.alias("loan_status"),
        label.cast("int").alias(LABEL_COLUMN),
        *[parse(F.col(name)).alias(name) for name, parse in parsers.items()],
        *[F.col(name).alias(f"raw_{name}") for name in parsers],
    )
    errors = [_parse_error(name, F.col(f"raw_{name}"), F.col(name)) for name in parsers]
    errors += [F.when(F.col(name).isNull(), F.lit(f"{name}: missing")) for name in required]
    errors.append(
        F.when(
            F.col(LABEL_COLUMN).isNull(),
            F.concat(
                F.lit("loan_status: unknown status '"),
                F.coalesce(F.col("loan_status"), F.lit("")),
                F.lit("'"),
            ),
        )
    )
    errors.append(F.when(F.col("loan_amnt") <= 0, F.lit("loan_amnt: not positive")))
    if "annual_inc" in parsers:
        errors.append(F.when(F.col("annual_inc") < 0, F.lit("annual_inc: negative")))
    if "sub_grade" in parsers:
        errors.append(F.when(~F.col("sub_grade").rlike(_SUB_GRADE), F.lit("sub_grade: not A1..G5")))
    judged = parsed.withColumn(REASON, F.coalesce(*errors))

    # Footers carry text in `id` and nothing in the loan fields.
    loan_id = F.col("_id")
    is_footer = loan_id.isNotNull() & ~loan_id.rlike(r"^\d+$") & F.col("loan_status").isNull()
    row_class = (
        F.when(is_footer, F.lit("footer"))
        .when(F.col("loan_status").isin(*UNRESOLVED_STATUSES), F.lit("unresolved"))
        .when(F.col(REASON).isNotNull(), F.lit("rejected"))
        .otherwise(F.lit("kept"))
    )
    judged = judged.withColumn(ROW_CLASS, row_class)
    return judged.withColumn(REASON, F.when(F.col(ROW_CLASS) == "rejected", F.col(REASON))).drop(
        "_id"
    )
