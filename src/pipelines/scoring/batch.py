"""Batch scoring of raw LendingClub files with a registered bundle, in Spark from end to end.

`score_file` parses the raw rows exactly as prep does (`read_raw`, `classify_rows`,
`add_derived_features`), ships the bundle to the executors (`SparkContext.addArchive`) and
scores each partition there with ONNX Runtime and the Spark-free core code the API uses
(`model_udf`). The output is a folder of Parquet (or CSV) part files, one row per loan, scored or
not (`status`, `reason`), sorted by loan id across the files; counts come from Spark aggregates,
and nothing proportional to the input is collected on the driver.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Literal

from src.contracts import ScoreResult
from src.core.bundle import REQUIRED_FILES, Bundle, is_model_uri, read_bundle
from src.core.calibration import CALIBRATION_FILE
from src.core.loan import ISSUE_COLUMN, current_month, month_text
from src.core.raw_schema import KEY_COLUMN
from src.pipelines.scoring.model_udf import (
    DECISION,
    DECLINE,
    ID,
    KEY,
    OUTPUT_SCHEMA,
    REASON,
    SCORED,
    STATUS,
    UNSCORED,
    ScoringTask,
    score_batches,
)
from src.utils.atomic import atomic_path
from src.utils.config import Config
from src.utils.errors import DataError, PermanentError
from src.utils.logging import get_logger
from src.utils.spark import spark_uri, whole_stage_codegen_off
from src.utils.spark_progress import spark_progress

log = get_logger(component="scoring")

OutputFormat = Literal["parquet", "csv"]
# Scoring ignores the outcome; a known status lets classify_rows judge the other fields only.
OUTCOME_PLACEHOLDER = "Fully Paid"
_RAW_KEY = "_raw_key"
_RAW_ID = "_raw_id"
_RAW_STATUS = "_raw_status"
_KINDS = "_reason_kinds"
_OPEN = "_open_loan"
# What executors need of a bundle: everything but the Spark model.
_SHIPPED_FILES = (*REQUIRED_FILES, CALIBRATION_FILE)


def default_model_uri(cfg: Config) -> str:
    """`models:/<register.model_name>@champion`."""
    return f"models:/{cfg.registry.model_name}@champion"


def _open_bundle(cfg: Config, model_uri: str, scratch: Path) -> Bundle:
    if not is_model_uri(model_uri):
        return read_bundle(cfg.path(model_uri))
    from src.pipelines.registry.client import Registry

    return read_bundle(Registry(cfg).download(model_uri, scratch))


def _parsed_rows(spark: Any, cfg: Config, input_path: Path) -> Any:
    """Every raw record with its key, raw id/status, class, reasons and parsed fields."""
    from pyspark.sql import functions as F

    from src.pipelines.preparation.cleaning import blank_to_null, classify_rows, read_raw, row_key

    prep = cfg.prep
    raw = read_raw(spark, input_path, prep.multiline_csv)
    # The key comes from the raw row as it is (prep's loan_key); judging uses a placeholder
    # outcome so open loans and loans without a status are scored, not set aside.
    blank_id = F.trim(F.coalesce(F.col("id"), F.lit(""))) == ""
    blank_status = F.trim(F.coalesce(F.col("loan_status"), F.lit(""))) == ""
    is_footer = ~blank_id & ~F.trim(F.col("id")).rlike(r"^\d+$") & blank_status
    # A loan without an issue month is a new application: issued this month, as the API assumes.
    blank_issue = blank_to_null(F.col(ISSUE_COLUMN)).isNull()
    # One projection of the read: the key, id and status as the file has them, beside the copies
    # classify_rows judges (all expressions read the raw columns, not each other).
    judged_input = raw.withColumns(
        {
            _RAW_KEY: row_key(raw),
            _RAW_ID: F.col("id"),
            _RAW_STATUS: F.col("loan_status"),
            "loan_status": F.when(is_footer, F.col("loan_status")).otherwise(
                F.lit(OUTCOME_PLACEHOLDER)
            ),
            ISSUE_COLUMN: F.when(blank_issue & ~is_footer, F.lit(month_text(current_month())))
            .otherwise(F.col(ISSUE_COLUMN)),
        }
    )
    judged = classify_rows(
        judged_input, prep.numeric, prep.categorical, prep.dates, prep.required,
        passthrough=(_RAW_KEY, _RAW_ID, _RAW_STATUS),
    )
    return judged.drop(KEY_COLUMN, "loan_status").withColumnRenamed(_RAW_KEY, KEY_COLUMN)


def _model_inputs(cfg: Config, bundle: Bundle) -> list[str]:
    """Parsed and derived columns the bundle reads (feature spec, then segmentation), once each."""
    prep = cfg.prep
    available = {*prep.numeric, *prep.categorical, *prep.derived}
    needed = list(dict.fromkeys([*bundle.spec_inputs(), *bundle.segment_features]))
    missing = sorted(c for c in needed if c not in available)
    if missing:
        raise PermanentError(
            f"model v{bundle.version} needs {missing}, which the prep allowlist of params.yaml "
            "does not parse"
        )
    return needed


def _records_frame(rows: Any, cfg: Config, inputs: list[str]) -> Any:
    """Every record with its class, output id, key, status, reasons and the model's inputs."""
    from pyspark.sql import functions as F

    from src.core.raw_schema import UNRESOLVED_STATUSES
    from src.pipelines.preparation.cleaning import REASON as PREP_REASON
    from src.pipelines.preparation.cleaning import REASONS, ROW_CLASS, reason_kinds
    from src.pipelines.preparation.features import add_derived_features

    prep = cfg.prep
    with_derived = add_derived_features(rows, prep.derived)
    raw_id = F.trim(F.col(_RAW_ID))
    kept = F.col(ROW_CLASS) == "kept"
    numeric = set(prep.numeric) | set(prep.derived)
    return with_derived.select(
        ROW_CLASS,
        # The raw LendingClub id; prep's loan_key where the row has none (or stray text).
        F.when(raw_id.rlike(r"^[0-9]+$"), raw_id).otherwise(F.col(KEY_COLUMN)).alias(ID),
        F.col(KEY_COLUMN).alias(KEY),
        F.when(kept, F.lit(SCORED)).otherwise(F.lit(UNSCORED)).alias(STATUS),
        F.col(PREP_REASON).alias(REASON),
        # A row with several reasons counts under each of their kinds, as prep's report does.
        F.array_distinct(reason_kinds(F.col(REASONS))).alias(_KINDS),
        (kept & F.trim(F.col(_RAW_STATUS)).isin(*UNRESOLVED_STATUSES)).alias(_OPEN),
        *[F.col(c).cast("double").alias(c) if c in numeric else F.col(c) for c in inputs],
    )


def _ship_bundle(spark: Any, bundle: Bundle) -> str:
    """Zip the bundle's files (not its Spark model) and ship the archive to every executor.

    Spark unpacks an archive on each executor (a local folder is not shipped to a cluster's
    executors by addFile); `SparkFiles.get(name)` is that folder there. The archive must outlive
    the run (executors fetch it for every later task of the session), so it is named by its
    content and kept: the same bundle is shipped once per session.
    """
    digest = hashlib.sha256()
    files = [f for f in _SHIPPED_FILES if (bundle.path / f).is_file()]
    for file in files:
        digest.update(file.encode() + b"\0" + (bundle.path / file).read_bytes())
    name = f"score-bundle-v{bundle.version}-{digest.hexdigest()[:16]}"
    archive = Path(tempfile.gettempdir()) / "credit-risk-score" / f"{name}.zip"
    if not archive.is_file():
        with tempfile.TemporaryDirectory(prefix="score-bundle-") as scratch:
            for file in files:
                shutil.copy2(bundle.path / file, Path(scratch) / file)
            with atomic_path(archive) as tmp:
                shutil.move(shutil.make_archive(str(tmp), "zip", root_dir=scratch), tmp)
    spark.sparkContext.addArchive(spark_uri(archive))
    return archive.name


def _write(frame: Any, target: Path, output_format: OutputFormat) -> None:
    writer = frame.write.mode("errorifexists")
    if output_format == "csv":
        writer.option("header", True).csv(spark_uri(target))
    else:
        writer.parquet(spark_uri(target))


def read_output(spark: Any, path: Path, output_format: OutputFormat) -> Any:
    """A score output folder as a DataFrame (the CSV read with the output's own schema)."""
    if output_format == "csv":
        return spark.read.csv(spark_uri(path), header=True, schema=OUTPUT_SCHEMA)
    return spark.read.parquet(spark_uri(path))


def _part_files(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.name.startswith("part-"))


def score_file(
    spark: Any,
    cfg: Config,
    input_path: Path,
    output_path: Path,
    model_uri: str | None = None,
    output_format: OutputFormat | None = None,
) -> ScoreResult:
    """Score every loan of a raw LendingClub file into a folder of part files, one row per loan.

    Scored loans carry the calibrated P(default), scorecard points, decision and segment; the
    others status 'unscored' and their reasons. Footers are counted, not written. `id` is the raw
    LendingClub id, or prep's loan_key where the row has none; rows are sorted by id.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from src.pipelines.preparation.cleaning import ROW_CLASS

    started = time.perf_counter()
    uri = model_uri or default_model_uri(cfg)
    fmt: OutputFormat = output_format or cfg.score.format
    input_path = Path(input_path)
    output_path = Path(output_path)
    if not input_path.is_file():
        raise DataError(f"score: input {input_path} does not exist")
    if output_path.is_file():
        raise DataError(f"score: output {output_path} is a file; the output is a folder of parts")
    with tempfile.TemporaryDirectory(prefix="score-bundle-") as scratch:
        bundle = _open_bundle(cfg, uri, Path(scratch))
        inputs = _model_inputs(cfg, bundle)
        log.info("score.start", input=str(input_path), model_uri=uri, version=bundle.version,
                 source_model=bundle.serving.source_model, threshold=bundle.threshold,
                 format=fmt)
        task = ScoringTask(_ship_bundle(spark, bundle), cfg.scorecard,
                           cfg.score.onnx_threads)
        records = _records_frame(_parsed_rows(spark, cfg, input_path), cfg, inputs)
        try:
            row_class = F.col(ROW_CLASS)
            interval = cfg.spark.progress_interval_s
            # As in prep: the classification runs once, in this job, to fill the cache.
            with whole_stage_codegen_off(spark), spark_progress(
                spark, "score.progress", interval, phase="read"
            ):
                records = records.persist(StorageLevel.MEMORY_AND_DISK)
                counts = records.agg(
                    F.count(F.lit(1)).alias("input"),
                    *[F.count_if(row_class == c).alias(c) for c in ("footer", "kept", "rejected")],
                    F.count_if(F.col(_OPEN)).alias("open"),
                ).first()
            unclassified = counts["input"] - counts["footer"] - counts["kept"] - counts["rejected"]
            if unclassified:
                raise AssertionError(f"score: {unclassified} records got no class")
            reasons = {
                r["kind"]: int(r["count"])
                for r in records.filter(row_class == "rejected")
                .select(F.explode(_KINDS).alias("kind"))
                .groupBy("kind")
                .count()
                .collect()
            }
            loans = counts["kept"] + counts["rejected"]
            files = max(1, math.ceil(loans / cfg.score.rows_per_file))
            log.info("score.read", input_rows=counts["input"], loans=loans,
                     footer_rows=counts["footer"], unscored_rows=counts["rejected"],
                     input_partitions=records.rdd.getNumPartitions(), output_files=files)
            # Range-partitioned and sorted before scoring: each task scores one output file's
            # loans in order, and the model runs once per loan.
            order = [F.col(ID).try_cast("long").asc_nulls_last(), F.col(KEY).asc()]
            scored = (
                records.filter(row_class.isin("kept", "rejected"))
                .select(ID, KEY, STATUS, REASON, *inputs)
                .repartitionByRange(files, *order)
                .sortWithinPartitions(*order)
                .mapInPandas(partial(score_batches, task), OUTPUT_SCHEMA)
            )
            with atomic_path(output_path) as tmp:
                with spark_progress(spark, "score.progress", interval, phase="score"):
                    _write(scored, tmp, fmt)
                # Counted from what was written, before it is renamed into place.
                written = read_output(spark, tmp, fmt).agg(
                    F.count(F.lit(1)).alias("rows"),
                    F.count_if(F.col(STATUS) == SCORED).alias("scored"),
                    F.count_if(F.col(DECISION) == DECLINE).alias("declined"),
                ).first()
                if (written["rows"], written["scored"]) != (loans, counts["kept"]):
                    raise AssertionError(
                        f"score: wrote {written['rows']} rows ({written['scored']} scored) for "
                        f"{loans} loans ({counts['kept']} scoreable)"
                    )
                part_files = _part_files(tmp)
        finally:
            records.unpersist()

    result = ScoreResult(
        model_uri=uri,
        model_version=bundle.version,
        scored_rows=counts["kept"],
        unscored_rows=counts["rejected"],
        unscored_reasons=dict(sorted(reasons.items())),
        output=str(output_path),
        input_rows=counts["input"],
        footer_rows=counts["footer"],
        open_loans=counts["open"],
        declined_rows=written["declined"],
        format=fmt,
        output_files=part_files,
        duration_s=round(time.perf_counter() - started, 3),
    )
    log.info(
        "score.done", scored_rows=result.scored_rows, unscored_rows=result.unscored_rows,
        footer_rows=result.footer_rows, open_loans=result.open_loans,
        unscored_reasons=result.unscored_reasons, declined=result.declined_rows,
        output=str(output_path), format=fmt, output_files=part_files,
        duration_s=result.duration_s,
    )
    return result

