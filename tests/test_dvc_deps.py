"""Every project module a stage imports is among that stage's deps in dvc.yaml.

A module missing there would let `dvc repro` keep a stale output after a code change. The import
graph is read from the source (every `import`/`from ... import` of `src`, those inside functions
included), starting at the stage's agent module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from src.supervisor import STAGES
from tests.conftest import REPO


def _module_file(module: str) -> Path | None:
    base = REPO / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path, top_level_only: bool = False) -> set[str]:
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "src":
            found.add(node.module)
            # `from src.pipelines.evaluation import plots` imports a module, not a name
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "src"}
    return {m for m in found if _module_file(m) is not None}


def import_closure(module: str, top_level_only: bool = False) -> set[Path]:
    """Files of every project module `module` imports, directly or not, itself included.

    With `top_level_only`, `module`'s own imports inside functions are left out (the modules they
    reach are still followed in full): the supervisor imports `score`'s and `serve`'s agents only
    when those commands run, never for a stage.
    """
    seen: set[str] = set()
    root = _module_file(module)
    todo = [module, *(_imported_modules(root, top_level_only) if root else ())]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        path = _module_file(current)
        if path is not None and current != module:
            todo.extend(_imported_modules(path))
    files = {_module_file(m) for m in seen}
    return {f.relative_to(REPO) for f in files if f is not None}


def _covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(dep) or Path(dep) in path.parents for dep in deps)


STAGE_DEPS = {
    name: stage["deps"]
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items()
}


def test_every_pipeline_stage_is_in_dvc_yaml() -> None:
    assert set(STAGE_DEPS) == set(STAGES)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_every_module_it_imports(stage: str) -> None:
    agent_module = STAGES[stage].agent_path.split(":")[0]
    needed = import_closure(agent_module) | import_closure("src.supervisor", top_level_only=True)
    missing = sorted(
        str(p) for p in needed if p.name != "__init__.py" and not _covered(p, STAGE_DEPS[stage])
    )
    assert not missing, f"dvc.yaml stage '{stage}' lacks deps on {missing}"


def test_the_closure_follows_imports_inside_functions() -> None:
    # The supervisor imports agents lazily; the registry agent's closure must still see export code.
    closure = import_closure("src.agents.registry_agent")
    assert Path("src/pipelines/export/onnx_export.py") in closure
    assert Path("src/core/raw_schema.py") in closure
