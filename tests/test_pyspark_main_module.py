"""Pins the pyspark behaviour that tests/conftest.py works around in pytest-xdist's workers.

pyspark 4.3 takes a `__main__` with neither `__spec__` nor `__file__` (as `python -c` makes) for
its own doctest run: without grpc, importing pyspark.ml.connect then exits 0. When pyspark stops
doing that, the first test fails, and the conftest's `__main__.__file__` can go.
"""

from __future__ import annotations

import subprocess
import sys

IMPORT = "import pyspark.ml.connect\nprint('imported')"


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_a_nameless_main_exits_on_importing_pyspark_ml_connect() -> None:
    done = _run(IMPORT)
    assert (done.returncode, done.stdout) == (0, ""), done.stdout + done.stderr
    assert "Skipping doctests" in done.stderr


def test_a_main_with_a_file_gets_an_import_error_instead() -> None:
    """What mlflow.spark.log_model expects: an ImportError, which it catches."""
    done = _run(
        "import sys\nsys.modules['__main__'].__file__ = '<test>'\n"
        "try:\n    import pyspark.ml.connect\nexcept ImportError as exc:\n"
        "    print('ImportError', type(exc).__name__)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ImportError"), done.stdout + done.stderr
