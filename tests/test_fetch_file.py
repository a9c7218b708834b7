"""fetch from a local file: CSV or CSV.gz, either layout, checked before it replaces data/raw/."""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from pathlib import Path

import pytest

from src.core.loan import REQUIRED_RAW_COLUMNS
from src.core.raw_schema import RAW_COLUMNS, UNRESOLVED_STATUSES
from src.pipelines.acquisition.synthetic import write_synthetic_loans
from src.supervisor import main
from tests.conftest import write_params

OLD_RAW = b"the previous raw file, which a failed fetch must leave byte for byte"
ROWS = 60


@pytest.fixture(scope="module")
def kaggle_layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[list[str]]]:
    path = tmp_path_factory.mktemp("kaggle") / "loans.csv.gz"
    write_synthetic_loans(path, rows=ROWS, seed=3, chunk_rows=ROWS, footer_lines=2)
    with gzip.open(path, "rt", newline="") as handle:
        header, *records = list(csv.reader(handle))
    return header, records


def _write_csv(path: Path, header: list[str], records: list[list[str]]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as handle:  # type: ignore[operator]
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(records)
    return path


def _export_layout(
    header: list[str], records: list[list[str]]
) -> tuple[list[str], list[list[str]]]:
    """The 2007–2020Q3 export: a leading index column, "13.49%" strings, other columns dropped."""
    dropped = {"member_id", "desc", "url", "sec_app_fico_range_low"}
    keep = [i for i, name in enumerate(header) if name not in dropped]
    percent = {header.index("int_rate"), header.index("revol_util")}
    out = []
    for n, record in enumerate(records):
        row = [
            f"{record[i]}%" if i in percent and record[i] and len(record) == len(header)
            else (record[i] if i < len(record) else "")
            for i in keep
        ]
        out.append([str(n), *row])
    return ["", *[header[i] for i in keep]], out


def _project(tmp_path: Path, source: Path) -> Path:
    params = write_params(tmp_path, {"data": {"source": "file", "file_path": str(source)}})
    raw = tmp_path / "data" / "raw" / "loans.csv.gz"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_bytes(OLD_RAW)
    return params


def _fetch(params: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["--params", str(params), "run", "fetch"])
    err = capsys.readouterr().err
    return code, "\n".join(line for line in err.splitlines() if not line.startswith("{"))


def _raw_dir(tmp_path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (tmp_path / "data" / "raw").iterdir()}


def test_required_columns_are_in_the_kaggle_layout() -> None:
    """The Kaggle path checks the whole layout, which holds every column a local file needs."""
    assert set(REQUIRED_RAW_COLUMNS) <= set(RAW_COLUMNS)
    assert {"int_rate", "loan_status", "id", "issue_d", "sub_grade"} <= set(REQUIRED_RAW_COLUMNS)


@pytest.mark.parametrize("layout", ["kaggle", "export"])
@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_a_good_file_replaces_the_raw_file(
    kaggle_layout, tmp_path: Path, capsys, layout: str, suffix: str
) -> None:
    header, records = kaggle_layout
    if layout == "export":
        header, records = _export_layout(header, records)
    source = _write_csv(tmp_path / f"loans{suffix}", header, records)
    params = _project(tmp_path / "project", source)

    code, err = _fetch(params, capsys)

    assert code == 0, err
    raw = tmp_path / "project" / "data" / "raw" / "loans.csv.gz"
    expected = source.read_bytes() if suffix == ".csv.gz" else gzip.compress(
        source.read_bytes(), mtime=0
    )
    assert gzip.decompress(raw.read_bytes()) == gzip.decompress(expected)
    report = json.loads((tmp_path / "project" / "reports" / "fetch.json").read_text())
    assert report["bytes"] == raw.stat().st_size
    if suffix == ".csv":  # the same CSV gives the same gzip bytes: DVC's hash stays put
        first = raw.read_bytes()
        assert _fetch(params, capsys)[0] == 0
        assert raw.read_bytes() == first


def _garbage_bytes() -> bytes:
    return bytes(random.Random(11).randrange(256) for _ in range(5000))


def _broken_files(kaggle_layout) -> dict[str, tuple[bytes, str]]:
    header, records = kaggle_layout
    without = header.index("int_rate")
    no_int_rate = [
        [v for i, v in enumerate(r) if i != without] for r in records
    ]
    header_only = io.StringIO()
    csv.writer(header_only).writerow(header)
    good = io.StringIO()
    csv.writer(good).writerows([header, *records])
    footers_only = io.StringIO()
    csv.writer(footers_only).writerows([header, ["Total amount funded in policy code 1: 12345"]])
    return {
        "garbage.csv": (_garbage_bytes(), "not a CSV text file"),
        "garbage.csv.gz": (gzip.compress(_garbage_bytes()), "not a CSV text file"),
        "text.csv": (b"hello,world\n1,2\n", "header lacks"),
        "empty.csv": (b"", "empty file"),
        "no_int_rate.csv": (
            "\n".join(
                ",".join(f'"{v}"' for v in row)
                for row in [[h for i, h in enumerate(header) if i != without], *no_int_rate]
            ).encode(),
            "the header lacks 1 required column(s): int_rate",
        ),
        "header_only.csv.gz": (gzip.compress(header_only.getvalue().encode()), "no loan"),
        "footers_only.csv": (footers_only.getvalue().encode(), "no loan"),
        "truncated.csv.gz": (gzip.compress(good.getvalue().encode())[:-40], "damaged gzip"),
    }


@pytest.mark.parametrize(
    "name",
    ["garbage.csv", "garbage.csv.gz", "text.csv", "empty.csv", "no_int_rate.csv",
     "header_only.csv.gz", "footers_only.csv", "truncated.csv.gz"],
)
def test_a_bad_file_is_a_data_error_and_changes_nothing(
    kaggle_layout, tmp_path: Path, capsys, name: str
) -> None:
    content, why = _broken_files(kaggle_layout)[name]
    source = tmp_path / name
    source.write_bytes(content)
    params = _project(tmp_path / "project", source)
    before = _raw_dir(tmp_path / "project")

    code, err = _fetch(params, capsys)

    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("error:") and str(source) in line and why in line, line
    assert _raw_dir(tmp_path / "project") == before  # byte for byte, and no temporaries


def test_prep_that_keeps_no_loan_names_the_reasons_and_writes_the_rejected_file(
    kaggle_layout, tmp_path: Path, capsys, spark
) -> None:
    header, records = kaggle_layout
    rate, term = header.index("int_rate"), header.index("term")
    loans = [r for r in records if len(r) == len(header)]
    broken = [
        [("abc" if i == rate else " 99 months" if i == term and n % 2 else v)
         for i, v in enumerate(r)]
        for n, r in enumerate(loans)
    ]
    source = _write_csv(tmp_path / "broken.csv", header, broken)
    params = _project(tmp_path / "project", source)
    assert _fetch(params, capsys)[0] == 0

    code = main(["--params", str(params), "run", "prep"])
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("{")]

    status = header.index("loan_status")
    resolved = [
        n for n, r in enumerate(loans) if r[status] and r[status] not in UNRESOLVED_STATUSES
    ]
    odd = [n for n in resolved if n % 2]
    assert code == 2
    (line,) = err
    assert "no loan could be kept" in line
    assert "int_rate: cannot parse as a percentage such as 13.49 or 13.49% " \
        f"({len(resolved)} rows)" in line
    assert f"term: must be 36 or 60 months ({len(odd)} rows)" in line
    rejected = spark.read.parquet(str(tmp_path / "project" / "data/processed/rejected.parquet"))
    assert rejected.count() == len(resolved)
    assert rejected.filter(rejected.reason.contains("int_rate: cannot parse")).count() == len(
        resolved
    )
