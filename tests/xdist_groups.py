"""How pytest-xdist shares the tests between its workers: by test file, except that every file
whose tests need the session's trained project goes to one worker, which trains it once.

pytest-xdist's own `--dist loadgroup` names groups by suffixing node ids, which pytest 9 no longer
lets a plugin do; a scheduler is xdist's public hook for this (`pytest_xdist_make_scheduler`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from xdist.scheduler import LoadScopeScheduling

TRAINED_GROUP = "trained_project"
# The fixtures that train: `serving_bundles` builds on `trained_project`.
TRAINING_FIXTURES = ("trained_project", "serving_bundles")


@cache
def needs_trained_project(test_file: Path) -> bool:
    """Whether a test file asks for a fixture that trains (the controller sees node ids only)."""
    text = test_file.read_text(encoding="utf-8")
    return any(name in text for name in TRAINING_FIXTURES)


class TrainedProjectScheduling(LoadScopeScheduling):
    """xdist's load-by-scope scheduler with this suite's scopes (largest scope first)."""

    def _split_scope(self, nodeid: str) -> str:
        test_file = nodeid.split("::", 1)[0]
        # Node ids are relative to the rootdir, not to the folder pytest was started in.
        trains = needs_trained_project(self.config.rootpath / test_file)
        return TRAINED_GROUP if trains else test_file
