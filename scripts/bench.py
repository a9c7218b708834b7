"""Wall time and peak memory of each pipeline stage on the full real sample (`make bench`).

Each stage runs as its own supervisor process, as under DVC; memory is the peak proportional set
size (PSS) of the whole process tree (Python driver + Spark JVM + Python workers), sampled every
100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "lendingclub_2007_2011.csv.gz"
SAMPLE_INTERVAL_S = 0.1


def _memory(p: psutil.Process) -> int:
    # PSS splits a shared page among the processes that map it; summed RSS counts it once per
    # process, so pyspark's forked Python workers and a forked child of a large process would be
    # counted again. RSS where the OS gives no PSS.
    try:
        return int(p.memory_full_info().pss)
    except (AttributeError, psutil.AccessDenied):
        return int(p.memory_info().rss)


def _kind(p: psutil.Process, root: psutil.Process) -> str:
    # What the peak is made of tells a JVM heap grown to spark.driver_memory apart from Python
    # workers holding a partition each (pyspark's daemon forks them; xgboost's fit runs in them).
    if p.pid == root.pid:
        return "driver"
    if p.name() == "java":
        return "jvm"
    if any("pyspark" in part for part in p.cmdline()):
        return "workers"
    return "other"


def tree_memory_by_kind(proc: psutil.Process) -> dict[str, int]:
    """Bytes of memory (PSS, see _memory) of a process and its descendants, by kind of process."""
    parts: dict[str, int] = {}
    for p in [proc, *proc.children(recursive=True)]:
        try:
            kind = _kind(p, proc)
            parts[kind] = parts.get(kind, 0) + _memory(p)
        except psutil.NoSuchProcess:
            continue
    return parts


class Measurement(NamedTuple):
    seconds: float
    peak: int
    code: int
    peak_by_kind: dict[str, int]


def peak_parts(by_kind: dict[str, int]) -> str:
    """`jvm 5.1G + workers 2.0G + driver 0.2G`: a peak's make-up, largest first."""
    parts = sorted(by_kind.items(), key=lambda kv: -kv[1])
    return " + ".join(f"{kind} {size / 2**30:.1f}G" for kind, size in parts)


def run_measured(cmd: list[str], cwd: Path) -> Measurement:
    """Run `cmd`; return wall seconds, peak tree memory in bytes and its make-up, the exit code."""
    # stderr goes to a file, not a pipe: a long stage logs more than a pipe holds, and a pipe
    # nobody reads until the end would block the stage mid-run.
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr)
        proc = psutil.Process(child.pid)
        peak, peak_by_kind = 0, {}
        while child.poll() is None:
            try:
                parts = tree_memory_by_kind(proc)
            except psutil.NoSuchProcess:
                break
            if (total := sum(parts.values())) > peak:
                peak, peak_by_kind = total, parts
            time.sleep(SAMPLE_INTERVAL_S)
        child.wait()
        seconds = time.perf_counter() - started
        if child.returncode:
            stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - 2000))
            sys.stderr.write(stderr.read().decode(errors="replace"))
    return Measurement(seconds, peak, child.returncode, peak_by_kind)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sample", type=Path, default=Path(os.environ.get("CREDIT_RISK_SAMPLE", SAMPLE))
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        default=["fetch", "prep", "split", "train_sup", "train_unsup", "evaluate", "register"],
    )
    parser.add_argument(
        "--keep", type=Path, default=None,
        help="run in this folder and keep it (reports, models, mlruns) instead of a temporary one",
    )
    args = parser.parse_args()
    if not args.sample.is_file():
        print(
            f"bench: real sample {args.sample} not found; set CREDIT_RISK_SAMPLE", file=sys.stderr
        )
        return 2
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source="file", file_path=str(args.sample.resolve()))
    with tempfile.TemporaryDirectory(prefix="credit-risk-bench-") as tmp:
        root = Path(tmp) if args.keep is None else args.keep.resolve()
        root.mkdir(parents=True, exist_ok=True)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        print(f"bench: {args.sample.name}, {os.cpu_count()} cores, one process per stage")
        print(f"{'stage':<12} {'wall s':>8} {'peak MiB':>9}")
        for stage in args.stages:
            cmd = [
                sys.executable,
                "-m",
                "src.supervisor",
                "--params",
                str(root / "params.yaml"),
                "run",
                stage,
            ]
            seconds, peak, code, by_kind = run_measured(cmd, REPO)
            print(
                f"{stage:<12} {seconds:>8.1f} {peak / 2**20:>9.0f}  ({peak_parts(by_kind)})",
                flush=True,
            )
            if code:
                print(f"bench: stage {stage} failed (exit {code})", file=sys.stderr)
                return code
        print_metrics(root / "reports" / "metrics.json")
        print_segments(root / "reports" / "train_unsup.json")
        print_registration(root / "reports" / "register.json")
    return 0


def print_segments(path: Path) -> None:
    """Each segmentation's bands on the training split, and the bands every k gave."""
    if not path.is_file():
        return
    result = json.loads(path.read_text())
    for name, model in result["models"].items():
        bands = ", ".join(
            f"{s['band']} {100 * s['default_rate']:.1f}% (n={s['size']:,})"
            for s in model["segments"]
        )
        print(f"\nsegments {name}: k={model['k']}, bands per k {model['bands_per_k']}: {bands}")


def print_registration(path: Path) -> None:
    """The register stage's decision and ONNX parity."""
    if not path.is_file():
        return
    r = json.loads(path.read_text())
    print(f"\nregistered v{r['version']} as {r['alias']}: {r['decision']}")
    print(f"ONNX parity (max |ONNX - Spark|): {r['onnx_max_abs_diff']:.2e}")


def print_metrics(path: Path) -> None:
    """The evaluate stage's figures, validation (selection) and test (report), when it ran."""
    if not path.is_file():
        return
    metrics = json.loads(path.read_text())
    print(
        f"\n{'model':<16} {'data':<10} {'AUC-ROC [95% CI]':<26} {'AUC-PR':>7} {'KS':>6} "
        f"{'Brier':>6} {'ECE':>6} {'thr':>6}"
    )
    for name, by_data in metrics.items():
        if not isinstance(by_data, dict) or "test" not in by_data:
            continue
        for data in ("validation", "test"):
            m = by_data.get(data) or {}
            if "auc_roc" not in m:
                continue
            ci = f"{m['auc_roc']:.4f} [{m['auc_roc_low']:.4f}, {m['auc_roc_high']:.4f}]"
            print(
                f"{name:<16} {data:<10} {ci:<26} {m['auc_pr']:>7.4f} {m['ks']:>6.3f} "
                f"{m['brier']:>6.3f} {m['calibration_error']:>6.3f} {m['threshold']:>6.3f}"
            )
    print(f"best model: {metrics.get('best_model')} (chosen on {metrics.get('selected_on')})")

if __name__ == "__main__":
    sys.exit(main())
