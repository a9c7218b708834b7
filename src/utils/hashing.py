"""Content hashes of files and folders, so a stage can tell a stale upstream artifact."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def _update_with_file(digest: hashlib._Hash, path: Path) -> None:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)


def content_hash(path: Path) -> str:
    """SHA-256 of a file, or of a folder's data files' bytes in name order.

    Names are left out because Spark puts a random id in every part file's name.
    """
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            # Spark's _SUCCESS and .crc sidecar files carry no data.
            if child.name.startswith(("_", ".")):
                continue
            _update_with_file(digest, child)
    elif path.is_file():
        _update_with_file(digest, path)
    else:
        raise FileNotFoundError(path)
    return digest.hexdigest()
