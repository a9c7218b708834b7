"""Batch scoring and the API accept and refuse exactly the same loans, with the same reasons,
and give an accepted loan exactly the same probability, points, decision and segment.

The same raw rows are written to a CSV in the Kaggle layout and parsed by batch scoring, and
posted to `/predict` as the strings of the file; a loan is scored by one exactly when it is by
the other, and a refusal names the same fields with the same reason texts.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from src.core.raw_schema import RAW_COLUMNS
from src.pipelines.preparation.cleaning import REASONS, ROW_CLASS
from src.pipelines.scoring.batch import _parsed_rows, score_file
from src.pipelines.scoring.model_udf import SCORED, UNSCORED
from src.serving.app import create_app
from tests.serving_fixtures import (  # noqa: F401  (fixtures register by name)
    ServingBundles,
    serving_bundles_fixture,
)
from tests.test_loan_property import FILE_LIKE

# A real application as the file writes it.
BASE = {
    "loan_amnt": "20000", "term": " 36 months", "int_rate": "17.27%", "installment": "715.75",
    "annual_inc": "50000.0", "dti": "3.02", "delinq_2yrs": "2", "inq_last_6mths": "0",
    "open_acc": "3", "pub_rec": "0", "revol_bal": "4245", "revol_util": "38.2",
    "total_acc": "11", "fico_range_low": "", "fico_range_high": "", "emp_length": "10+ years",
    "pub_rec_bankruptcies": "0", "mths_since_last_delinq": "17", "grade": "D",
    "sub_grade": "D3", "home_ownership": "MORTGAGE", "verification_status": "Source Verified",
    "purpose": "debt_consolidation", "addr_state": "CA", "earliest_cr_line": "Sep-1993",
    "issue_d": "Dec-2011",
}
# The rows of the issue: refused by batch, scored by the API on training medians.
ISSUE_ROWS = [
    {"loan_amnt": "", "term": "", "int_rate": "n/a", "grade": "", "sub_grade": ""},
    {"term": "99"}, {"term": "-36"}, {"int_rate": "250"}, {"loan_amnt": "1e400"},
    {"issue_d": "2011-12"}, {"issue_d": ""}, {"earliest_cr_line": "Jan-2099"},
    {"sub_grade": "A1"}, {"fico_range_low": "720", "fico_range_high": "700"},
]


def _rows(columns: list[str]) -> list[dict[str, str]]:
    rows = [dict(BASE)] + [{**BASE, **change} for change in ISSUE_ROWS]
    # Every file-like value in every field (control characters aside: a CSV is not JSON).
    values = [v for v in FILE_LIKE if v.isprintable()]
    rows += [{**BASE, name: value} for name in columns for value in values]
    return rows


@pytest.fixture(scope="module")
def client(serving_bundles: ServingBundles) -> Iterator[TestClient]:
    app = create_app(serving_bundles.cfg, bundle_path=serving_bundles.api_bundle, poll=False)
    with TestClient(app) as test_client:
        yield test_client


def _write_rows(rows: list[dict[str, str]], path: Path) -> None:
    """The rows as a raw CSV.gz, ids 1, 2, … in order."""
    with gzip.open(path, "wt", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(RAW_COLUMNS)
        for n, row in enumerate(rows, start=1):
            full = {**row, "id": str(n), "loan_status": ""}
            writer.writerow([full.get(c, "") for c in RAW_COLUMNS])


def _batch(spark: Any, cfg: Any, rows: list[dict[str, str]], path: Path) -> list[Any]:
    _write_rows(rows, path)
    parsed = _parsed_rows(spark, cfg, path).select("_raw_id", ROW_CLASS, REASONS)
    return sorted(parsed.collect(), key=lambda r: int(r["_raw_id"]))


def test_batch_and_api_accept_and_refuse_the_same_loans(
    spark: Any, serving_bundles: ServingBundles, client: TestClient, tmp_path: Path
) -> None:
    cfg = serving_bundles.cfg
    rows = _rows(cfg.prep.application_columns)
    batch = _batch(spark, cfg, rows, tmp_path / "rows.csv.gz")
    assert len(batch) == len(rows)

    differ = []
    scored = 0
    for row, judged in zip(rows, batch, strict=True):
        response = client.post("/predict", json=row)
        assert response.status_code in (200, 422), response.text
        api = [e["msg"] for e in response.json()["detail"]] if response.status_code == 422 else []
        in_batch = list(judged[REASONS] or [])
        scored += response.status_code == 200
        if (judged[ROW_CLASS] == "kept") != (response.status_code == 200) or api != in_batch:
            differ.append((row, judged[ROW_CLASS], in_batch, api))
    assert differ == [], differ[:5]
    assert 0 < scored < len(rows)


def test_batch_output_equals_the_api_for_every_row(
    spark: Any, serving_bundles: ServingBundles, client: TestClient, tmp_path: Path
) -> None:
    """`score` on a file and `/predict` on its rows: the same numbers, bit for bit."""
    cfg = serving_bundles.cfg
    rows = _rows(cfg.prep.application_columns)
    path = tmp_path / "rows.csv.gz"
    _write_rows(rows, path)
    out = tmp_path / "predictions"
    result = score_file(spark, cfg, path, out, str(serving_bundles.api_bundle))
    batch = pd.read_parquet(out).set_index("id")
    assert len(batch) == len(rows) == result.scored_rows + result.unscored_rows

    differ = []
    for n, row in enumerate(rows, start=1):
        response = client.post("/predict", json=row)
        mine = batch.loc[str(n)]
        if response.status_code == 200:
            api = response.json()
            got = (mine["status"], mine["probability_of_default"], mine["score"],
                   mine["decision"], mine["segment"])
            want = (SCORED, api["probability_of_default"], api["score"], api["decision"],
                    api["risk_segment"])
        else:
            got = (mine["status"], mine["reason"])
            want = (UNSCORED, "; ".join(e["msg"] for e in response.json()["detail"]))
        if got != want:
            differ.append((n, got, want))
    print(f"parity: {result.scored_rows} scored and {result.unscored_rows} unscored rows, "
          f"{len(differ)} differ from /predict")
    assert differ == [], differ[:5]
