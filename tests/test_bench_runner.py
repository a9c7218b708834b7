"""The benchmarks' stage runner: a stage that logs a lot must not block on its own stderr."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from scripts.bench import run_measured

LOUD = "import sys; sys.stderr.write('x' * 1_000_000 + 'end of log'); sys.exit({code})"


@pytest.mark.timeout(60)
def test_a_stage_writing_more_than_a_pipe_holds_finishes(tmp_path: Path) -> None:
    measured = run_measured([sys.executable, "-c", LOUD.format(code=0)], tmp_path)
    assert measured.code == 0 and measured.seconds > 0 and measured.peak > 0
    # One process, no children: the peak is the driver's alone.
    assert measured.peak_by_kind == {"driver": measured.peak}


@pytest.mark.timeout(60)
def test_a_failed_stage_shows_the_end_of_its_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, code, _ = run_measured([sys.executable, "-c", LOUD.format(code=3)], tmp_path)
    err = capsys.readouterr().err
    assert code == 3 and err.endswith("end of log") and len(err) == 2000


# 300 MiB written, then a fork: parent and child share those pages until either writes them.
FORKED = (
    "import os, sys, time\n"
    "block = bytearray(b'x' * (300 * 2**20))\n"
    "child = os.fork()\n"
    "sys.stdout.write('forked\\n'); sys.stdout.flush()\n"
    "time.sleep(20)\n"
)


@pytest.mark.timeout(60)
def test_tree_memory_counts_pages_a_fork_shares_once() -> None:
    import subprocess

    import psutil

    from scripts.bench import tree_memory_by_kind

    parent = subprocess.Popen([sys.executable, "-c", FORKED], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "forked\n"
        proc = psutil.Process(parent.pid)
        tree = [proc, *proc.children(recursive=True)]
        if not hasattr(proc.memory_full_info(), "pss"):
            pytest.skip("no PSS on this OS")
        summed_rss = sum(p.memory_info().rss for p in tree)
        assert len(tree) == 2 and summed_rss > 600 * 2**20
        # Summed RSS holds the 300 MiB twice; the tree's PSS once.
        assert sum(tree_memory_by_kind(proc).values()) < summed_rss - 250 * 2**20
    finally:
        for p in psutil.Process(parent.pid).children(recursive=True):
            p.kill()
        parent.kill()
        parent.wait()
