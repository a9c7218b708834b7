"""Raw CSV(.gz) → record-aligned plain CSV parts, so Spark reads one file with many tasks."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

from src.utils.atomic import atomic_path
from src.utils.errors import DataError
from src.utils.logging import get_logger

log = get_logger(component="prep")

DEFAULT_CHUNK_BYTES = 16 * 2**20
_PARTS_SUFFIX = ".parts"


def _record_aligned_parts(source: IO[bytes], folder: Path, chunk_bytes: int) -> int:
    """Copy CSV records from `source` into parts of about `chunk_bytes`, each with the header.

    A record ends at a newline outside quotes. With RFC 4180 quoting (a quote inside a field is
    doubled) that is a newline after an even number of quote characters since the record began,
    so a quoted multi-line field never straddles two parts.
    """
    header = b""
    quotes = 0
    while True:  # the header is a record too
        line = source.readline()
        header += line
        quotes += line.count(b'"')
        if not line or quotes % 2 == 0:
            break
    if not header.endswith(b"\n"):
        header += b"\n"
    parts = 0
    out: IO[bytes] | None = None
    size = 0
    quotes = 0
    try:
        for line in source:
            if out is None:
                out = open(folder / f"part-{parts:05d}.csv", "wb")  # noqa: SIM115
                out.write(header)
                parts += 1
                size = 0
            out.write(line)
            size += len(line)
            quotes += line.count(b'"')
            if quotes % 2 == 0 and size >= chunk_bytes:
                out.close()
                out = None
                quotes = 0
    finally:
        if out is not None:
            out.close()
    return parts


def _cache_folder(path: Path) -> Path:
    """Beside the raw file; under the temporary folder when that folder is read-only."""
    if os.access(path.parent, os.W_OK):
        return path.with_name(f".{path.name}{_PARTS_SUFFIX}")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "credit-risk-parts" / f"{path.name}-{digest}"


def stage_parts(path: Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Path:
    """Stream a raw CSV(.gz) once into record-aligned plain CSV parts; returns their folder.

    A gzip file is one unsplittable partition and a multi-line CSV cannot be split by bytes:
    parts can, one task each. Kept beside the raw file (under TMPDIR when its folder is read-only),
    keyed by its size and mtime, so a rerun on the same file reuses them; older parts are removed.
    """
    stat = path.stat()
    cache = _cache_folder(path)
    target = cache / f"{stat.st_size}-{stat.st_mtime_ns}-{chunk_bytes}"
    if target.is_dir():
        return target
    opener = gzip.open if path.suffix == ".gz" else open
    cache.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(target) as tmp, opener(path, "rb") as source:  # type: ignore[operator]
            tmp.mkdir()
            parts = _record_aligned_parts(source, tmp, chunk_bytes)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read the raw file (cut short or corrupt?): {exc}") from exc
    for old in cache.iterdir():
        if old != target and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    log.info("prep.parts", path=str(path), parts=parts, chunk_bytes=chunk_bytes)
    return target
