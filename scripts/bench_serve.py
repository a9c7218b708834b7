"""Latency and throughput of POST /predict, ONNX backend against the Spark backend, on 127.0.0.1.

    python -m scripts.bench_serve                          # 50, 200, 500 req/s for 20 s each
    python -m scripts.bench_serve --duration 5 --rates 50,200

The API runs in a uvicorn subprocess (one worker) on a bundle folder (default `models/registered`,
written by `dvc repro`). The load comes from a second process at fixed open-loop rates: request i
is sent at t0 + i/rate whether or not earlier ones have come back, and its latency is counted from
that scheduled time, so a server that falls behind shows it (no coordinated omission). Requests
are real loan applications from the LendingClub sample when present, else synthetic ones.
Results are printed and written to `reports/bench_serve.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from src.utils.atomic import atomic_write_json
from src.utils.config import Config, load_config

DEFAULT_RATES = (50, 200, 500)
DEFAULT_SPARK_RATES = (1,)
DEFAULT_DURATION_S = 20.0
DEFAULT_CONNECTIONS = 64
APPLICATIONS = 2000
WARMUP_REQUESTS = 200
REQUEST_TIMEOUT_S = 10.0
# After the last scheduled send, how long stragglers may take before they count as errors.
DRAIN_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 240.0
READY_POLL_S = 0.25
PERCENTILES = (50, 95, 99)
REPORT = "reports/bench_serve.json"
SYNTHETIC_ROWS = 5000
MS = 1000.0
OK = 200


class RateResult(BaseModel):
    """One backend at one offered rate."""

    backend: str
    rate: float
    duration_s: float
    sent: int
    ok: int
    errors: int
    error_kinds: dict[str, int]
    throughput_rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    sender_lag_p99_ms: float | None


# --- the applications ----------------------------------------------------------------------------


def _fields(cfg: Config) -> list[str]:
    return [*cfg.prep.numeric, *cfg.prep.categorical, *cfg.prep.dates, "issue_d"]


def _read_applications(path: Path, fields: Sequence[str], limit: int) -> list[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    apps = []
    with opener(path, "rt", newline="") as handle:  # type: ignore[operator]
        for row in csv.DictReader(handle):
            if not (row.get("loan_amnt") or "").strip():
                continue  # footer lines
            apps.append({f: row[f] for f in fields if (row.get(f) or "").strip()})
            if len(apps) >= limit:
                break
    return apps


def _valid(cfg: Config, apps: list[dict[str, str]]) -> list[dict[str, str]]:
    # Only applications the API accepts: the benchmark measures predictions, not refusals.
    from pydantic import ValidationError

    from src.serving.schemas import application_model

    model = application_model(cfg.prep)
    valid = []
    for app in apps:
        try:
            model.model_validate(app)
        except ValidationError:
            continue
        valid.append(app)
    return valid


def load_applications(cfg: Config, sample: Path | None) -> tuple[list[dict[str, str]], str]:
    """Real applications from the sample file when it exists, else synthetic ones."""
    path = sample or cfg.path(cfg.data.file_path)
    if path.is_file():
        apps = _read_applications(path, _fields(cfg), APPLICATIONS)
        return _valid(cfg, apps), f"real sample {path}"
    from src.pipelines.acquisition.synthetic import write_synthetic_loans

    with tempfile.TemporaryDirectory() as folder:
        synthetic = Path(folder) / "loans.csv.gz"
        write_synthetic_loans(synthetic, rows=SYNTHETIC_ROWS, seed=cfg.seed,
                              chunk_rows=SYNTHETIC_ROWS)
        apps = _read_applications(synthetic, _fields(cfg), APPLICATIONS)
    return _valid(cfg, apps), f"synthetic loans ({path} is absent)"


# --- the load generator (runs in its own process) ------------------------------------------------


def _request_bytes(host: str, port: int, body: bytes) -> bytes:
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _one(
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None],
    host: str, port: int, payload: bytes,
) -> int:
    connection = await pool.get()
    try:
        if connection is None:
            connection = await asyncio.open_connection(host, port)
        reader, writer = connection
        writer.write(payload)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        pool.put_nowait(connection)
        return status
    except BaseException:
        if connection is not None:
            connection[1].close()
        pool.put_nowait(None)  # the slot comes back; a new connection is opened on next use
        raise


async def _drive(
    host: str, port: int, bodies: list[bytes], rate: float, duration: float, connections: int
) -> dict[str, Any]:
    payloads = [_request_bytes(host, port, b) for b in bodies]
    pool: asyncio.Queue[Any] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(None)
    latencies: list[float] = []
    # How late the generator itself sent each request: part of every latency it reports.
    lags: list[float] = []
    errors: dict[str, int] = {}
    total = int(rate * duration)
    loop = asyncio.get_running_loop()
    started = loop.time()
    finished_at = started

    async def send(i: int, scheduled: float) -> None:
        nonlocal finished_at
        lags.append(loop.time() - scheduled)
        try:
            status = await asyncio.wait_for(
                _one(pool, host, port, payloads[i % len(payloads)]), REQUEST_TIMEOUT_S
            )
        except Exception as exc:
            kind = type(exc).__name__
            errors[kind] = errors.get(kind, 0) + 1
            return
        now = loop.time()
        finished_at = max(finished_at, now)
        if status == OK:
            latencies.append(now - scheduled)
        else:
            errors[f"http_{status}"] = errors.get(f"http_{status}", 0) + 1

    tasks = []
    for i in range(total):
        scheduled = started + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i, scheduled)))
    _, pending = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    if pending:
        errors["not_finished"] = len(pending)
    elapsed = max(finished_at - started, duration)
    return {"latencies": latencies, "lags": lags, "errors": errors, "sent": total,
            "elapsed": elapsed}


def _worker(argv: Sequence[str]) -> int:
    """`_load` mode: drive one rate against a running server, print the raw result as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--bodies", type=Path)
    parser.add_argument("--rate", type=float)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--connections", type=int)
    args = parser.parse_args(argv)
    bodies = [line.encode() for line in args.bodies.read_text().splitlines() if line]
    result = asyncio.run(
        _drive(args.host, args.port, bodies, args.rate, args.duration, args.connections)
    )
    print(json.dumps(result))
    return 0


# --- the server and the runs ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_S) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def start_server(
    params: Path | None, bundle: Path, backend: str, port: int, log: Path
) -> subprocess.Popen[bytes]:
    """The API in a uvicorn subprocess (one worker, access log off), stderr to `log`."""
    command = [sys.executable, "-m", "src.serving", "--host", "127.0.0.1", "--port", str(port),
               "--backend", backend, "--bundle", str(bundle), "--log-level", "warning"]
    if params is not None:
        command += ["--params", str(params)]
    with log.open("wb") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)


def wait_ready(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    """Block until GET /ready is 200; exit with the server log if it dies or never gets there."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while _get(f"{url}/ready") != OK:
        if server.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"bench-serve: the server did not become ready:\n{log.read_text()[-3000:]}")
        time.sleep(READY_POLL_S)


def _percentile(sorted_ms: list[float], q: float) -> float | None:
    if not sorted_ms:
        return None
    index = min(len(sorted_ms) - 1, max(0, round(q / 100 * len(sorted_ms) + 0.5) - 1))
    return round(sorted_ms[index], 3)


def run_rate(
    backend: str, host: str, port: int, bodies_file: Path, rate: float, duration: float,
    connections: int,
) -> RateResult:
    """Drive one rate from a second process and summarize it."""
    command = [sys.executable, "-m", "scripts.bench_serve", "_load", "--host", host,
               "--port", str(port), "--bodies", str(bodies_file), "--rate", str(rate),
               "--duration", str(duration), "--connections", str(connections)]
    done = subprocess.run(command, capture_output=True, text=True, check=True,
                          timeout=duration + DRAIN_TIMEOUT_S + READY_TIMEOUT_S)
    raw = json.loads(done.stdout)
    ms = sorted(x * MS for x in raw["latencies"])
    errors = sum(raw["errors"].values())
    return RateResult(
        backend=backend, rate=rate, duration_s=duration, sent=raw["sent"], ok=len(ms),
        errors=errors, error_kinds=raw["errors"],
        throughput_rps=round(len(ms) / raw["elapsed"], 1),
        p50_ms=_percentile(ms, PERCENTILES[0]), p95_ms=_percentile(ms, PERCENTILES[1]),
        p99_ms=_percentile(ms, PERCENTILES[2]),
        mean_ms=round(statistics.fmean(ms), 3) if ms else None,
        sender_lag_p99_ms=_percentile(sorted(x * MS for x in raw["lags"]), PERCENTILES[2]),
    )


def bench_backend(
    backend: str, args: argparse.Namespace, bodies_file: Path, rates: Sequence[float],
    first_body: bytes, workdir: Path,
) -> list[RateResult]:
    """Start the server with `backend`, warm it up, run every rate, stop it."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / f"server-{backend}.log"
    server = start_server(args.params, args.bundle, backend, port, log)
    try:
        wait_ready(url, server, log)
        status, answer = _post(f"{url}/predict", first_body)
        if status != OK:
            sys.exit(f"bench-serve: /predict answered {status}: {answer[:500]!r}")
        print(f"{backend}: ready on {url}; example answer {answer.decode()[:160]}…", flush=True)
        warmup = min(WARMUP_REQUESTS, max(rates) * 2)
        for _ in range(int(warmup)):
            _post(f"{url}/predict", first_body)
        results = []
        for rate in rates:
            result = run_rate(backend, "127.0.0.1", port, bodies_file, rate, args.duration,
                              args.connections)
            print(_row(result), flush=True)
            results.append(result)
        return results
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


HEADER = (f"{'backend':<8}{'rate/s':>8}{'sent':>7}{'ok':>7}{'errors':>7}{'achieved/s':>11}"
          f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'sender lag p99':>16}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _row(r: RateResult) -> str:
    return (f"{r.backend:<8}{r.rate:>8.0f}{r.sent:>7}{r.ok:>7}{r.errors:>7}"
            f"{r.throughput_rps:>11.1f}{_fmt(r.p50_ms):>9}{_fmt(r.p95_ms):>9}{_fmt(r.p99_ms):>9}"
            f"{_fmt(r.sender_lag_p99_ms):>16}")


def _rates(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Benchmark the backends and print the table and the p50 ratio."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_load"]:
        return _worker(argv[1:])
    parser = argparse.ArgumentParser(prog="bench_serve", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=None)
    parser.add_argument("--bundle", type=Path, default=None, help="default register.bundle_dir")
    parser.add_argument("--rates", type=_rates, default=list(DEFAULT_RATES),
                        help="ONNX rates, requests/s, comma-separated")
    parser.add_argument("--spark-rates", type=_rates, default=list(DEFAULT_SPARK_RATES),
                        help="Spark backend rates (a Spark job per request: keep them low)")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S,
                        help="seconds per rate")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--backends", default="onnx,spark")
    parser.add_argument("--sample", type=Path, default=None, help="raw CSV(.gz) of applications")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    args.bundle = (args.bundle or cfg.path(cfg.registry.bundle_dir)).resolve()
    if not (args.bundle / "serving.json").is_file():
        print(
            f"bench-serve: no serving bundle at {args.bundle}. Make one with `make pipeline` "
            "(dvc repro: the register stage writes models/registered), or pass --bundle FOLDER.",
            file=sys.stderr,
        )
        return 2
    apps, origin = load_applications(cfg, args.sample)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        workdir = Path(folder)
        bodies_file = workdir / "bodies.jsonl"
        bodies_file.write_text("\n".join(json.dumps(a) for a in apps) + "\n")
        print(f"bench-serve: {len(apps)} applications from {origin}; bundle {args.bundle}; "
              f"{os.cpu_count()} cores; {args.duration:g} s per rate", flush=True)
        print(HEADER, flush=True)
        results: list[RateResult] = []
        first = json.dumps(apps[0]).encode()
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            rates = args.rates if backend == "onnx" else args.spark_rates
            results += bench_backend(backend, args, bodies_file, rates, first, workdir)
    summary: dict[str, Any] = {"applications": origin, "bundle": str(args.bundle),
                               "results": [r.model_dump() for r in results]}
    by_backend = {b: [r for r in results if r.backend == b and r.p50_ms] for b in ("onnx", "spark")}
    if by_backend["onnx"] and by_backend["spark"]:
        # Both at their lowest offered rate: each backend's unloaded latency.
        onnx_p50 = min(by_backend["onnx"], key=lambda r: r.rate).p50_ms or 0.0
        spark_p50 = min(by_backend["spark"], key=lambda r: r.rate).p50_ms or 0.0
        ratio = round(spark_p50 / onnx_p50, 1) if onnx_p50 else None
        summary["p50_ratio_spark_over_onnx"] = ratio
        print(f"p50 Spark / p50 ONNX (lowest rates): {spark_p50:.2f} ms / {onnx_p50:.2f} ms "
              f"= {ratio}x", flush=True)
    atomic_write_json(cfg.path(REPORT), summary)
    print(f"bench-serve: written {cfg.path(REPORT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
