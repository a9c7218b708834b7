"""Stage cost against data size: rows × stage → wall seconds, peak memory (`make bench-scale`).

For every size, a scratch project generates that many synthetic loans in the raw Kaggle layout (one
size in the 2007-2020Q3 `"13.49%"` layout) and runs every stage as its own supervisor process, as
DVC does. Memory is the peak PSS of the stage's whole process tree (Python driver, Spark JVM,
Python workers; on a cluster, executors belong to the workers and are not counted). The growth
exponent between two sizes is log(t2 / t1) / log(n2 / n1): 1.0 is linear.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil
import yaml

from scripts.bench import peak_parts, run_measured
from src.utils.config import deep_merge

REPO = Path(__file__).resolve().parents[1]
STAGES = ["fetch", "prep", "split", "train_sup", "train_unsup", "evaluate", "register"]


def _override(spec: str) -> dict[str, Any]:
    """`train.models.gbt.maxIter=20` → {"train": {"models": {"gbt": {"maxIter": 20}}}}."""
    key, sep, value = spec.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set {spec}: expected KEY=VALUE")
    out: dict[str, Any] = {}
    node = out
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(value)
    return out


def project_params(rows: int, percent_strings: bool, overrides: list[dict[str, Any]]) -> dict:
    """The repo's params with synthetic data of `rows` loans and the given overrides."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = deep_merge(
        params,
        {"data": {"source": "synthetic",
                  "synthetic": {"rows": rows, "percent_strings": percent_strings}}},
    )
    for override in overrides:
        params = deep_merge(params, override)
    return params


def exponent(n1: int, t1: float, n2: int, t2: float) -> float | None:
    if min(n1, n2, t1, t2) <= 0 or n1 == n2:
        return None
    return math.log(t2 / t1) / math.log(n2 / n1)


def run_size(
    rows: int, percent: bool, stages: list[str], workdir: Path, overrides: list[dict[str, Any]]
) -> dict[str, tuple[float, int]]:
    """Run every stage on `rows` synthetic loans; stage → (wall seconds, peak bytes)."""
    root = workdir / f"rows-{rows}"
    root.mkdir(parents=True, exist_ok=True)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(project_params(rows, percent, overrides), sort_keys=False))
    layout = '"13.49%" layout' if percent else "Kaggle layout"
    print(f"\n{rows} rows ({layout}), project {root}", flush=True)
    results: dict[str, tuple[float, int]] = {}
    for stage in stages:
        cmd = [sys.executable, "-m", "src.supervisor", "--params", str(params), "run", stage]
        seconds, peak, code, by_kind = run_measured(cmd, root)
        print(
            f"  {stage:<12} {seconds:>8.1f} s {peak / 2**20:>8.0f} MiB  ({peak_parts(by_kind)})",
            flush=True,
        )
        if code:
            raise SystemExit(f"bench-scale: {stage} failed at {rows} rows (exit {code})")
        results[stage] = (seconds, peak)
    return results


def print_table(sizes: list[int], stages: list[str], table: dict[int, dict]) -> None:
    print(f"\n{'rows':>9} | " + " | ".join(f"{s:>16}" for s in [*stages, "total"]))
    print("-" * (12 + 19 * (len(stages) + 1)))
    for n in sizes:
        cells = [f"{table[n][s][0]:>7.1f}s {table[n][s][1] / 2**30:>5.2f}G" for s in stages]
        total = sum(table[n][s][0] for s in stages)
        peak = max(table[n][s][1] for s in stages)
        cells.append(f"{total:>7.1f}s {peak / 2**30:>5.2f}G")
        print(f"{n:>9} | " + " | ".join(f"{c:>16}" for c in cells))
    for a, b in itertools.pairwise(sizes):
        exps = [exponent(a, table[a][s][0], b, table[b][s][0]) for s in stages]
        tot = exponent(
            a, sum(table[a][s][0] for s in stages), b, sum(table[b][s][0] for s in stages)
        )
        cells = ["n/a" if e is None else f"{e:.2f}" for e in [*exps, tot]]
        label = f"{a}->{b}"
        print(f"{label:>9} | " + " | ".join(f"{'exp ' + c:>16}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000, 2_900_000])
    parser.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    parser.add_argument(
        "--percent-size", type=int, default=None,
        help='the size generated in the "13.49%%" layout (default: the smallest)',
    )
    parser.add_argument(
        "--set", dest="overrides", type=_override, action="append", default=[],
        metavar="KEY=VALUE", help="params override, e.g. train.models.random_forest.numTrees=40",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep the projects here")
    args = parser.parse_args(argv)
    sizes = sorted(set(args.sizes))
    percent_size = args.percent_size if args.percent_size is not None else sizes[0]
    memory = psutil.virtual_memory().total / 2**30
    print(
        f"bench-scale: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{memory:.0f} GiB RAM, load {os.getloadavg()[0]:.1f}, "
        f"master {os.environ.get('SPARK_MASTER', 'spark.master of params.yaml')}"
    )
    table: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="credit-risk-scale-") as tmp:
        workdir = args.workdir.resolve() if args.workdir else Path(tmp)
        for n in sizes:
            table[n] = run_size(n, n == percent_size, args.stages, workdir, args.overrides)
    print_table(sizes, args.stages, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
