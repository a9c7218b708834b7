"""Observed and predicted default rates per risk band of the serving segmentation, in Spark."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from src.contracts import SegmentEvaluation
from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.core.segment_params import SegmentParams, assign_segment
from src.pipelines.evaluation.point_metrics import P, Y
from src.utils.errors import DataError
from src.utils.logging import get_logger

log = get_logger(agent="EvaluatorAgent")
_BAND = "band"


def segment_evaluation(
    params: SegmentParams, band_order: list[str], test: DataFrame, scored: DataFrame
) -> list[SegmentEvaluation]:
    """Size, observed default rate and mean predicted probability (`scored`'s p) per band."""
    missing = [c for c in params.features if c not in test.columns]
    if missing:
        raise DataError(f"evaluate: the test split lacks the segment features {missing}")

    def bands(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        # assign_segment is the serving code: one definition of a segment, batch by batch.
        for frame in batches:
            rows = frame[params.features].to_numpy(dtype=np.float64, na_value=np.nan)
            ids = assign_segment(params, rows)
            yield pd.DataFrame({_BAND: [params.bands[c] for c in ids],
                                Y: frame[LABEL_COLUMN].astype("float64"), P: frame[P]})

    joined = test.select(KEY_COLUMN, LABEL_COLUMN, *params.features).join(
        scored.select(KEY_COLUMN, P), KEY_COLUMN
    )
    per_band = {
        r[_BAND]: r
        for r in joined.mapInPandas(bands, f"{_BAND} string, {Y} double, {P} double")
        .groupBy(_BAND)
        .agg(F.count(F.lit(1)).alias("n"), F.sum(Y).alias("defaults"),
             F.sum(F.col(P).cast("decimal(38,18)")).alias("sum_p"))
        .collect()
    }
    segments = []
    for band in band_order:
        row = per_band.get(band)
        if row is None:
            log.warning("evaluate.segment_empty", band=band)
            continue
        n = int(row["n"])
        segments.append(SegmentEvaluation(
            band=band, size=n, default_rate=float(row["defaults"]) / n,
            mean_predicted=float(Decimal(row["sum_p"]) / n),
        ))
    return segments
