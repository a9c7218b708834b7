"""download_kaggle_file with the real kagglesdk client against a local stub, never the internet."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from src.core.raw_schema import RAW_COLUMNS
from src.pipelines.acquisition.kaggle import DownloadSummary, download_kaggle_file
from src.utils.errors import ConfigError, DataError, PermanentError, TransientError
from tests.kaggle_stub import KaggleStub, make_raw_csv_gz

DATASET = "wordsforthewise/lending-club"
FILE = "accepted_2007_to_2018Q4.csv.gz"
MIN_BYTES = 1024
OLD_BYTES = b"the previous raw file, which must survive any failed download"
REPO = Path(__file__).resolve().parents[1]


def _dest(tmp_path: Path) -> Path:
    return tmp_path / "data" / "raw" / "loans.csv.gz"


def _download(dest: Path, **kwargs: object) -> DownloadSummary:
    return download_kaggle_file(DATASET, FILE, dest, MIN_BYTES, **kwargs)  # type: ignore[arg-type]


def _with_old_file(tmp_path: Path) -> Path:
    dest = _dest(tmp_path)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(OLD_BYTES)
    return dest


def _assert_untouched(dest: Path) -> None:
    """`dest` holds the old bytes and its folder holds nothing else (no temporaries)."""
    assert dest.read_bytes() == OLD_BYTES
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]


def test_success_gzip(kaggle_stub: KaggleStub, tmp_path: Path) -> None:
    dest = _with_old_file(tmp_path)

    summary = _download(dest)

    payload = kaggle_stub.payload
    assert dest.read_bytes() == payload
    assert summary.path == dest
    assert summary.bytes == len(payload)
    assert summary.sha256 == hashlib.sha256(payload).hexdigest()
    assert summary.delivered_as == "gzip"
    assert summary.rows_checked == 40
    assert summary.columns == len(RAW_COLUMNS)
    assert summary.uncompressed_bytes == len(gzip.decompress(payload))
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]
    # One attempt: POST the single-file request, follow the redirect to the file.
    (post,) = kaggle_stub.download_requests
    assert post.json() == {
        "ownerSlug": "wordsforthewise",
        "datasetSlug": "lending-club",
        "fileName": FILE,
    }
    assert post.headers["Authorization"].startswith("Basic ")
    assert len(kaggle_stub.file_requests) == 1


def test_success_zip_holding_the_file_and_missing_folder(
    kaggle_stub: KaggleStub, tmp_path: Path
) -> None:
    kaggle_stub.serve = "zip"
    dest = _dest(tmp_path)  # data/raw/ does not exist yet

    summary = _download(dest)

    assert dest.read_bytes() == kaggle_stub.payload
    assert summary.delivered_as == "zip"
    assert summary.downloaded_bytes > 0
    assert summary.sha256 == hashlib.sha256(kaggle_stub.payload).hexdigest()


def test_503_is_transient_and_a_later_call_succeeds(
    kaggle_stub: KaggleStub, tmp_path: Path
) -> None:
    dest = _with_old_file(tmp_path)
    kaggle_stub.download_statuses = [503, 503]

    for _ in range(2):
        with pytest.raises(TransientError, match=r"kaggle:wordsforthewise/lending-club/.*503"):
            _download(dest)
        _assert_untouched(dest)
    summary = _download(dest)  # what a retry by the supervisor would do

    assert dest.read_bytes() == kaggle_stub.payload
    assert summary.bytes == len(kaggle_stub.payload)
    assert len(kaggle_stub.download_requests) == 3


@pytest.mark.parametrize("status", [429, 500, 502])
def test_other_transient_statuses(kaggle_stub: KaggleStub, tmp_path: Path, status: int) -> None:
    kaggle_stub.download_statuses = [status]
    with pytest.raises(TransientError, match=str(status)):
        _download(_dest(tmp_path))
    assert len(kaggle_stub.download_requests) == 1  # no retry inside the function


def test_503_on_the_redirected_file_is_transient(kaggle_stub: KaggleStub, tmp_path: Path) -> None:
    dest = _with_old_file(tmp_path)
    kaggle_stub.file_statuses = [503]
    with pytest.raises(TransientError, match="503"):
        _download(dest)
    _assert_untouched(dest)


def test_401_is_permanent_with_one_request(kaggle_stub: KaggleStub, tmp_path: Path) -> None:
    dest = _with_old_file(tmp_path)
    kaggle_stub.reject_credentials = True

    with pytest.raises(PermanentError, match="refused the credentials") as caught:
        _download(dest)

    assert not isinstance(caught.value, TransientError)
    message = str(caught.value)
    assert "\n" not in message and "KAGGLE_USERNAME" in message and "401" in message
    assert len(kaggle_stub.download_requests) == 1
    assert kaggle_stub.file_requests == []
    _assert_untouched(dest)


def test_wrong_key_is_refused(
    kaggle_stub: KaggleStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAGGLE_KEY", "not-the-key")
    with pytest.raises(PermanentError, match=r"refused the credentials \(HTTP 401\)"):
        _download(_dest(tmp_path))


def test_403_and_404_are_permanent(kaggle_stub: KaggleStub, tmp_path: Path) -> None:
    kaggle_stub.download_statuses = [403, 404]
    with pytest.raises(PermanentError, match="refused the credentials"):
        _download(_dest(tmp_path))
    with pytest.raises(PermanentError, match=rf"lending-club/{FILE}: not found") as caught:
        _download(_dest(tmp_path))
    assert not isinstance(caught.value, TransientError)


def test_truncated_archive_is_data_error(kaggle_stub: KaggleStub, tmp_path: Path) -> None:
    dest = _with_old_file(tmp_path)
    kaggle_stub.truncate = True
    assert len(kaggle_stub.payload) // 2 > MIN_BYTES  # the gzip check must catch it, not the size

    with pytest.raises(DataError, match="truncated gzip"):
        _download(dest)

    _assert_untouched(dest)
    assert not list(tmp_path.rglob("*.tmp-*")) and not list(tmp_path.rglob("*download*"))


def test_truncated_zip_is_data_error(kaggle_stub: KaggleStub, tmp_path: Path) -> None:
    dest = _with_old_file(tmp_path)
    kaggle_stub.serve = "zip"
    kaggle_stub.truncate = True
    with pytest.raises(DataError):
        _download(dest)
    _assert_untouched(dest)


def test_connection_cut_midway_is_transient(kaggle_stub: KaggleStub, tmp_path: Path) -> None:
    dest = _with_old_file(tmp_path)
    kaggle_stub.cut_connection = True
    with pytest.raises(TransientError, match=r"network failure|connection ended"):
        _download(dest)
    _assert_untouched(dest)


def test_wrong_header_names_the_column(kaggle_stub: KaggleStub, tmp_path: Path) -> None:
    dest = _with_old_file(tmp_path)
    columns = list(RAW_COLUMNS)
    columns[2] = "loan_amount"
    kaggle_stub.payload = make_raw_csv_gz(columns=columns)
    with pytest.raises(DataError, match=r"column 3 is 'loan_amount', expected 'loan_amnt'"):
        _download(dest)
    _assert_untouched(dest)


def test_too_small_is_data_error(kaggle_stub: KaggleStub, tmp_path: Path) -> None:
    dest = _with_old_file(tmp_path)
    with pytest.raises(DataError, match="expected at least"):
        download_kaggle_file(DATASET, FILE, dest, 10**9)
    _assert_untouched(dest)


def test_not_an_archive_is_data_error(kaggle_stub: KaggleStub, tmp_path: Path) -> None:
    kaggle_stub.payload = b"<html>" + b"x" * 4096
    with pytest.raises(DataError, match="neither a gzip nor a zip"):
        _download(_dest(tmp_path))
    assert not _dest(tmp_path).parent.exists()  # a failed first download creates no data/raw/


def test_connection_refused_is_transient(
    kaggle_stub: KaggleStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kagglesdk.kaggle_env import KaggleEnv, _env_to_endpoint

    with KaggleStub() as other:  # a port that was just free and is closed again
        closed = other.url
    monkeypatch.setitem(_env_to_endpoint, KaggleEnv.LOCAL, closed)
    with pytest.raises(TransientError, match="network failure"):
        _download(_dest(tmp_path))


def test_timeout_is_transient(kaggle_stub: KaggleStub, tmp_path: Path) -> None:
    kaggle_stub.delay_s = 1.5
    with pytest.raises(TransientError, match="network failure"):
        _download(_dest(tmp_path), timeout_s=0.3)


def test_missing_credentials_is_permanent_and_silent(
    kaggle_stub: KaggleStub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    loaded = {name: name in sys.modules for name in ("kaggle", "kagglesdk")}

    with pytest.raises(PermanentError, match="KAGGLE_USERNAME and KAGGLE_KEY"):
        _download(_dest(tmp_path))

    assert capsys.readouterr().out == ""
    assert {name: name in sys.modules for name in loaded} == loaded
    assert kaggle_stub.requests == []


def test_bad_dataset_slug_is_config_error(kaggle_stub: KaggleStub, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="owner/name"):
        download_kaggle_file("lending-club", FILE, _dest(tmp_path), MIN_BYTES)
    assert kaggle_stub.requests == []


def test_fresh_process_without_credentials_prints_nothing(tmp_path: Path) -> None:
    """The module imports neither `kaggle` nor `kagglesdk` up front, so no banner can appear."""
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from src.pipelines.acquisition.kaggle import download_kaggle_file
        from src.utils.errors import PermanentError
        assert "kaggle" not in sys.modules and "kagglesdk" not in sys.modules
        try:
            download_kaggle_file({DATASET!r}, {FILE!r}, Path({str(_dest(tmp_path))!r}), 1)
        except PermanentError as exc:
            print("PermanentError", exc, file=sys.stderr)
        """
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout == ""
    assert "PermanentError" in done.stderr and "KAGGLE_USERNAME" in done.stderr
