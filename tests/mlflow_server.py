"""A real `mlflow server` subprocess on 127.0.0.1 for tests: SQLite backend, local artifact folder.

    with MlflowServer(tmp_path / "registry") as server:      # up and answering /health
        os.environ["MLFLOW_TRACKING_URI"] = server.uri

`MlflowServer(..., start_delay_s=3).start_later()` reserves the port at once and launches the
process after the delay (a registry that comes up late); `stop()` then `start()` again restarts it
on the same port and the same stores (a registry that went down and came back).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"
HEALTH_PATH = "/health"
# A cold start imports MLflow, migrates the SQLite schema and boots uvicorn: seconds on 2 cores.
STARTUP_TIMEOUT_S = 90.0
HEALTH_POLL_S = 0.25
HEALTH_REQUEST_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 15.0
# One worker is plenty for a test and keeps the start fast.
WORKERS = "1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _mlflow_executable() -> str:
    # The venv's own CLI, so the server runs the same MLflow as the client under test.
    candidate = Path(sys.executable).with_name("mlflow")
    return str(candidate) if candidate.is_file() else "mlflow"


class MlflowServer:
    """One `mlflow server` process with its own SQLite store and artifact folder under `root`."""

    def __init__(self, root: Path, port: int | None = None, start_delay_s: float = 0.0) -> None:
        self.root = Path(root)
        self.port = port or free_port()
        self.start_delay_s = start_delay_s
        self._process: subprocess.Popen[bytes] | None = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def _command(self) -> list[str]:
        db = (self.root / "mlflow.db").resolve()
        artifacts = (self.root / "artifacts").resolve()
        return [
            _mlflow_executable(), "server",
            "--host", HOST,
            "--port", str(self.port),
            "--workers", WORKERS,
            "--backend-store-uri", f"sqlite:///{db}",
            "--artifacts-destination", str(artifacts),
        ]

    def _launch(self) -> None:
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
        # The server must not point at itself (or at another server) as a client.
        env.pop("MLFLOW_TRACKING_URI", None)
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return
            log = self.log_path.open("ab")
            # Own process group: stop() ends the server and its uvicorn workers together.
            self._process = subprocess.Popen(
                self._command(), cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()

    def healthy(self) -> bool:
        """True when `/health` answers 200."""
        try:
            with urllib.request.urlopen(
                self.uri + HEALTH_PATH, timeout=HEALTH_REQUEST_TIMEOUT_S
            ) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Block until `/health` answers; fail with the server's log tail if it never does."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.healthy():
                return
            process = self._process
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({process.returncode}):\n{self._tail()}")
            time.sleep(HEALTH_POLL_S)
        raise TimeoutError(f"mlflow server at {self.uri} not healthy after {timeout_s} s:\n"
                           f"{self._tail()}")

    def _tail(self, lines: int = 30) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> MlflowServer:
        """Launch now and wait until healthy."""
        self._launch()
        self.wait_healthy()
        return self

    def start_later(self) -> MlflowServer:
        """Launch after `start_delay_s` in the background; returns at once."""
        self._timer = threading.Timer(self.start_delay_s, self._launch)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop the server (and a pending delayed start); the stores stay for a restart."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer.join()
            self._timer = None
        with self._lock:
            process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # The process group this server leads, created by us in _launch.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)

    def __enter__(self) -> MlflowServer:
        return self.start_later() if self.start_delay_s > 0 else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextmanager
def mlflow_server(root: Path, start_delay_s: float = 0.0) -> Iterator[MlflowServer]:
    """Context manager form: a running (or, with a delay, soon running) server, stopped at exit."""
    server = MlflowServer(root, start_delay_s=start_delay_s)
    with server:
        yield server
