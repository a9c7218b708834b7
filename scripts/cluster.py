"""A Spark standalone cluster on this machine, from pyspark's own launcher (`make cluster-up`).

    python -m scripts.cluster up      master + `spark.cluster.workers` workers, waits for them
    python -m scripts.cluster down    stops them (pid files), workers first
    python -m scripts.cluster status  the master's view: alive workers, cores, running apps

In a container, one daemon in the foreground (docker/docker-compose.yml):
    python -m scripts.cluster master --host spark-master
    python -m scripts.cluster worker spark://spark-master:7077

Settings come from `spark.cluster` in params.yaml; flags override them (the tests use free ports).
Logs and pid files go to `spark.cluster.dir` (default `.cluster/`, git-ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyspark

from src.utils.config import ClusterConfig, load_config

SPARK_HOME = Path(pyspark.__file__).resolve().parent
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0


def master_url(cluster: ClusterConfig) -> str:
    return f"spark://{cluster.host}:{cluster.master_port}"


def _daemon_env(cluster: ClusterConfig) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SPARK_HOME=str(SPARK_HOME),
        SPARK_LOCAL_IP=cluster.host,
        SPARK_DAEMON_MEMORY=cluster.daemon_memory,
        # Executors the workers launch run Python tasks with this interpreter unless the
        # application says otherwise (get_spark sets the driver's own).
        PYSPARK_PYTHON=env.get("PYSPARK_PYTHON", sys.executable),
    )
    return env


def _launch(name: str, args: list[str], folder: Path, env: dict[str, str]) -> int:
    """Start one daemon in its own session, output to <name>.log, pid to <name>.pid."""
    log_file = open(folder / f"{name}.log", "ab")  # noqa: SIM115  (the child keeps it open)
    proc = subprocess.Popen(
        [str(SPARK_HOME / "bin" / "spark-class"), *args],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=folder,
        start_new_session=True,  # survives the make/pytest process that started it
    )
    log_file.close()
    (folder / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def master_state(cluster: ClusterConfig) -> dict | None:
    """The master's JSON status page, or None while it does not answer."""
    url = f"http://{cluster.host}:{cluster.master_webui_port}/json/"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pids(folder: Path) -> dict[str, int]:
    out = {}
    for pid_file in sorted(folder.glob("*.pid")):
        try:
            out[pid_file.stem] = int(pid_file.read_text().strip())
        except ValueError:
            continue
    return out


def up(cluster: ClusterConfig, folder: Path) -> str:
    """Start the master and the workers; return the master URL once every worker is registered."""
    folder.mkdir(parents=True, exist_ok=True)
    running = {name: pid for name, pid in _pids(folder).items() if _alive(pid)}
    if running:
        raise SystemExit(f"cluster: already running in {folder} ({running}); run `down` first")
    env = _daemon_env(cluster)
    url = master_url(cluster)
    _launch(
        "master",
        [MASTER_CLASS, "--host", cluster.host, "--port", str(cluster.master_port),
         "--webui-port", str(cluster.master_webui_port)],
        folder,
        env,
    )
    for i in range(1, cluster.workers + 1):
        work_dir = folder / f"worker-{i}"
        work_dir.mkdir(exist_ok=True)
        _launch(
            f"worker-{i}",
            [WORKER_CLASS, url, "--host", cluster.host, "--cores", str(cluster.worker_cores),
             "--memory", cluster.worker_memory, "--work-dir", str(work_dir),
             "--webui-port", "0"],
            folder,
            env,
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = [n for n, pid in _pids(folder).items() if not _alive(pid)]
        if dead:
            down(folder)
            raise SystemExit(f"cluster: {dead} exited at start; see {folder}/<name>.log")
        state = master_state(cluster)
        if state and state.get("aliveworkers", 0) >= cluster.workers:
            print(f"cluster: {url} up, {state['aliveworkers']} workers, {state['cores']} cores, "
                  f"web UI http://{cluster.host}:{cluster.master_webui_port}, logs in {folder}")
            return url
        time.sleep(0.5)
    down(folder)
    raise SystemExit(f"cluster: workers not registered after {READY_TIMEOUT_S:.0f} s; "
                     f"see {folder}/*.log")


def down(folder: Path) -> None:
    """Stop every daemon with a pid file in `folder`: workers first, SIGTERM then SIGKILL."""
    pids = _pids(folder)
    order = sorted(pids, key=lambda name: name == "master")
    for name in order:
        pid = pids[name]
        if _alive(pid):
            # Its own session: the JVM and everything it forked (executors, Python workers).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.2)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _reap(pid)
        (folder / f"{name}.pid").unlink(missing_ok=True)
    if pids:
        print(f"cluster: stopped {', '.join(order)}")


def _reap(pid: int) -> None:
    # A daemon started by this very process is its child: collect it so it is not a zombie.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def foreground(
    role: str, host: str | None, url: str | None, cluster: ClusterConfig, folder: Path
) -> None:
    """Replace this process with one daemon (a container's main process), reachable at `host`."""
    host = host or socket.gethostbyname(socket.gethostname())
    env = _daemon_env(cluster.model_copy(update={"host": host}))
    # Bind where others can reach this container, not the loopback of the image's default.
    env["SPARK_LOCAL_IP"] = socket.gethostbyname(host)
    if role == "master":
        args = [MASTER_CLASS, "--host", host, "--port", str(cluster.master_port),
                "--webui-port", str(cluster.master_webui_port)]
    else:
        if not url:
            raise SystemExit("cluster worker: give the master URL, e.g. spark://spark-master:7077")
        folder.mkdir(parents=True, exist_ok=True)
        args = [WORKER_CLASS, url, "--host", host, "--cores", str(cluster.worker_cores),
                "--memory", cluster.worker_memory, "--work-dir", str(folder / "work")]
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    os.execve(spark_class, [spark_class, *args], env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "master", "worker"])
    parser.add_argument("master_url", nargs="?", default=None, help="worker: the master's URL")
    parser.add_argument("--host", default=None, help="master/worker: the address to advertise")
    parser.add_argument("--params", type=Path, default=None)
    parser.add_argument("--dir", type=Path, default=None, help="default spark.cluster.dir")
    parser.add_argument("--master-port", type=int, default=None)
    parser.add_argument("--webui-port", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    overrides = {
        "master_port": args.master_port,
        "master_webui_port": args.webui_port,
        "workers": args.workers,
    }
    cluster = cfg.spark.cluster.model_copy(
        update={k: v for k, v in overrides.items() if v is not None}
    )
    folder = (args.dir or cfg.path(cluster.dir)).resolve()
    if args.command in ("master", "worker"):
        foreground(args.command, args.host, args.master_url, cluster, folder)
    if args.command == "up":
        up(cluster, folder)
    elif args.command == "down":
        down(folder)
    else:
        state = master_state(cluster)
        if state is None:
            print(f"cluster: no master answers at {master_url(cluster)}")
            return 1
        print(json.dumps({k: state.get(k) for k in (
            "url", "status", "aliveworkers", "cores", "coresused", "memory", "memoryused",
            "activeapps")}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
