"""src/core stays Spark-free: each module, imported alone, loads no pyspark, mlflow or stages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

CORE_MODULES = sorted(
    f"src.core.{p.stem}" for p in (REPO / "src" / "core").glob("*.py") if p.stem != "__init__"
)
FORBIDDEN = ("pyspark", "py4j", "mlflow", "src.agents", "src.pipelines", "src.supervisor")


def test_the_core_has_modules() -> None:
    assert "src.core.loan" in CORE_MODULES and len(CORE_MODULES) >= 5


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_nothing_forbidden(module: str) -> None:
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert module in loaded
    bad = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert bad == [], f"{module} loads {bad}"
