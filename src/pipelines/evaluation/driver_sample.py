"""The bounded part of evaluate that runs on the driver: a seeded sample of a scored slice."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from src.core.metrics import Scored
from src.core.raw_schema import KEY_COLUMN
from src.pipelines.evaluation.point_metrics import RANK, P, Y


@dataclass(frozen=True)
class Sample:
    """At most `evaluate.driver_sample_rows` rows of a slice, in loan-key order; `whole` when
    they are every row of it."""

    scored: Scored
    rank: np.ndarray
    whole: bool


def sample_rows(scored: DataFrame, rows: int, seed: int) -> DataFrame:
    """The `rows` loans with the smallest seeded hash of the key (all of them if fewer).

    The choice depends on the key alone, so every candidate is sampled on the same loans.
    """
    order = F.xxhash64(F.col(KEY_COLUMN), F.lit(seed))
    return scored.orderBy(order, F.col(KEY_COLUMN)).limit(rows)


def driver_sample(
    scored: DataFrame, rows: int, seed: int, name: str, kind: str
) -> Sample:
    """The sample of a scored slice on the driver, in key order (the whole slice when small)."""
    # One row past the bound tells a slice of exactly `rows` loans from a larger one.
    frame = sample_rows(scored.select(KEY_COLUMN, Y, P, RANK), rows + 1, seed).toPandas()
    whole = len(frame) <= rows
    frame = frame.head(rows).sort_values(KEY_COLUMN, ignore_index=True)
    return Sample(
        scored=Scored(name=name, kind=kind, y=frame[Y].to_numpy(dtype=np.float64),
                      p=frame[P].to_numpy(dtype=np.float64)),
        rank=frame[RANK].to_numpy(dtype=np.float64),
        whole=whole,
    )
