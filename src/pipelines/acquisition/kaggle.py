"""Download one file of a Kaggle dataset, verify all of it, and only then move it into place.

The HTTP work is done by `kagglesdk`, the client library under the `kaggle` package (same endpoint,
auth and redirect handling). It is imported lazily and `kaggle` itself is never imported:
`import kaggle` authenticates at import time and prints a help banner when credentials are missing.
`KaggleApi.dataset_download_file` is not used because it prints to stdout, retries network errors
itself with sleeps of up to a minute (retries belong to the supervisor) and sets no timeout.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import requests
import urllib3
from pydantic import BaseModel, ConfigDict
from requests.adapters import HTTPAdapter

from src.core.raw_schema import RAW_COLUMNS
from src.utils.atomic import atomic_path
from src.utils.errors import (
    ConfigError,
    DataError,
    PermanentError,
    PipelineError,
    TransientError,
)
from src.utils.logging import get_logger

if TYPE_CHECKING:
    from kagglesdk import KaggleClient

CREDENTIAL_VARS: tuple[str, str] = ("KAGGLE_USERNAME", "KAGGLE_KEY")
CONNECT_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 120.0  # per socket read, not for the whole (~400 MB) transfer

_CHUNK = 1 << 20
_MAX_HEADER_BYTES = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"


class DownloadSummary(BaseModel):
    """What `download_kaggle_file` put at `path`, and what it checked on the way."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    file_name: str
    path: Path
    bytes: int  # size of the gzip now at `path`
    sha256: str  # of the gzip now at `path`
    delivered_as: Literal["gzip", "zip"]  # what came over the wire
    downloaded_bytes: int
    uncompressed_bytes: int
    # Physical data lines after the header; a quoted newline in a free-text field counts twice.
    rows_checked: int
    columns: int
    seconds: float


def download_kaggle_file(
    dataset: str,
    file_name: str,
    dest: Path,
    min_bytes: int,
    *,
    timeout_s: float = READ_TIMEOUT_S,
) -> DownloadSummary:
    """Fetch `file_name` (a CSV.gz in the raw layout) of Kaggle `dataset` into `dest`, verified.

    Network faults raise TransientError, refusals PermanentError, a bad file DataError; `dest` is
    replaced atomically and only after every check passed, and no retry happens here.
    """
    dest = Path(dest)
    what = f"kaggle:{dataset}/{file_name}"
    owner, slug, version = _split_dataset(dataset, what)
    username, key = _credentials(what)
    log = get_logger(dataset=dataset, file=file_name)
    started = time.monotonic()
    log.info("kaggle.download.start", dest=str(dest), min_bytes=min_bytes)

    # Same filesystem as `dest` so the final move is a rename; `dest.parent` itself is not created
    # unless the download succeeds.
    workdir = Path(
        tempfile.mkdtemp(prefix=f".{dest.name}.download-", dir=_nearest_existing_dir(dest.parent))
    )
    try:
        raw = workdir / "download.part"
        downloaded = _fetch(owner, slug, version, file_name, raw, username, key, timeout_s, what)
        log.info("kaggle.download.received", bytes=downloaded)
        candidate, delivered_as = _unpack(raw, workdir / Path(file_name).name, file_name, what)
        size = candidate.stat().st_size
        if size < min_bytes:
            raise DataError(f"{what}: only {size} bytes arrived, expected at least {min_bytes}")
        sha256, uncompressed, rows = _verify_gzip_csv(candidate, what)
        with atomic_path(dest) as tmp:
            os.replace(candidate, tmp)
    except PipelineError as exc:
        log.error("kaggle.download.failed", error=type(exc).__name__, reason=str(exc))
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    summary = DownloadSummary(
        dataset=dataset,
        file_name=file_name,
        path=dest,
        bytes=size,
        sha256=sha256,
        delivered_as=delivered_as,
        downloaded_bytes=downloaded,
        uncompressed_bytes=uncompressed,
        rows_checked=rows,
        columns=len(RAW_COLUMNS),
        seconds=round(time.monotonic() - started, 3),
    )
    log.info(
        "kaggle.download.done",
        bytes=summary.bytes,
        sha256=summary.sha256,
        delivered_as=summary.delivered_as,
        rows_checked=summary.rows_checked,
        seconds=summary.seconds,
    )
    return summary


def _split_dataset(dataset: str, what: str) -> tuple[str, str, int | None]:
    parts = dataset.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(f"{what}: dataset must be 'owner/name' or 'owner/name/version'")
    if len(parts) == 3:
        if not parts[2].isdigit():
            raise ConfigError(f"{what}: dataset version {parts[2]!r} is not a number")
        return parts[0], parts[1], int(parts[2])
    return parts[0], parts[1], None


def _credentials(what: str) -> tuple[str, str]:
    values = {name: os.environ.get(name, "").strip() for name in CREDENTIAL_VARS}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise PermanentError(
            f"{what}: Kaggle credentials missing: set {' and '.join(missing)} (environment or .env)"
        )
    return values["KAGGLE_USERNAME"], values["KAGGLE_KEY"]


def _nearest_existing_dir(folder: Path) -> Path:
    folder = folder.absolute()
    while not folder.is_dir():
        folder = folder.parent
    return folder


class _TimeoutAdapter(HTTPAdapter):
    """An adapter that supplies a timeout when the caller gave none (kagglesdk never does)."""

    def __init__(self, timeout: tuple[float, float]) -> None:
        super().__init__()
        self._timeout = timeout

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        return super().send(request, **kwargs)


def _apply_timeout(client: KaggleClient, timeout_s: float) -> None:
    # kagglesdk keeps its requests.Session private; without this a stalled server hangs forever.
    session = getattr(client.http_client(), "_session", None)
    if not isinstance(session, requests.Session):
        get_logger().warning("kaggle.download.no_timeout", reason="kagglesdk session not found")
        return
    adapter = _TimeoutAdapter((min(CONNECT_TIMEOUT_S, timeout_s), timeout_s))
    session.mount("http://", adapter)
    session.mount("https://", adapter)


def _fetch(
    owner: str,
    slug: str,
    version: int | None,
    file_name: str,
    target: Path,
    username: str,
    key: str,
    timeout_s: float,
    what: str,
) -> int:
    """POST DownloadDataset (which redirects to the file), stream the body to `target`."""
    from kagglesdk import KaggleClient
    from kagglesdk.datasets.types.dataset_api_service import ApiDownloadDatasetRequest

    request = ApiDownloadDatasetRequest()
    request.owner_slug = owner
    request.dataset_slug = slug
    request.dataset_version_number = version
    request.file_name = file_name
    try:
        # env=None: kagglesdk reads KAGGLE_API_ENVIRONMENT now, so tests can point it at a stub.
        with KaggleClient(username=username, password=key) as client:
            _apply_timeout(client, timeout_s)
            response = client.datasets.dataset_api_client.download_dataset(request)
            try:
                return _stream_to_file(response, target, what)
            finally:
                response.close()
    except requests.HTTPError as exc:
        raise _from_http_error(exc, what) from exc
    except (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
        urllib3.exceptions.HTTPError,
    ) as exc:
        raise TransientError(f"{what}: network failure: {_one_line(exc)}") from exc
    except requests.RequestException as exc:
        raise PermanentError(f"{what}: request failed: {_one_line(exc)}") from exc


def _stream_to_file(response: requests.Response, target: Path, what: str) -> int:
    # Raw bytes, not iter_content: a server may label the .gz with Content-Encoding: gzip and
    # requests would then silently decompress it.
    written = 0
    with target.open("wb") as out:
        for chunk in response.raw.stream(_CHUNK, decode_content=False):
            out.write(chunk)
            written += len(chunk)
    expected = response.headers.get("Content-Length")
    if expected is not None and expected.isdigit() and int(expected) != written:
        raise TransientError(f"{what}: connection ended after {written} of {expected} bytes")
    return written


def _from_http_error(exc: requests.HTTPError, what: str) -> PipelineError:
    status = exc.response.status_code if exc.response is not None else None
    detail = _one_line(exc)
    if status in (401, 403):
        return PermanentError(
            f"{what}: Kaggle refused the credentials (HTTP {status}); "
            "check KAGGLE_USERNAME and KAGGLE_KEY"
        )
    if status == 404:
        return PermanentError(f"{what}: not found on Kaggle (HTTP 404); check dataset and file")
    if status is None or status in (408, 429) or status >= 500:
        return TransientError(f"{what}: Kaggle answered HTTP {status}: {detail}")
    return PermanentError(f"{what}: Kaggle rejected the request (HTTP {status}): {detail}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def _unpack(
    raw: Path, candidate: Path, file_name: str, what: str
) -> tuple[Path, Literal["gzip", "zip"]]:
    """Turn what arrived (the gzip itself, or a zip holding it) into `candidate`."""
    with raw.open("rb") as handle:
        magic = handle.read(4)
    if magic.startswith(_GZIP_MAGIC):
        os.replace(raw, candidate)
        return candidate, "gzip"
    if magic != _ZIP_MAGIC:
        raise DataError(f"{what}: received neither a gzip nor a zip (starts with {magic!r})")
    try:
        with zipfile.ZipFile(raw) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise DataError(f"{what}: zip member {bad!r} fails its CRC check")
            member = _pick_member(archive, file_name, what)
            with archive.open(member) as src, candidate.open("wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DataError(f"{what}: damaged zip archive: {_one_line(exc)}") from exc
    raw.unlink()
    return candidate, "zip"


def _pick_member(archive: zipfile.ZipFile, file_name: str, what: str) -> zipfile.ZipInfo:
    members = [info for info in archive.infolist() if not info.is_dir()]
    for info in members:
        if info.filename == file_name:
            return info
    by_base = [info for info in members if Path(info.filename).name == Path(file_name).name]
    if len(by_base) == 1:
        return by_base[0]
    if len(members) == 1:
        return members[0]
    names = ", ".join(info.filename for info in members[:5])
    raise DataError(f"{what}: the zip does not hold {file_name!r} (it holds: {names})")


def _verify_gzip_csv(path: Path, what: str) -> tuple[str, int, int]:
    """Decompress `path` to the end (streaming) and check its header; return sha256, size, lines.

    A truncated or corrupt archive fails here, not hours later in Spark.
    """
    digest = hashlib.sha256()
    decomp = zlib.decompressobj(wbits=31)  # 31: gzip wrapper, CRC and length are checked
    member_open = False
    header = bytearray()
    header_done = False
    newlines = 0
    uncompressed = 0
    last_byte = b""

    def consume(out: bytes) -> None:
        nonlocal header_done, newlines, uncompressed, last_byte
        if not out:
            return
        if not header_done:
            header.extend(out)
            if b"\n" in header:
                _check_header(bytes(header[: header.index(b"\n")]), what)
                header_done = True
            elif len(header) > _MAX_HEADER_BYTES:
                raise DataError(f"{what}: no header line in the first {_MAX_HEADER_BYTES} bytes")
        newlines += out.count(b"\n")
        uncompressed += len(out)
        last_byte = out[-1:]

    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                data = chunk
                while data:
                    member_open = True
                    consume(decomp.decompress(data))
                    if not decomp.eof:
                        break
                    # A gzip may hold several members back to back; start the next one.
                    data = decomp.unused_data
                    decomp = zlib.decompressobj(wbits=31)
                    member_open = False
    except zlib.error as exc:
        raise DataError(f"{what}: corrupt gzip data: {exc}") from exc
    if member_open:
        raise DataError(f"{what}: truncated gzip archive (ends before its end-of-stream marker)")
    if not header_done:
        if not header:
            raise DataError(f"{what}: the gzip holds no data")
        _check_header(bytes(header), what)
    lines = newlines + (1 if last_byte not in (b"", b"\n") else 0)
    rows = lines - 1
    if rows < 1:
        raise DataError(f"{what}: the CSV has a header but no rows")
    return digest.hexdigest(), uncompressed, rows


def _check_header(line: bytes, what: str) -> None:
    try:
        text = line.decode("utf-8-sig").rstrip("\r")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what}: the CSV header is not UTF-8: {exc}") from exc
    columns = next(csv.reader([text]), [])
    for position, (expected, got) in enumerate(zip(RAW_COLUMNS, columns, strict=False), start=1):
        if got != expected:
            raise DataError(
                f"{what}: CSV header column {position} is {got!r}, expected {expected!r}"
            )
    if len(columns) < len(RAW_COLUMNS):
        raise DataError(
            f"{what}: CSV header has {len(columns)} columns, expected {len(RAW_COLUMNS)}; "
            f"first missing: {RAW_COLUMNS[len(columns)]!r}"
        )
    if len(columns) > len(RAW_COLUMNS):
        raise DataError(
            f"{what}: CSV header has {len(columns)} columns, expected {len(RAW_COLUMNS)}; "
            f"first extra: {columns[len(RAW_COLUMNS)]!r}"
        )
