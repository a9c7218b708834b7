"""Batch scoring of raw LendingClub files with a registered bundle, and ranking metrics in numpy.

`score_file` parses the raw rows exactly as prep does (`read_raw`, `classify_rows`,
`add_derived_features`) and scores them with the bundle's Spark PipelineModel, the training
transformation itself (spec SQL + assembler + classifier), in Spark; the bundle's calibration
table then maps the classifier's probability to the calibrated P(default) serving also gives, and
the scorecard turns it into points. Segments come from the bundle's segmentation parameters
(numpy, as in serving). One output row per loan, input order.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src.contracts import ScoreResult
from src.core.bundle import Bundle, is_model_uri, read_bundle
from src.core.loan import ISSUE_COLUMN, current_month, month_text, reason_kind
from src.core.scorecard import score_points
from src.utils.atomic import atomic_path
from src.utils.config import Config
from src.utils.errors import DataError, PermanentError
from src.utils.logging import get_logger

log = get_logger(component="scoring")

ID_COLUMN = "id"
PROBABILITY_OUTPUT = "probability_of_default"
SCORE_OUTPUT = "score"
DECISION = "decision"
SEGMENT = "segment"
OUTPUT_COLUMNS = (ID_COLUMN, PROBABILITY_OUTPUT, SCORE_OUTPUT, DECISION, SEGMENT)
UNSCORED_COLUMNS = ("record", ID_COLUMN, "loan_status", "reason")
DECLINE = "decline"
APPROVE = "approve"
UNSCORED_SUFFIX = ".unscored.csv"
# Scoring ignores the outcome; a known status lets classify_rows judge the other fields only.
OUTCOME_PLACEHOLDER = "Fully Paid"
_ROW = "_row"
_RAW_ID = "_raw_id"
_RAW_STATUS = "_raw_status"
_P1 = "_p_default"


# --- the registry's champion comparison ---------------------------------------------------------


# --- batch scoring -------------------------------------------------------------------------------


def default_model_uri(cfg: Config) -> str:
    """`models:/<register.model_name>@champion`."""
    return f"models:/{cfg.registry.model_name}@champion"


def _open_bundle(cfg: Config, model_uri: str, scratch: Path) -> Bundle:
    if not is_model_uri(model_uri):
        return read_bundle(cfg.path(model_uri))
    from src.pipelines.registry.client import Registry

    return read_bundle(Registry(cfg).download(model_uri, scratch))


def _parsed_rows(spark: Any, cfg: Config, input_path: Path) -> Any:
    """Every raw record with its input position, key, raw id/status, class and parsed fields."""
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
    judged_input = raw.withColumns(
        {
            "loan_status": F.when(is_footer, F.col("loan_status")).otherwise(
                F.lit(OUTCOME_PLACEHOLDER)
            ),
            ISSUE_COLUMN: F.when(blank_issue & ~is_footer, F.lit(month_text(current_month())))
            .otherwise(F.col(ISSUE_COLUMN)),
        }
    )
    # Both frames are narrow projections of the same read, so the id Spark gives each row
    # (partition, position) is the same in both: it is the join key and the input order.
    keys = raw.select(
        F.monotonically_increasing_id().alias(_ROW),
        row_key(raw).alias("loan_key"),
        F.col("id").alias(_RAW_ID),
        F.col("loan_status").alias(_RAW_STATUS),
    )
    judged = classify_rows(
        judged_input, prep.numeric, prep.categorical, prep.dates, prep.required
    ).drop("loan_key", "loan_status").withColumn(_ROW, F.monotonically_increasing_id())
    # Left join from every raw record: a record without a judgement shows up as a null class.
    return keys.join(judged, _ROW, "left")


def _features_frame(rows: Any, cfg: Config, bundle: Bundle) -> Any:
    """Scoreable rows as the processed table has them: numeric as double, derived features added."""
    from pyspark.sql import functions as F

    from src.pipelines.preparation.features import add_derived_features

    prep = cfg.prep
    with_derived = add_derived_features(rows, prep.derived)
    available = {*prep.numeric, *prep.categorical, *prep.derived}
    needed = [*bundle.spec_inputs(), *bundle.segment_features]
    missing = sorted({c for c in needed if c not in available})
    if missing:
        raise PermanentError(
            f"model v{bundle.version} needs {missing}, which the prep allowlist of params.yaml "
            "does not parse"
        )
    return with_derived.select(
        _ROW,
        *[F.col(c).cast("double").alias(c) for c in prep.numeric],
        *prep.categorical,
        *[c for c in prep.derived if c not in prep.numeric],
    )


def _write_csv(frame: pd.DataFrame, target: Path) -> None:
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)


def score_file(
    spark: Any, cfg: Config, input_path: Path, output_path: Path, model_uri: str | None = None
) -> ScoreResult:
    """Score every loan of a raw LendingClub file; unscorable records go to `<stem>.unscored.csv`.

    Scoring uses the bundle's Spark PipelineModel; footers are counted, not written. `id` is the
    raw LendingClub id, or prep's loan_key where the row has none.
    """
    from pyspark import StorageLevel
    from pyspark.ml import PipelineModel
    from pyspark.sql import functions as F

    from src.pipelines.evaluation.spark_metrics import positive_probability
    from src.pipelines.preparation.cleaning import REASON, REASONS, ROW_CLASS
    from src.pipelines.training.classifiers import PROBABILITY_COLUMN

    started = time.perf_counter()
    uri = model_uri or default_model_uri(cfg)
    input_path = Path(input_path)
    output_path = Path(output_path)
    unscored_path = output_path.with_name(output_path.stem + UNSCORED_SUFFIX)
    if not input_path.is_file():
        raise DataError(f"score: input {input_path} does not exist")
    with tempfile.TemporaryDirectory(prefix="score-bundle-") as scratch:
        bundle = _open_bundle(cfg, uri, Path(scratch))
        log.info("score.start", input=str(input_path), model_uri=uri, version=bundle.version,
                 source_model=bundle.serving.source_model, threshold=bundle.threshold)
        pipeline = PipelineModel.load(str(bundle.spark_model_path))
        rows = _parsed_rows(spark, cfg, input_path).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            meta = rows.select(
                _ROW, ROW_CLASS, REASON, REASONS, "loan_key", _RAW_ID, _RAW_STATUS
            ).toPandas()
            kept = rows.filter(F.col(ROW_CLASS) == "kept")
            features = _features_frame(kept, cfg, bundle)
            scored = pipeline.transform(features).select(
                _ROW,
                positive_probability(PROBABILITY_COLUMN).alias(_P1),
                *bundle.segment_features,
            ).toPandas()
        finally:
            rows.unpersist()

    meta = meta.sort_values(_ROW, kind="stable").reset_index(drop=True)
    meta["record"] = np.arange(1, len(meta) + 1)
    raw_id = meta[_RAW_ID].fillna("").astype(str).str.strip()
    # A LendingClub id is a number; empty or stray text (a broken CSV record) gives the loan_key,
    # as prep's key does.
    meta[ID_COLUMN] = raw_id.where(raw_id.str.fullmatch(r"\d+"), meta["loan_key"])
    classes = meta[ROW_CLASS].fillna("unjudged")
    unknown = sorted(set(classes) - {"footer", "kept", "rejected"})
    if unknown:
        raise AssertionError(f"score: unexpected row classes {unknown}")

    loans = meta[classes == "kept"].merge(scored, on=_ROW, how="left", validate="one_to_one")
    if loans[_P1].isna().any():
        raise AssertionError("score: a scoreable loan got no probability")
    segment_values = loans[bundle.segment_features].astype("float64").to_numpy()
    # The threshold was chosen on calibrated probabilities: decide on those.
    p_default = bundle.calibration.apply(loans[_P1].to_numpy(dtype=np.float64))
    output = pd.DataFrame(
        {
            ID_COLUMN: loans[ID_COLUMN].to_numpy(),
            PROBABILITY_OUTPUT: p_default,
            SCORE_OUTPUT: score_points(p_default, cfg.scorecard),
            DECISION: np.where(p_default >= bundle.threshold, DECLINE, APPROVE),
            SEGMENT: bundle.segment_bands(segment_values) if len(loans) else [],
        }
    )
    rejected = meta[classes == "rejected"]
    unscored = pd.DataFrame(
        {
            "record": rejected["record"].to_numpy(),
            ID_COLUMN: rejected[ID_COLUMN].to_numpy(),
            "loan_status": rejected[_RAW_STATUS].to_numpy(),
            "reason": rejected[REASON].to_numpy(),
        },
        columns=list(UNSCORED_COLUMNS),
    )
    footer_rows = int((classes == "footer").sum())
    if len(output) + len(unscored) + footer_rows != len(meta):
        raise AssertionError("score: records were lost between parsing and writing")
    _write_csv(output, output_path)
    _write_csv(unscored, unscored_path)

    # A row with several reasons counts under each of their kinds, as prep's report does.
    kinds = rejected[REASONS].map(lambda rs: sorted({reason_kind(r) for r in rs})).explode()
    reasons = kinds.value_counts().to_dict()
    status = loans[_RAW_STATUS].fillna("").astype(str).str.strip()
    from src.core.raw_schema import UNRESOLVED_STATUSES

    open_loans = int(status.isin(UNRESOLVED_STATUSES).sum())
    result = ScoreResult(
        model_uri=uri,
        model_version=bundle.version,
        scored_rows=len(output),
        unscored_rows=len(unscored),
        unscored_reasons={str(k): int(v) for k, v in reasons.items()},
        output=str(output_path),
        unscored_output=str(unscored_path),
        input_rows=len(meta),
        footer_rows=footer_rows,
        open_loans=open_loans,
        duration_s=round(time.perf_counter() - started, 3),
    )
    log.info(
        "score.done", scored_rows=result.scored_rows, unscored_rows=result.unscored_rows,
        footer_rows=footer_rows, open_loans=open_loans, unscored_reasons=result.unscored_reasons,
        declined=int((output[DECISION] == DECLINE).sum()), output=str(output_path),
        duration_s=result.duration_s,
    )
    return result
