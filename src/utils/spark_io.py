"""Deterministic Spark outputs: the same rows and models give the same bytes and file names, so
DVC's hashes stay stable across reruns."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql.types import AtomicType

from src.utils.atomic import atomic_path

PARQUET_SUFFIX = ".parquet"
# Spark's own bookkeeping beside the data: success markers and checksum sidecars.
_SIDECAR_PREFIXES = ("_", ".")
# Rows of a data file the driver holds at once while re-encoding it. Whole tables at once, prep's
# and split's Python drivers held 1 GiB at 2.9M loans, growing with the data.
REENCODE_BATCH_ROWS = 131_072
_UID = re.compile(r"^(?P<cls>[A-Za-z][A-Za-z0-9]*)_(?P<hex>[0-9a-f]{12})$")


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith("part-"))


def _drop_sidecars(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and path.name.startswith(_SIDECAR_PREFIXES):
            path.unlink()


def _reencode(path: Path, table: Any = None) -> None:
    """Rewrite a parquet file with pyarrow, whose output is byte-stable: parquet-mr lists each
    column's encodings in a JVM hash order that changes from one process to the next. Spark's
    schema (the row metadata key) is kept, so Spark reads the same types back (vectors, matrices,
    nullability). A data file streams through in batches of REENCODE_BATCH_ROWS rows, each its
    own row group, so the driver never holds a whole table; a `table` given is written as is."""
    import pyarrow.parquet as pq

    source = None if table is not None else pq.ParquetFile(path)
    schema = table.schema if source is None else source.schema_arrow
    # pyarrow drops the file's key-value metadata when it does not store its own schema.
    metadata = dict(sorted((schema.metadata or {}).items()))
    staged = path.with_name(f".{path.name}.reencoded")
    with pq.ParquetWriter(
        staged, schema, compression="snappy", store_schema=False, coerce_timestamps="us",
        allow_truncated_timestamps=False,
    ) as writer:
        if source is None:
            writer.write_table(table)
        else:
            # Batches span the source's row groups, so the output's depend on the rows alone.
            for batch in source.iter_batches(batch_size=REENCODE_BATCH_ROWS):
                writer.write_batch(batch)
            source.close()
        if metadata:
            writer.add_key_value_metadata(metadata)
    os.replace(staged, path)


def _rename_parts(folder: Path) -> None:
    """part-00000-<uuid>-c000.snappy.parquet → part-00000.parquet, in Spark's own part order; text
    parts (model metadata, XGBoost's booster) → part-00000."""
    parts = _data_files(folder)
    tables = [p for p in parts if p.name.endswith(PARQUET_SUFFIX)]
    texts = [p for p in parts if not p.name.endswith(PARQUET_SUFFIX)]
    for index, part in enumerate(tables):
        part.rename(part.with_name(f"part-{index:05d}{PARQUET_SUFFIX}"))
    for index, part in enumerate(texts):
        part.rename(part.with_name(f"part-{index:05d}"))


def write_parquet_deterministic(
    df: DataFrame, target: Path, order_by: list[str], files: int = 1
) -> None:
    """Write `df` sorted by `order_by` into `files` part files with fixed names, no sidecars;
    `target` is replaced only once the write is complete."""
    # The other plain columns break ties, so rows with equal (or null) keys keep one order too.
    ties = [f.name for f in df.schema.fields
            if f.name not in order_by and isinstance(f.dataType, AtomicType)]
    order_by = [*order_by, *ties]
    ordered = (
        df.orderBy(*order_by).coalesce(1)
        if files == 1
        else df.repartitionByRange(files, *order_by).sortWithinPartitions(*order_by)
    )
    with atomic_path(Path(target)) as tmp:
        ordered.write.mode("overwrite").parquet(str(tmp))
        _drop_sidecars(tmp)
        _rename_parts(tmp)
        for part in _data_files(tmp):
            _reencode(part)


def _json_values(metadata: list[Path], tables: list[Path]) -> list[Any]:
    """Every JSON document of a saved model: metadata text lines and the JSON strings some
    models (trees) keep in parquet, e.g. treesMetadata."""
    import pyarrow.parquet as pq

    docs: list[Any] = []
    for path in metadata:
        docs.extend(json.loads(line) for line in path.read_text().splitlines())
    for path in tables:
        table = pq.read_table(path)
        for column in table.columns:
            docs.extend(_as_json(v) for v in column.to_pylist() if isinstance(v, str))
    return [d for d in docs if d is not None]


def _as_json(text: str) -> Any:
    if not text.startswith("{"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _stable_uids(docs: list[Any]) -> dict[str, str]:
    """Each random uid (`<Class>_<12 hex>`, under a "uid" key) → `<Class>_<n>`, numbered in order
    of appearance."""
    mapping: dict[str, str] = {}
    counts: dict[str, int] = {}
    for doc in docs:
        uid = doc.get("uid") if isinstance(doc, dict) else None
        match = _UID.match(uid) if isinstance(uid, str) else None
        if match and uid not in mapping:
            cls = match.group("cls")
            mapping[uid] = f"{cls}_{counts.get(cls, 0)}"
            counts[cls] = counts.get(cls, 0) + 1
    return mapping


def _rename(text: str, mapping: dict[str, str]) -> str:
    # Uids also appear inside other values, e.g. a default output column "<uid>__output".
    for old, new in mapping.items():
        if old in text:
            text = text.replace(old, new)
    return text


def _rewrite(node: Any, mapping: dict[str, str]) -> Any:
    if isinstance(node, dict):
        node = _unshadow(node)
        return {k: 0 if k == "timestamp" else _rewrite(v, mapping) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(v, mapping) for v in node]
    if isinstance(node, str):
        return _rename(node, mapping)
    return node


def _unshadow(node: dict[str, Any]) -> dict[str, Any]:
    """A default that a set param overrides is never read; PySpark's default seed is a hash of the
    class name, randomised per Python process, so it takes the set value instead."""
    params, defaults = node.get("paramMap"), node.get("defaultParamMap")
    if not isinstance(params, dict) or not isinstance(defaults, dict):
        return node
    shadowed = {k: params[k] for k in defaults if k in params}
    return {**node, "defaultParamMap": {**defaults, **shadowed}} if shadowed else node


def _dump(node: Any) -> str:
    return json.dumps(node, separators=(",", ":"))


def _rewrite_table(path: Path, mapping: dict[str, str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for index, field in enumerate(table.schema):
        if not pa.types.is_string(field.type):
            continue
        values = table.column(index).to_pylist()
        fixed = [
            _dump(_rewrite(doc, mapping)) if (doc := _as_json(v) if isinstance(v, str) else None)
            is not None else v
            for v in values
        ]
        if fixed != values:
            table = table.set_column(index, field, pa.array(fixed, type=field.type))
    # Every table is rewritten, changed or not: parquet-mr's bytes vary between processes.
    _reencode(path, table)


def _normalise_metadata(folder: Path) -> None:
    metadata = [p for p in folder.rglob("part-*") if p.is_file() and p.parent.name == "metadata"]
    # Outer pipeline first, so numbering follows the stage order.
    metadata.sort(key=lambda p: (len(p.relative_to(folder).parts), str(p)))
    tables = sorted(p for p in folder.rglob(f"*{PARQUET_SUFFIX}") if p.is_file())
    mapping = _stable_uids(_json_values(metadata, tables))
    for path in metadata:
        lines = [_dump(_rewrite(json.loads(line), mapping))
                 for line in path.read_text().splitlines()]
        path.write_text("\n".join(lines) + "\n")
    for path in tables:
        _rewrite_table(path, mapping)
    # Stage folders are named after their uids (stages/1_RandomForestClassifier_<hex>): renamed.
    for path in sorted(folder.rglob("*"), key=lambda p: -len(p.parts)):
        name = _rename(path.name, mapping)
        if name != path.name:
            path.rename(path.with_name(name))


def normalise_saved_model(folder: Path) -> None:
    """Make a saved Spark ML model folder stable: fixed part names, no sidecars, metadata
    timestamps 0, random uids renamed `<Class>_<n>` and every parquet file rewritten by pyarrow."""
    _drop_sidecars(folder)
    for data in sorted(p for p in folder.rglob("*") if p.is_dir()):
        _rename_parts(data)
    _normalise_metadata(folder)


def save_model_deterministic(model: Any, target: Path) -> None:
    """Save a Spark ML model (or pipeline model) byte-stably; `target` replaced once complete."""
    with atomic_path(Path(target)) as tmp:
        model.write().overwrite().save(str(tmp))
        normalise_saved_model(tmp)


def copy_tree(source: Path, target: Path) -> None:
    """Copy a folder in place of `target`, atomically."""
    with atomic_path(Path(target)) as tmp:
        shutil.copytree(source, tmp)
