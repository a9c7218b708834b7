"""A scriptable stub of the Kaggle API on 127.0.0.1, for the real kagglesdk client to talk to.

Usage from a test module (import both fixtures; pytest registers them as `kaggle_stub` and
`kaggle_stub_server`, and the `_fixture` names keep ruff's F811 quiet):

    from tests.kaggle_stub import (  # noqa: F401
        KaggleStub,
        kaggle_stub_fixture,
        kaggle_stub_server_fixture,
    )

    def test_retry(kaggle_stub: KaggleStub, tmp_path: Path) -> None:
        kaggle_stub.download_statuses = [503, 503]   # then 200
        ...
        assert len(kaggle_stub.download_requests) == 3

`kaggle_stub_server` is one server per session; `kaggle_stub` resets it for each test and points
the client at it (KAGGLE_API_ENVIRONMENT=LOCALHOST, the kagglesdk endpoint, fake credentials, a
private HOME), all through monkeypatch so nothing leaks into other tests.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import random
import sys
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

import pytest

from src.core.raw_schema import RAW_COLUMNS

DOWNLOAD_PATH = "/api/v1/datasets.DatasetApiService/DownloadDataset"
FILE_PREFIX = "/stub-files/"
STUB_USERNAME = "stub-user"
STUB_KEY = "stub-key-0123456789"


def make_raw_csv_gz(rows: int = 40, columns: Sequence[str] = RAW_COLUMNS, seed: int = 0) -> bytes:
    """A small gzip CSV in the raw layout: `columns` header, `rows` rows of random numbers."""
    rng = random.Random(seed)
    lines = [",".join(columns)]
    # Random digits compress poorly, so half of the gzip is still far above a small min_bytes.
    lines += [",".join(str(rng.randrange(10**6)) for _ in columns) for _ in range(rows)]
    return gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)


def zip_holding(member_name: str, payload: bytes) -> bytes:
    """A zip archive holding `payload` under `member_name` (how Kaggle may ship a file)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member_name, payload)
    return buffer.getvalue()


@dataclass(frozen=True)
class RecordedRequest:
    """One request the stub received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (the client sends its request objects as JSON)."""
        return json.loads(self.body or b"{}")


class KaggleStub:
    """The two endpoints a dataset file download uses, with scriptable failures.

    POST DOWNLOAD_PATH checks HTTP Basic credentials, then answers 302 to FILE_PREFIX/<name>;
    GET of that URL serves `payload`. Knobs (all restored by `reset()`):
      download_statuses / file_statuses: statuses to answer, one popped per request; empty -> OK
      reject_credentials: answer 401 to every download request, whatever the credentials
      payload: the .csv.gz bytes served; serve: "gzip" (the file itself) or "zip" (a zip holding it)
      truncate: serve only the first half of the bytes (with a matching Content-Length)
      cut_connection: announce the full Content-Length but close the socket halfway
      delay_s: sleep this long before answering a download request (for timeout tests)
    """

    def __init__(self, username: str = STUB_USERNAME, key: str = STUB_KEY) -> None:
        self.username = username
        self.key = key
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._requests: list[RecordedRequest] = []
        self.reset()

    def reset(self) -> None:
        """Back to a healthy server with the default payload and no recorded requests."""
        with self._lock:
            self.download_statuses: list[int] = []
            self.file_statuses: list[int] = []
            self.reject_credentials = False
            self.payload: bytes = make_raw_csv_gz()
            self.serve: Literal["gzip", "zip"] = "gzip"
            self.truncate = False
            self.cut_connection = False
            self.delay_s = 0.0
            self._requests = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> KaggleStub:
        """Serve on 127.0.0.1 on a free port, in a daemon thread."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.stub = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="kaggle-stub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> KaggleStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:PORT (what kagglesdk's LOCAL endpoint must be)."""
        if self._server is None:
            raise RuntimeError("the Kaggle stub is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- what happened -----------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received since the last reset, in order."""
        with self._lock:
            return list(self._requests)

    @property
    def download_requests(self) -> list[RecordedRequest]:
        """The POSTs to DownloadDataset: one per download attempt."""
        return [r for r in self.requests if r.path == DOWNLOAD_PATH]

    @property
    def file_requests(self) -> list[RecordedRequest]:
        """The GETs of the redirected file URL."""
        return [r for r in self.requests if r.path.startswith(FILE_PREFIX)]

    # -- pointing the client here ------------------------------------------------------------

    def point_client_here(self, monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
        """Send kagglesdk (and `kaggle`, if imported) to this stub with the stub's fake credentials.

        `home` becomes HOME so a developer's ~/.kaggle tokens cannot take over the auth.
        """
        from kagglesdk.kaggle_env import KaggleEnv, _env_to_endpoint

        monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
        monkeypatch.setitem(_env_to_endpoint, KaggleEnv.LOCAL, self.url)
        monkeypatch.setenv("KAGGLE_USERNAME", self.username)
        monkeypatch.setenv("KAGGLE_KEY", self.key)
        for name in ("KAGGLE_API_TOKEN", "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_CONFIG_DIR"):
            monkeypatch.delenv(name, raising=False)
        home.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv("HOME", str(home))
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.setenv(name, "127.0.0.1,localhost")
        # `kaggle` decides on --local once, when its class is created; fix it up if already loaded.
        extended = sys.modules.get("kaggle.api.kaggle_api_extended")
        if extended is not None and "--local" not in extended.KaggleApi.args:
            monkeypatch.setattr(extended.KaggleApi, "args", [*extended.KaggleApi.args, "--local"])

    # -- used by the handler -----------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _pop(self, queue: list[int]) -> int | None:
        with self._lock:
            return queue.pop(0) if queue else None

    def _authorized(self, header: str | None) -> bool:
        if self.reject_credentials or not header or not header.startswith("Basic "):
            return False
        try:
            user, _, key = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return (user, key) == (self.username, self.key)

    def _file_bytes(self, file_name: str) -> bytes:
        body = zip_holding(file_name, self.payload) if self.serve == "zip" else self.payload
        return body[: len(body) // 2] if self.truncate else body


class _Handler(BaseHTTPRequestHandler):
    server_version = "KaggleStub/1.0"

    @property
    def stub(self) -> KaggleStub:
        return self.server.stub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean

    def _read_and_record(self) -> RecordedRequest:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = RecordedRequest(self.command, self.path, dict(self.headers.items()), body)
        self.stub._record(request)
        return request

    def _error(self, status: int, message: str) -> None:
        # Kaggle answers errors with a JSON {code, message}; kagglesdk turns that into HTTPError.
        body = json.dumps({"code": status, "message": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        request = self._read_and_record()
        stub = self.stub
        if request.path != DOWNLOAD_PATH:
            self._error(404, f"stub: no endpoint {request.path}")
            return
        if stub.delay_s:
            time.sleep(stub.delay_s)
        if not stub._authorized(self.headers.get("Authorization")):
            self._error(401, "Unauthenticated")
            return
        status = stub._pop(stub.download_statuses)
        if status is not None and status >= 400:
            self._error(status, f"stub: scripted HTTP {status}")
            return
        ask = request.json()
        file_name = ask.get("fileName") or f"{ask.get('datasetSlug', 'dataset')}.zip"
        name = f"{file_name}.zip" if stub.serve == "zip" else file_name
        self.send_response(302)
        self.send_header("Location", f"{stub.url}{FILE_PREFIX}{quote(name)}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        request = self._read_and_record()
        stub = self.stub
        if not request.path.startswith(FILE_PREFIX):
            self._error(404, f"stub: no endpoint {request.path}")
            return
        status = stub._pop(stub.file_statuses)
        if status is not None and status >= 400:
            self._error(status, f"stub: scripted HTTP {status}")
            return
        name = unquote(request.path[len(FILE_PREFIX) :])
        body = stub._file_bytes(name.removesuffix(".zip") if stub.serve == "zip" else name)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if stub.cut_connection:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture(scope="session", name="kaggle_stub_server")
def kaggle_stub_server_fixture() -> Iterator[KaggleStub]:
    """One stub server for the whole session (the port stays the same)."""
    with KaggleStub() as stub:
        yield stub


@pytest.fixture(name="kaggle_stub")
def kaggle_stub_fixture(
    kaggle_stub_server: KaggleStub,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> KaggleStub:
    """The session stub, reset, with the client pointed at it for this test only."""
    kaggle_stub_server.reset()
    kaggle_stub_server.point_client_here(monkeypatch, tmp_path_factory.mktemp("kaggle-home"))
    return kaggle_stub_server
