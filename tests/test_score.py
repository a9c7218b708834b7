"""Batch scoring with the registered champion: the real subsample, and a file with footers, open
loans and malformed rows. Models come from the session's `trained_project`."""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from src.contracts import RegisterResult, ScoreResult
from src.core.bundle import read_bundle
from src.core.raw_schema import KEY_COLUMN
from src.core.scorecard import score_points
from src.pipelines.scoring.batch import score_file
from src.pipelines.scoring.model_udf import (
    APPROVE,
    DECLINE,
    OUTPUT_COLUMNS,
    SCORED,
    UNSCORED,
)
from src.utils.config import ScoreConfig
from src.utils.tracking import TRACKING_URI_ENV
from tests.test_register import Upstream, register, upstream_of

pytestmark = pytest.mark.slow

MODEL_NAME = "score-test"
FOOTERS = (
    "Total amount funded in policy code 1: 461012175",
    "Total amount funded in policy code 2: 0",
)
# Loans of the crafted file; a few are altered below.
CRAFTED_LOANS = 24
FIRST_ID = 90_000


@pytest.fixture(scope="module")
def champion(
    trained_project: Any, spark: Any
) -> Iterator[tuple[Any, Upstream, RegisterResult]]:
    """A champion of its own registered model in the embedded store of the shared project."""
    saved = os.environ.pop(TRACKING_URI_ENV, None)
    try:
        upstream = upstream_of(trained_project, model_name=MODEL_NAME,
                               bundle_dir="models/register_test/score_bundle")
        cfg = upstream.cfg
        result = register(cfg, upstream.request())
        assert result.alias == "champion"
        yield cfg, upstream, result
    finally:
        if saved is not None:
            os.environ[TRACKING_URI_ENV] = saved


def _spark_reference(spark: Any, cfg: Any, upstream: Upstream) -> pd.DataFrame:
    """The champion's Spark model on every processed loan (both split sides), by loan_key."""
    from pyspark.ml import PipelineModel

    from src.pipelines.evaluation.spark_metrics import positive_probability

    model = PipelineModel.load(str(cfg.path(cfg.registry.bundle_dir) / "spark_model"))
    loans = spark.read.parquet(str(cfg.path(upstream.split.train.path))).unionByName(
        spark.read.parquet(str(cfg.path(upstream.split.test.path)))
    )
    scored = model.transform(loans).select(
        KEY_COLUMN, positive_probability("probability").alias("spark_p")
    )
    return scored.toPandas()


def _read_parts(folder: Path, output_format: str = "parquet") -> pd.DataFrame:
    """Every part file of a score output, in file order (the order of the sorted output)."""
    parts = sorted(folder.glob(f"part-*.{output_format}"))
    assert parts, f"no {output_format} part files in {folder}"
    if output_format == "csv":
        frames = [pd.read_csv(p, dtype={"id": str}, float_precision="round_trip") for p in parts]
    else:
        frames = [pd.read_parquet(p) for p in parts]
    return pd.concat(frames, ignore_index=True)


def _sorted_by_id(ids: pd.Series) -> bool:
    """Numeric ids ascending, then the id-less loans (named by their loan key) in key order."""
    numeric = pd.to_numeric(ids, errors="coerce")
    n = int(numeric.notna().sum())
    return bool(
        numeric[:n].notna().all()
        and numeric[:n].is_monotonic_increasing
        and ids[n:].is_monotonic_increasing
    )


def test_real_subsample_one_row_per_loan_with_sparks_probabilities(
    spark: Any, champion: Any, subsample_path: Path, tmp_path: Path
) -> None:
    cfg, upstream, registered = champion
    # Small part files, so the subsample is written as several, sorted across them.
    rows_per_file = 3000
    cfg = cfg.model_copy(update={"score": ScoreConfig(rows_per_file=rows_per_file)})
    out = tmp_path / "scores"
    # The default model URI: models:/<register.model_name>@champion.
    result = score_file(spark, cfg, subsample_path, out)
    assert isinstance(result, ScoreResult)
    print(f"subsample: {result.scored_rows} scored, {result.unscored_rows} unscored "
          f"{result.unscored_reasons}, {result.footer_rows} footers, {result.output_files} files "
          f"in {result.duration_s} s")
    assert result.model_uri == f"models:/{MODEL_NAME}@champion"
    assert result.model_version == registered.version
    assert result.format == "parquet"

    table = _read_parts(out)
    assert tuple(table.columns) == OUTPUT_COLUMNS
    loans = result.scored_rows + result.unscored_rows
    assert len(table) == loans and loans + result.footer_rows == result.input_rows
    assert result.output_files == len(list(out.glob("part-*.parquet")))
    assert result.output_files == -(-loans // rows_per_file) > 1
    assert _sorted_by_id(table["id"]) and table["id"].is_unique
    scores = table[table["status"] == SCORED]
    unscored = table[table["status"] == UNSCORED]
    assert len(scores) == result.scored_rows and len(unscored) == result.unscored_rows
    assert scores["reason"].isna().all() and unscored["probability_of_default"].isna().all()
    assert unscored["reason"].str.len().gt(0).all()
    # A row with several reasons counts under each of their kinds.
    assert sum(result.unscored_reasons.values()) >= result.unscored_rows
    assert (scores["decision"] == DECLINE).sum() == result.declined_rows

    # Every loan prep kept is scored, with the probability the Spark model gives it, to the
    # tolerance register checked the ONNX export against.
    reference = _spark_reference(spark, cfg, upstream)
    # prep's key is "id:<id>" for a loan with a LendingClub id, else "h:<row hash>".
    reference["id"] = reference[KEY_COLUMN].str.removeprefix("id:")
    merged = reference.merge(scores, on="id", how="left")
    assert merged["probability_of_default"].notna().all()
    # Calibrated by the bundle's table, as serving and evaluate calibrate.
    bundle = read_bundle(cfg.path(cfg.registry.bundle_dir))
    diff = np.abs(merged["probability_of_default"]
                  - bundle.calibration.apply(merged["spark_p"].to_numpy()))
    print(f"batch (ONNX) vs Spark model: max |diff| {diff.max():.2e} on {len(merged)} loans")
    assert diff.max() <= cfg.registry.onnx_tolerance, diff.max()
    points = score_points(scores["probability_of_default"].to_numpy(), cfg.scorecard)
    assert np.abs(scores["score"].to_numpy() - points).max() <= 1e-9
    # Higher points, lower risk: the order of the probabilities, reversed.
    order = np.argsort(scores["probability_of_default"].to_numpy(), kind="stable")
    assert (np.diff(scores["score"].to_numpy()[order]) <= 1e-9).all()

    threshold = float(pd.read_json(cfg.path(cfg.registry.bundle_dir) / "serving.json",
                                   typ="series")["threshold"]["value"])
    expected = np.where(scores["probability_of_default"] >= threshold, DECLINE, APPROVE)
    assert (scores["decision"] == expected).all()
    seg = upstream.train_unsup.models[upstream.train_unsup.serving_model]
    assert set(scores["segment"]) <= {s.band for s in seg.segments}


def _crafted_file(source: Path, target: Path) -> tuple[list[str], dict[str, int]]:
    """A plain CSV of real loans with ids, an open loan, malformed rows and footer lines.

    Returns the ids expected in the output in order, and the altered rows' positions.
    """
    with gzip.open(source, "rt", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [r for r in reader if len(r) == len(header)]
    col = {name: i for i, name in enumerate(header)}
    resolved = [r for r in rows if r[col["loan_status"]] in ("Fully Paid", "Charged Off")
                and r[col["int_rate"]].strip() and r[col["sub_grade"]].strip()]
    loans = [list(r) for r in resolved[:CRAFTED_LOANS]]
    # Descending ids: the output order must follow the file, not the id.
    for i, row in enumerate(loans):
        row[col["id"]] = str(FIRST_ID - i)
    altered = {"current": 2, "late": 4, "bad_rate": 6, "no_amount": 8, "no_id": 10,
               "no_status": 12, "percent": 14, "plain": 15}
    loans[altered["current"]][col["loan_status"]] = "Current"
    loans[altered["late"]][col["loan_status"]] = "Late (31-120 days)"
    loans[altered["bad_rate"]][col["int_rate"]] = "abc"
    loans[altered["no_amount"]][col["loan_amnt"]] = ""
    loans[altered["no_id"]][col["id"]] = ""
    loans[altered["no_status"]][col["loan_status"]] = ""
    # The same loan twice: once in the 2007–2020 export's percent format, once plain.
    loans[altered["plain"]] = list(loans[altered["percent"]])
    loans[altered["plain"]][col["id"]] = str(FIRST_ID - altered["plain"])
    rate = loans[altered["percent"]][col["int_rate"]].strip().rstrip("%")
    loans[altered["percent"]][col["int_rate"]] = f"{rate}%"
    loans[altered["plain"]][col["int_rate"]] = rate
    with target.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(loans)
        for footer in FOOTERS:
            writer.writerow([footer] + [""] * (len(header) - 1))
    unscorable = {altered["bad_rate"], altered["no_amount"]}
    expected = [row[col["id"]] for i, row in enumerate(loans) if i not in unscorable]
    return expected, altered


def test_footers_open_loans_and_malformed_rows_are_reported_apart(
    spark: Any, champion: Any, subsample_path: Path, tmp_path: Path
) -> None:
    cfg, _, registered = champion
    source = tmp_path / "crafted.csv"
    expected_ids, altered = _crafted_file(subsample_path, source)
    out = tmp_path / "out" / "crafted_scores"
    out.mkdir(parents=True)
    (out / "stale.txt").write_text("an earlier output, replaced whole")
    # A local bundle folder instead of the registry, and CSV on request.
    result = score_file(spark, cfg, source, out, str(cfg.path(cfg.registry.bundle_dir)), "csv")
    assert result.model_version == registered.version and result.format == "csv"
    assert result.input_rows == CRAFTED_LOANS + len(FOOTERS)
    assert result.footer_rows == len(FOOTERS)
    assert result.open_loans == 2
    assert result.scored_rows == CRAFTED_LOANS - 2 and result.unscored_rows == 2
    bad_rate = "int_rate: cannot parse as a percentage such as 13.49 or 13.49%"
    assert result.unscored_reasons == {bad_rate: 1, "loan_amnt: required": 1}
    assert not (out / "stale.txt").exists()
    assert not list(out.parent.glob(".crafted_scores.*"))  # no temporary left beside it

    table = _read_parts(out, "csv")
    # Records, not lines: one per loan, footers left out.
    assert len(table) == CRAFTED_LOANS and tuple(table.columns) == OUTPUT_COLUMNS
    ids = table["id"].tolist()
    # Sorted by id (the file has them descending); the id-less loan, named by its key, last.
    assert _sorted_by_id(table["id"]) and ids[-1].startswith("h:")
    assert table["loan_key"].iloc[-1] == ids[-1]
    scores = table[table["status"] == SCORED]
    # Every scoreable loan of the file, the id-less one included (by its key, last).
    assert scores["id"].tolist() == sorted((i for i in expected_ids if i), key=int) + ids[-1:]
    p = dict(zip(scores["id"], scores["probability_of_default"], strict=True))
    percent, plain = (str(FIRST_ID - altered[k]) for k in ("percent", "plain"))
    assert p[percent] == p[plain]
    assert scores["probability_of_default"].between(0, 1).all()

    unscored = table[table["status"] == UNSCORED]
    bad_id, no_amount_id = (str(FIRST_ID - altered[k]) for k in ("bad_rate", "no_amount"))
    # Sorted by id like the rest: the no-amount loan comes later in the file, with a lower id.
    assert unscored["id"].tolist() == [no_amount_id, bad_id]
    assert unscored["reason"].tolist() == ["loan_amnt: required", f"{bad_rate}: 'abc'"]
    assert unscored["probability_of_default"].isna().all() and unscored["decision"].isna().all()
