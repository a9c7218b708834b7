"""Raw CSV.gz → record-aligned parts: multi-line fields survive, parallel read, clean errors."""

from __future__ import annotations

import csv
import gzip
import io
import os
import tempfile
from pathlib import Path

import pytest

from src.core.raw_schema import RAW_COLUMNS
from src.pipelines.preparation.cleaning import read_raw
from src.pipelines.preparation.raw_parts import stage_parts
from src.utils.errors import DataError

ROWS = 300
CHUNK = 4096  # bytes: tiny, so a few hundred loans make many parts


def _desc(i: int) -> str:
    # Multi-line, with quotes and commas, on every third loan: the cases a byte split would break.
    if i % 3 == 0:
        return f'Borrower added on {i} > Paying off "high interest" cards,\nthen "more"\r\nThanks'
    return "" if i % 3 == 1 else f"plain text {i}"


def _write_loans(path: Path) -> list[dict[str, str]]:
    rows = [
        {"id": str(1000 + i), "loan_amnt": str(1000 + i), "issue_d": "Dec-2011",
         "loan_status": "Fully Paid", "desc": _desc(i)}
        for i in range(ROWS)
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RAW_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with gzip.open(path, "wt", newline="") as handle:
        handle.write(buffer.getvalue())
    return rows


def test_parts_split_on_record_boundaries_only(tmp_path: Path) -> None:
    path = tmp_path / "loans.csv.gz"
    expected = _write_loans(path)
    folder = stage_parts(path, CHUNK)
    parts = sorted(folder.glob("part-*.csv"))
    assert len(parts) > 5
    seen: list[dict[str, str]] = []
    for part in parts:
        with open(part, newline="") as handle:
            records = list(csv.DictReader(handle))
        assert records, part
        seen += [{k: r[k] for k in ("id", "desc")} for r in records]
    assert seen == [{k: r[k] for k in ("id", "desc")} for r in expected]


def test_read_raw_parses_every_part_in_parallel(spark, tmp_path: Path) -> None:
    path = tmp_path / "loans.csv.gz"
    expected = _write_loans(path)
    df = read_raw(spark, path, multiline=True, chunk_bytes=CHUNK)
    # A gzip file is one task; parts are many (Spark packs small ones up to its parallelism).
    assert df.rdd.getNumPartitions() >= min(6, spark.sparkContext.defaultParallelism) > 1
    got = {r["id"]: r["desc"] for r in df.select("id", "desc").collect()}
    assert got == {r["id"]: (r["desc"] or None) for r in expected}


def test_parts_are_reused_for_the_same_file_and_replaced_for_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "loans.csv.gz"
    _write_loans(path)
    first = stage_parts(path, CHUNK)
    stamp = first.stat().st_mtime_ns
    assert stage_parts(path, CHUNK) == first and first.stat().st_mtime_ns == stamp
    _write_loans(path)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    second = stage_parts(path, CHUNK)
    assert second != first and second.is_dir() and not first.exists()


def test_an_archive_cut_short_is_a_clear_error_with_nothing_left(tmp_path: Path) -> None:
    path = tmp_path / "loans.csv.gz"
    _write_loans(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut short or corrupt"):
        stage_parts(path, CHUNK)
    cache = path.with_name(f".{path.name}.parts")
    assert list(cache.iterdir()) == []


def test_a_read_only_folder_stages_its_parts_under_tmpdir(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    path = folder / "loans.csv.gz"
    _write_loans(path)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    # Root may write anywhere: ask the question a normal user's read-only folder answers.
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != folder)
    parts = stage_parts(path, CHUNK)
    assert parts.is_relative_to(tmp_path / "tmp") and list(parts.glob("part-*.csv"))
    assert [p.name for p in folder.iterdir()] == ["loans.csv.gz"]
