"""A stage's result on disk: what it produced in `reports/<stage>.json`, and the fields that only
record one run (run ids, times; marked RUN_RECORD in the contracts) in `reports/runs/<stage>.json`.

Downstream stages depend on the first file only, so rerunning a stage that produces the same outputs
does not make DVC rerun everything after it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from src.contracts import RUN_RECORD
from src.utils.atomic import atomic_write_json
from src.utils.config import deep_merge

ResultT = TypeVar("ResultT", bound=BaseModel)


def run_record_path(report: Path) -> Path:
    """`reports/runs/<stage>.json` beside `reports/<stage>.json`."""
    return report.parent / "runs" / report.name


def _is_run_field(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and all(extra.get(k) == v for k, v in RUN_RECORD.items())


def _split(value: Any, dumped: Any) -> tuple[Any, Any]:
    """(`dumped` without run fields, the run fields alone in the same nesting or None)."""
    if isinstance(value, BaseModel):
        pairs = [
            (name, getattr(value, name), _is_run_field(field))
            for name, field in type(value).model_fields.items()
        ]
    elif isinstance(value, dict):
        # A JSON dump turns keys into strings; the order is the same.
        pairs = [(key, item, False) for key, item in zip(dumped, value.values(), strict=True)]
    else:
        return dumped, None
    stable: dict[str, Any] = {}
    run: dict[str, Any] = {}
    for key, item, is_run in pairs:
        if is_run:
            run[key] = dumped[key]
            continue
        stable[key], nested_run = _split(item, dumped[key])
        if nested_run:
            run[key] = nested_run
    return stable, run or None


def write_stage_report(report: Path, result: BaseModel) -> None:
    """Write the run record first and the result last: the result is the mark of a complete run."""
    stable, run = _split(result, result.model_dump(mode="json"))
    atomic_write_json(run_record_path(report), run or {})
    atomic_write_json(report, stable)


def read_stage_report(report: Path, result_type: type[ResultT]) -> ResultT:
    """The result in `report` with its run record merged back (absent record: no run fields).

    Raises pydantic's ValidationError when the two do not make a valid `result_type`.
    """
    stable = json.loads(report.read_text())
    record = run_record_path(report)
    run = json.loads(record.read_text()) if record.is_file() else {}
    return result_type.model_validate(deep_merge(stable, run))
