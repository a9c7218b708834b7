"""Atomic writes: build an artifact under a temporary name, rename it into place when complete."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def stale_siblings(target: Path) -> list[Path]:
    """Temporaries an earlier, killed write of `target` left beside it."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    prefixes = (f".{target.name}.tmp-", f".{target.name}.old-")
    return sorted(p for p in target.parent.iterdir() if p.name.startswith(prefixes))


def remove_stale(target: Path) -> list[Path]:
    """Remove what a killed write of `target` left behind; returns the removed paths.

    Writes of one target never run at once (one stage owns it; DVC locks the pipeline). A kill
    between the two renames of a folder swap leaves no `target`: the previous folder is put back.
    """
    target = Path(target)
    stale = stale_siblings(target)
    previous = [p for p in stale if p.name.startswith(f".{target.name}.old-")]
    if previous and not (target.exists() or target.is_symlink()):
        os.replace(previous[-1], target)
        stale.remove(previous[-1])
    for path in stale:
        _remove(path)
    return stale


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `target` (file or folder); it replaces `target` on success.

    On any exception the temporary is removed and whatever was at `target` stays as it was;
    temporaries of an earlier write that was killed (kill -9) are removed first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: nothing was written for {target}")
        if tmp.is_dir() and target.exists():
            # A folder cannot be os.replace'd over a non-empty folder: move the old one aside first.
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
            os.replace(tmp, target)
            _remove(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            _remove(tmp)


def atomic_write_text(target: Path, text: str) -> None:
    """Write `text` to `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def atomic_write_json(target: Path, payload: Any) -> None:
    """Write `payload` as indented JSON to `target` atomically."""
    atomic_write_text(target, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
