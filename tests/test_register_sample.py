"""The validation sample register brings to the driver: exactly min(rows, bound) loans, the same
ones however the slice is partitioned, and a fair draw of its defaults."""

from __future__ import annotations

import math
from typing import Any

import pytest

from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.pipelines.registry.parity import validation_sample

ROWS = 2000
DEFAULT_EVERY = 5  # one loan in five defaults: share 0.2


@pytest.fixture(scope="module")
def slice_(spark: Any) -> Any:
    rows = [(f"loan-{i:05d}", int(i % DEFAULT_EVERY == 0), float(i)) for i in range(ROWS)]
    return spark.createDataFrame(rows, [KEY_COLUMN, LABEL_COLUMN, "x"])


def _keys(frame: Any) -> list[str]:
    return sorted(r[KEY_COLUMN] for r in frame.select(KEY_COLUMN).collect())


@pytest.mark.parametrize("bound", [1, 300, ROWS - 1, ROWS, 5 * ROWS])
def test_sample_has_min_of_rows_and_bound(slice_: Any, bound: int) -> None:
    sample = validation_sample(slice_, bound, seed=42)
    assert sample.count() == min(ROWS, bound)
    assert sample.columns == slice_.columns


def test_sample_is_the_same_rows_whatever_the_partitioning(slice_: Any) -> None:
    one = _keys(validation_sample(slice_.coalesce(1), 300, seed=42))
    many = _keys(validation_sample(slice_.repartition(7), 300, seed=42))
    assert one == many and len(set(one)) == 300
    other_seed = _keys(validation_sample(slice_, 300, seed=43))
    assert other_seed != one


def test_sample_is_a_fair_draw_of_defaults(slice_: Any) -> None:
    n = 500
    sample = validation_sample(slice_, n, seed=42)
    share = sample.agg({LABEL_COLUMN: "mean"}).first()[0]
    p = 1 / DEFAULT_EVERY
    # Without replacement from ROWS loans: the finite-population correction applies.
    se = math.sqrt(p * (1 - p) / n * (ROWS - n) / (ROWS - 1))
    assert abs(share - p) <= 4 * se, (share, p, se)
