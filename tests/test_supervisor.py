"""Supervisor CLI: contracts listed, retries on transient faults only, one-line failures."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from src.supervisor import main
from src.utils.atomic import atomic_write_json
from tests.conftest import write_params
from tests.kaggle_stub import KaggleStub

OLD_RAW = b"previous raw file"


def events(root: Path) -> list[dict]:
    lines = (root / "logs" / "pipeline.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def plain_lines(stderr: str) -> list[str]:
    """What a person reads on stderr: the lines that are not JSON log events."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("{")]


def kaggle_project(tmp_path: Path) -> Path:
    params = write_params(
        tmp_path,
        {
            "data": {"source": "kaggle"},
            "supervisor": {
                "retry": {"attempts": 4, "backoff_initial_s": 0.01, "backoff_max_s": 0.05}
            },
        },
    )
    raw = tmp_path / "data" / "raw" / "loans.csv.gz"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(OLD_RAW)
    return params


def test_agents_lists_every_agent_with_its_contracts(capsys) -> None:
    assert main(["agents"]) == 0
    out = capsys.readouterr().out
    assert "DataAgent" in out and "fetch" in out and "FetchRequest -> FetchResult" in out
    assert "FeatureAgent" in out and "PrepRequest -> PrepResult" in out
    assert "SplitRequest -> SplitResult" in out


def test_transient_faults_are_retried_and_logged(kaggle_stub: KaggleStub, tmp_path, capsys) -> None:
    kaggle_stub.download_statuses = [503, 503]
    params = kaggle_project(tmp_path)
    assert main(["--params", str(params), "run", "fetch", "--run-id", "r1"]) == 0
    assert len(kaggle_stub.download_requests) == 3
    log = events(tmp_path)
    retries = [e for e in log if e["event"] == "stage.retry"]
    assert [e["attempt"] for e in retries] == [1, 2]
    assert all(
        e["run_id"] == "r1" and e["stage"] == "fetch" and e["agent"] == "DataAgent" for e in retries
    )
    done = [e for e in log if e["event"] == "stage.done"]
    assert done and done[0]["attempt"] == 3 and done[0]["duration_s"] > 0
    report = json.loads((tmp_path / "reports" / "fetch.json").read_text())
    run = json.loads((tmp_path / "reports" / "runs" / "fetch.json").read_text())
    assert report["source"] == "kaggle" and "run_id" not in report and run["run_id"] == "r1"
    with gzip.open(tmp_path / report["raw"]["path"], "rt") as handle:
        assert handle.readline().startswith("id,member_id,loan_amnt")


def test_refused_credentials_fail_at_once(kaggle_stub: KaggleStub, tmp_path, capsys) -> None:
    kaggle_stub.reject_credentials = True
    params = kaggle_project(tmp_path)
    assert main(["--params", str(params), "run", "fetch"]) == 2
    err = plain_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: ") and "credentials" in err[0]
    assert len(kaggle_stub.download_requests) == 1
    assert not [e for e in events(tmp_path) if e["event"] == "stage.retry"]
    assert (tmp_path / "data" / "raw" / "loans.csv.gz").read_bytes() == OLD_RAW


def test_truncated_download_leaves_raw_untouched(kaggle_stub: KaggleStub, tmp_path, capsys) -> None:
    kaggle_stub.truncate = True
    params = kaggle_project(tmp_path)
    assert main(["--params", str(params), "run", "fetch"]) == 2
    assert "error: " in capsys.readouterr().err
    raw_dir = tmp_path / "data" / "raw"
    assert [p.name for p in raw_dir.iterdir()] == ["loans.csv.gz"]
    assert (raw_dir / "loans.csv.gz").read_bytes() == OLD_RAW
    assert not (tmp_path / "reports" / "fetch.json").exists()


def _fill_the_disk(target: Path, **_: object) -> int:
    """Half a file at `target`, then a write the OS refuses for want of space (/dev/full)."""
    target.write_bytes(b"id,loan_amnt\n1,1000\n")
    with open("/dev/full", "wb") as full:
        full.write(b"x" * 2**16)
        full.flush()
    return 1


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this OS")
def test_a_full_disk_is_one_clear_line_and_keeps_the_previous_output(
    tmp_path, capsys, monkeypatch
) -> None:
    import src.pipelines.acquisition.synthetic as synthetic

    monkeypatch.setattr(synthetic, "write_synthetic_loans", _fill_the_disk)
    params = write_params(tmp_path, {"data": {"source": "synthetic"}})
    raw_dir = tmp_path / "data" / "raw"
    raw_dir.mkdir(parents=True)
    (raw_dir / "loans.csv.gz").write_bytes(OLD_RAW)
    assert main(["--params", str(params), "run", "fetch"]) == 2
    assert plain_lines(capsys.readouterr().err) == [
        "error: fetch: a disk is full (No space left on device); the previous outputs are "
        "unchanged. Free space where the project, TMPDIR and spark.local.dir live, then rerun"
    ]
    # One attempt: retrying cannot free space. The half-written file is gone, the old one kept.
    assert len([e for e in events(tmp_path) if e["event"] == "stage.start"]) == 1
    assert [p.name for p in raw_dir.iterdir()] == ["loans.csv.gz"]
    assert (raw_dir / "loans.csv.gz").read_bytes() == OLD_RAW
    assert not (tmp_path / "reports" / "fetch.json").exists()


def test_a_full_disk_on_an_executor_is_named_as_such(spark) -> None:
    """The same refusal raised inside a Spark task reaches the driver as Spark's own exception."""
    from pyspark.sql import functions as F

    from src.utils.errors import PermanentError, as_pipeline_error, is_transient

    # No type hints: pyspark would read them as a pandas UDF's.
    @F.udf("long")
    def spill(_):
        import errno

        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/blockmgr/shuffle_0_0.data")

    with pytest.raises(Exception) as failed:
        spark.range(4).select(spill("id")).collect()
    named = as_pipeline_error(failed.value, "prep")
    assert isinstance(named, PermanentError) and not is_transient(failed.value)
    assert str(named).startswith("prep: a disk is full (No space left on device)")


def test_bad_input_file_is_one_clear_line(tmp_path, capsys) -> None:
    params = write_params(tmp_path, {"data": {"source": "file", "file_path": "nowhere.csv.gz"}})
    assert main(["--params", str(params), "run", "fetch"]) == 2
    err = plain_lines(capsys.readouterr().err)
    assert err == [f"error: data.file_path: {tmp_path / 'nowhere.csv.gz'} does not exist"]
    assert len([e for e in events(tmp_path) if e["event"] == "stage.start"]) == 1


def test_stale_or_foreign_upstream_result_is_refused(tmp_path, capsys) -> None:
    params = write_params(tmp_path, {})
    assert main(["--params", str(params), "run", "prep"]) == 2
    assert "no result of stage 'fetch'; run it first" in capsys.readouterr().err

    raw = tmp_path / "data" / "raw" / "loans.csv.gz"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(b"edited by hand")
    atomic_write_json(
        tmp_path / "reports" / "fetch.json",
        {
            "stage": "fetch",
            "source": "file",
            "origin": "x",
            "bytes": 1,
            "raw": {"path": "data/raw/loans.csv.gz", "sha256": "0" * 64},
        },
    )
    assert main(["--params", str(params), "run", "prep"]) == 2
    assert "changed since 'fetch' ran; rerun it" in capsys.readouterr().err

    atomic_write_json(tmp_path / "reports" / "fetch.json", {"stage": "prep"})
    assert main(["--params", str(params), "run", "prep"]) == 2
    assert "not a valid fetch result" in capsys.readouterr().err


def test_invalid_params_name_the_field(tmp_path, capsys) -> None:
    params = write_params(tmp_path, {"data": {"source": "ftp"}})
    assert main(["--params", str(params), "run", "fetch"]) == 2
    assert "data.source" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["status"]])
def test_status_reports_each_stage(tmp_path, capsys, command) -> None:
    params = write_params(tmp_path, {})
    assert main(["--params", str(params), *command]) == 0
    out = capsys.readouterr().out
    assert "fetch" in out and "not run" in out


def _artifact(root: Path, relative: str, text: str) -> dict:
    from src.utils.hashing import content_hash

    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return {"path": relative, "sha256": content_hash(path), "rows": None}


def test_status_marks_every_stage_downstream_of_a_stale_one(tmp_path, capsys) -> None:
    from src.contracts import FetchResult, PrepResult

    params = write_params(tmp_path, {})
    reports = tmp_path / "reports"
    fetch = FetchResult(source="file", origin="test", bytes=3,
                        raw=_artifact(tmp_path, "data/raw/loans.csv.gz", "raw"))
    prep = PrepResult(
        processed=_artifact(tmp_path, "data/processed/M.parquet", "m"),
        rejected=_artifact(tmp_path, "data/processed/rejected.parquet", "r"),
        input_rows=1, footer_rows=0, unresolved_rows={}, rejected_rows=0, kept_rows=1,
        default_share=0.0, feature_columns=[], missing_columns=[],
    )
    atomic_write_json(reports / "fetch.json", fetch.model_dump(mode="json"))
    atomic_write_json(reports / "prep.json", prep.model_dump(mode="json"))
    assert main(["--params", str(params), "status"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert " ok " in lines["fetch"] and " ok " in lines["prep"]
    assert "not run" in lines["split"]

    (tmp_path / "data" / "raw" / "loans.csv.gz").write_text("changed")
    assert main(["--params", str(params), "status"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "stale" in lines["fetch"] and "changed since 'fetch' ran" in lines["fetch"]
    assert "stale: upstream 'fetch' is stale" in lines["prep"]


def test_status_marks_every_stage_downstream_of_a_missing_artifact(tmp_path, capsys) -> None:
    """Two levels down: a missing raw file makes fetch, prep and split stale; the rest not run."""
    from src.contracts import FetchResult, PrepResult, SplitResult

    params = write_params(tmp_path, {})
    reports = tmp_path / "reports"
    side = {"rows": 1, "defaults": 0, "default_share": 0.0, "first_issue_d": None,
            "last_issue_d": None}
    results = {
        "fetch": FetchResult(source="file", origin="test", bytes=3,
                             raw=_artifact(tmp_path, "data/raw/loans.csv.gz", "raw")),
        "prep": PrepResult(
            processed=_artifact(tmp_path, "data/processed/M.parquet", "m"),
            rejected=_artifact(tmp_path, "data/processed/rejected.parquet", "r"),
            input_rows=1, footer_rows=0, unresolved_rows={}, rejected_rows=0, kept_rows=1,
            default_share=0.0, feature_columns=[], missing_columns=[],
        ),
        "split": SplitResult(
            method="stratified", seed=1, train_side=side, test_side=side,
            train=_artifact(tmp_path, "data/split/train.parquet", "tr"),
            test=_artifact(tmp_path, "data/split/test.parquet", "te"),
        ),
    }
    for name, result in results.items():
        atomic_write_json(reports / f"{name}.json", result.model_dump(mode="json"))
    assert main(["--params", str(params), "status"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert all(" ok " in lines[name] for name in results)

    (tmp_path / "data" / "raw" / "loans.csv.gz").unlink()
    assert main(["--params", str(params), "status"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "stale" in lines["fetch"] and "is missing" in lines["fetch"]
    assert "stale: upstream 'fetch' is stale" in lines["prep"]
    assert "stale: upstream 'prep' is stale" in lines["split"]
    assert all("not run" in lines[name] for name in ("train_sup", "train_unsup", "evaluate"))
