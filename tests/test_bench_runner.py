"""The benchmarks' stage runner: a stage that logs a lot must not block on its own stderr."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from scripts.bench import run_measured

LOUD = "import sys; sys.stderr.write('x' * 1_000_000 + 'end of log'); sys.exit({code})"


@pytest.mark.timeout(60)
def test_a_stage_writing_more_than_a_pipe_holds_finishes(tmp_path: Path) -> None:
    seconds, peak, code = run_measured([sys.executable, "-c", LOUD.format(code=0)], tmp_path)
    assert code == 0 and seconds > 0 and peak > 0


@pytest.mark.timeout(60)
def test_a_failed_stage_shows_the_end_of_its_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, code = run_measured([sys.executable, "-c", LOUD.format(code=3)], tmp_path)
    err = capsys.readouterr().err
    assert code == 3 and err.endswith("end of log") and len(err) == 2000
