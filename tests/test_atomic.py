"""Atomic writes: a failed write leaves what was there before."""

from __future__ import annotations

import pytest

from src.utils.atomic import atomic_path, atomic_write_json


def test_failed_write_keeps_previous_file(tmp_path) -> None:
    target = tmp_path / "out" / "result.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"v":1}'
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_folder_replaced_whole(tmp_path) -> None:
    target = tmp_path / "table.parquet"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "part-0").write_text("old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "part-1").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["part-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.parquet"]
