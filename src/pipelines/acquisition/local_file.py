"""A local raw CSV or CSV.gz, checked like the Kaggle download before it replaces `data/raw/`.

Either layout is accepted (the Kaggle numbers or the 2007–2020Q3 `"13.49%"` strings): the file
must decompress and decode to the end, have a parseable header holding every column of
`REQUIRED_RAW_COLUMNS` (`src/core/loan.py`), and hold at least one loan.
"""

from __future__ import annotations

import csv
import gzip
import io
import shutil
import zlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from src.core.loan import REQUIRED_RAW_COLUMNS
from src.utils.atomic import atomic_path
from src.utils.errors import DataError

_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
# Free-text fields (`desc`) run to a few thousand characters; the csv module's default limit is
# 128 KiB, raised so that only a broken file hits it.
_FIELD_LIMIT = 16 << 20


class LocalFileSummary(BaseModel):
    """What the check of a local raw file found."""

    model_config = ConfigDict(frozen=True)

    path: Path
    compressed: bool
    columns: int
    first_loan_record: int  # 1 = the first record after the header


def _is_loan(record: dict[str, str]) -> bool:
    # A footer carries text in `id` and nothing else; a loan has an outcome or at least an amount.
    return any((record.get(name) or "").strip() for name in ("loan_status", "loan_amnt"))


def check_local_file(path: Path) -> LocalFileSummary:
    """Read `path` to the end and check it; DataError naming the file and the fault otherwise."""
    if not path.is_file():
        raise DataError(f"data.file_path: {path} does not exist")
    with path.open("rb") as handle:
        compressed = handle.read(2) == _GZIP_MAGIC
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_LIMIT))
    first_loan = 0
    try:
        with (
            gzip.open(path, "rb") if compressed else path.open("rb") as raw,
            io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text,
        ):
            reader = csv.reader(text)
            header = [h.strip() for h in next(reader, [])]
            if not any(header):
                raise DataError(f"{path}: empty file, no CSV header")
            missing = [c for c in REQUIRED_RAW_COLUMNS if c not in header]
            if missing:
                raise DataError(
                    f"{path}: not a LendingClub loan file: the header lacks {len(missing)} "
                    f"required column(s): {', '.join(missing[:10])}"
                    + (" …" if len(missing) > 10 else "")
                )
            for number, values in enumerate(reader, start=1):
                if _is_loan(dict(zip(header, values, strict=False))):
                    first_loan = number
                    break
            # Decode the rest too: a corrupt archive or non-UTF-8 bytes fail here, not in Spark.
            while text.read(_CHUNK):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: damaged gzip archive: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not a CSV text file (byte {exc.start} is not UTF-8: {exc.reason})"
        ) from exc
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV file: {exc}") from exc
    if not first_loan:
        raise DataError(f"{path}: the CSV has a header but no loan")
    return LocalFileSummary(
        path=path, compressed=compressed, columns=len(header), first_loan_record=first_loan
    )


def copy_as_gzip(source: Path, target: Path) -> LocalFileSummary:
    """Check `source` (a CSV or CSV.gz), then copy it to `target` as gzip, atomically."""
    summary = check_local_file(source)
    with atomic_path(target) as tmp:
        if summary.compressed:
            shutil.copyfile(source, tmp)
        else:
            # mtime=0 and no file name in the gzip header: the same CSV gives the same bytes.
            with source.open("rb") as src, tmp.open("wb") as out, gzip.GzipFile(
                filename="", mode="wb", fileobj=out, mtime=0
            ) as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
    return summary
