"""FeatureAgent: raw loans → processed table (prep) → train/test sides (split)."""

from __future__ import annotations

from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from src.agents.base import Agent, Skill
from src.contracts import (
    Artifact,
    PrepRequest,
    PrepResult,
    SplitRequest,
    SplitResult,
    SplitSide,
)
from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.pipelines.preparation.cleaning import (
    REASON,
    REASONS,
    ROW_CLASS,
    classify_rows,
    read_raw,
    reason_kinds,
)
from src.pipelines.preparation.features import model_table
from src.pipelines.preparation.splitting import side_summary, split_by_time, split_stratified
from src.utils.errors import DataError
from src.utils.hashing import content_hash
from src.utils.logging import get_logger
from src.utils.spark import get_spark, whole_stage_codegen_off
from src.utils.spark_io import write_parquet_deterministic

log = get_logger(agent="FeatureAgent")
# Reasons named in the log and in the error when no loan can be kept.
TOP_REASONS = 5


def write_parquet(df: DataFrame, target: Path) -> None:
    """Write `df` as parquet to `target`, replacing it only once the write is complete; same rows,
    same bytes (src/utils/spark_io.py)."""
    write_parquet_deterministic(df, target, [KEY_COLUMN])


def rejected_reasons(rows: DataFrame) -> dict[str, int]:
    """Rejected rows per reason kind, most frequent first (a row counts under each of its kinds)."""
    kinds = rows.filter(F.col(ROW_CLASS) == "rejected").select(
        F.explode(F.array_distinct(reason_kinds(F.col(REASONS)))).alias("kind")
    )
    counted = kinds.groupBy("kind").count().orderBy(F.desc("count"), "kind").collect()
    return {r["kind"]: r["count"] for r in counted}


class FeatureAgent(Agent):
    """Prep and split stages."""

    skills = (
        Skill("prep", PrepRequest, PrepResult, "prep"),
        Skill("split", SplitRequest, SplitResult, "split"),
    )

    def _artifact(self, relative: Path, rows: int) -> Artifact:
        return Artifact(path=str(relative), sha256=content_hash(self.cfg.path(relative)), rows=rows)

    def prep(self, request: PrepRequest) -> PrepResult:
        prep = self.cfg.prep
        spark = get_spark(self.cfg.spark)
        raw = read_raw(
            spark,
            self.cfg.path(request.raw.path),
            prep.multiline_csv,
            chunk_bytes=self.cfg.spark.input_chunk_mb * 2**20,
        )
        rows = classify_rows(raw, prep.numeric, prep.categorical, prep.dates, prep.required)
        try:
            # The cache's plan is fixed when it is declared and runs in the first job; every later
            # job reads the classified rows from it.
            with whole_stage_codegen_off(spark):
                rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
                class_counts = rows.groupBy(ROW_CLASS, "loan_status").count().collect()
            by_class: dict[str, int] = {}
            unresolved: dict[str, int] = {}
            for r in class_counts:
                by_class[r[ROW_CLASS]] = by_class.get(r[ROW_CLASS], 0) + r["count"]
                if r[ROW_CLASS] == "unresolved":
                    unresolved[r["loan_status"]] = r["count"]
            kept_rows = by_class.get("kept", 0)
            log.info("prep.classified", **by_class)

            # The rejected file first: when nothing can be kept, it is what explains why.
            rejected = rows.filter(F.col(ROW_CLASS) == "rejected").select(
                KEY_COLUMN,
                F.col(REASON).alias("reason"),
                "loan_status",
                *[c for c in rows.columns if c.startswith("raw_")],
            )
            write_parquet(rejected.orderBy(KEY_COLUMN), self.cfg.path(prep.rejected_path))
            reasons = rejected_reasons(rows)
            if reasons:
                log.warning(
                    "prep.rejected",
                    rows=by_class.get("rejected", 0),
                    top_reasons=dict(list(reasons.items())[:TOP_REASONS]),
                )
            if kept_rows == 0:
                top = "; ".join(f"{k} ({v} rows)" for k, v in list(reasons.items())[:TOP_REASONS])
                raise DataError(
                    f"{request.raw.path}: no loan could be kept (row classes: {by_class})"
                    + (f"; top reasons: {top}; every rejected row is in {prep.rejected_path}"
                       if top else "")
                )

            kept = rows.filter(F.col(ROW_CLASS) == "kept")
            table = model_table(kept, prep.numeric, prep.categorical, prep.derived)
            write_parquet(table.orderBy(KEY_COLUMN), self.cfg.path(prep.processed_path))
            written = spark.read.parquet(str(self.cfg.path(prep.processed_path)))
            filled = written.agg(
                F.sum(LABEL_COLUMN).alias(LABEL_COLUMN),
                *[F.count(c).alias(c) for c in prep.feature_columns],
            ).first()
            defaults = filled[LABEL_COLUMN] or 0
            empty = [c for c in prep.feature_columns if filled[c] == 0]
        finally:
            rows.unpersist()
        if empty:
            log.warning("prep.empty_columns", columns=empty)
        result = PrepResult(
            processed=self._artifact(prep.processed_path, kept_rows),
            rejected=self._artifact(prep.rejected_path, by_class.get("rejected", 0)),
            input_rows=sum(by_class.values()),
            footer_rows=by_class.get("footer", 0),
            unresolved_rows=unresolved,
            rejected_rows=by_class.get("rejected", 0),
            rejected_reasons=reasons,
            kept_rows=kept_rows,
            default_share=round(defaults / kept_rows, 6),
            feature_columns=prep.feature_columns,
            missing_columns=empty,
        )
        log.info(
            "prep.done",
            kept_rows=kept_rows,
            default_share=result.default_share,
            footer_rows=result.footer_rows,
            rejected_rows=result.rejected_rows,
            unresolved_rows=sum(unresolved.values()),
        )
        return result

    def split(self, request: SplitRequest) -> SplitResult:
        split = self.cfg.split
        spark = get_spark(self.cfg.spark)
        loans = spark.read.parquet(str(self.cfg.path(request.processed.path)))
        cutoff = None
        if split.method == "stratified":
            train, test = split_stratified(loans, split.test_fraction, self.cfg.seed)
        else:
            train, test, cutoff = split_by_time(loans, split.test_fraction)
        write_parquet(train.orderBy(KEY_COLUMN), self.cfg.path(split.train_path))
        write_parquet(test.orderBy(KEY_COLUMN), self.cfg.path(split.test_path))
        # Summaries from what was written, so the report describes the files themselves.
        train_side = SplitSide(
            **side_summary(spark.read.parquet(str(self.cfg.path(split.train_path))))
        )
        test_side = SplitSide(
            **side_summary(spark.read.parquet(str(self.cfg.path(split.test_path))))
        )
        if train_side.rows == 0 or test_side.rows == 0:
            raise DataError(
                f"split: an empty side (train {train_side.rows}, test {test_side.rows})"
            )
        log.info(
            "split.done",
            method=split.method,
            train_rows=train_side.rows,
            test_rows=test_side.rows,
            train_default_share=train_side.default_share,
            test_default_share=test_side.default_share,
            time_cutoff=str(cutoff) if cutoff else None,
        )
        return SplitResult(
            method=split.method,
            seed=self.cfg.seed,
            train=self._artifact(split.train_path, train_side.rows),
            test=self._artifact(split.test_path, test_side.rows),
            train_side=train_side,
            test_side=test_side,
            time_cutoff=str(cutoff) if cutoff else None,
        )
