"""Atomic writes: a failed write leaves what was there before."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.utils.atomic import atomic_path, atomic_write_json, remove_stale, stale_siblings

REPO = Path(__file__).resolve().parents[1]


def test_failed_write_keeps_previous_file(tmp_path) -> None:
    target = tmp_path / "out" / "result.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"v":1}'
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_folder_replaced_whole(tmp_path) -> None:
    target = tmp_path / "table.parquet"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "part-0").write_text("old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "part-1").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["part-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.parquet"]


# A writer that builds a 40-file folder slowly, so a kill lands in the middle of it.
_SLOW_WRITER = """
import sys, time
from pathlib import Path
from src.utils.atomic import atomic_path
with atomic_path(Path(sys.argv[1])) as tmp:
    tmp.mkdir()
    for i in range(40):
        (tmp / f"part-{i:05d}").write_text(sys.argv[2])
        time.sleep(0.02)
"""


def _write(target: Path, value: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(target), value], cwd=REPO
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_mid_write_leaves_the_old_folder_and_the_next_write_cleans_up(
    tmp_path: Path, seed: int
) -> None:
    target = tmp_path / "M.parquet"
    assert _write(target, "old").wait(timeout=60) == 0
    writer = _write(target, "new")
    deadline = time.monotonic() + 60
    while not stale_siblings(target) and time.monotonic() < deadline:
        time.sleep(0.01)
    # The write takes ~0.8 s once its temporary folder exists: land somewhere in there.
    time.sleep(random.Random(seed).uniform(0.0, 0.6))
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=60)
    contents = {p.read_text() for p in target.iterdir()}
    assert len(list(target.iterdir())) == 40 and len(contents) == 1  # old or new, never a mix
    debris = stale_siblings(target)
    assert debris
    print(f"seed {seed}: after kill -9 {target.name} holds {contents}, debris {len(debris)}")
    assert _write(target, "rerun").wait(timeout=60) == 0
    assert {p.read_text() for p in target.iterdir()} == {"rerun"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["M.parquet"]


def test_a_kill_between_the_two_renames_of_a_swap_puts_the_previous_folder_back(
    tmp_path: Path,
) -> None:
    target = tmp_path / "supervised"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "model").write_text("old")
    # What a kill -9 right after `target → .old-*` and before `.tmp-* → target` leaves behind.
    (tmp_path / ".supervised.tmp-dead").mkdir()
    target.rename(tmp_path / ".supervised.old-dead")
    assert remove_stale(target) == [tmp_path / ".supervised.tmp-dead"]
    assert (target / "model").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["supervised"]
