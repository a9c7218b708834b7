"""Prep on the whole real sample: every resolved loan kept, default share, no leak in M.parquet."""

from __future__ import annotations

import json

import pytest

from src.core.raw_schema import is_leaky
from src.supervisor import run_stages
from tests.conftest import REAL_SAMPLE


@pytest.fixture(scope="module")
def full_prep(make_project_module, sample_path):
    cfg = make_project_module({"data": {"source": "file", "file_path": str(sample_path)}})
    run_stages(cfg, ["fetch", "prep"], run_id="test-prep-full")
    return cfg


def test_prep_keeps_every_resolved_loan(full_prep) -> None:
    report = json.loads(full_prep.report_path("prep").read_text())
    if REAL_SAMPLE.is_file():
        assert report["kept_rows"] == 42535
        assert round(report["default_share"], 3) == 0.151
        assert report["rejected_rows"] == 0 and report["footer_rows"] == 0
        # The sample's FICO columns are empty: handled, reported, not fatal.
        assert {"fico_range_low", "fico_range_high", "fico_mid"} <= set(report["missing_columns"])
    else:
        assert report["kept_rows"] > 0 and 0.05 < report["default_share"] < 0.35
    assert report["input_rows"] == (
        report["kept_rows"]
        + report["rejected_rows"]
        + report["footer_rows"]
        + sum(report["unresolved_rows"].values())
    )


def test_no_post_origination_column_reaches_the_processed_table(full_prep, spark) -> None:
    table = spark.read.parquet(str(full_prep.path(full_prep.prep.processed_path)))
    assert [c for c in table.columns if is_leaky(c)] == []
    assert set(table.columns) == {"loan_key", "issue_d", "default", *full_prep.prep.feature_columns}
    assert table.select("loan_key").distinct().count() == table.count()
