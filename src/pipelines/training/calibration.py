"""The isotonic calibrator in Spark: fitted on a model's validation predictions, and applied to a
probability column exactly as `Calibration.apply` (numpy.interp) applies it in serving.
"""

from __future__ import annotations

from pyspark.ml.regression import IsotonicRegression
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from src.core.calibration import Calibration
from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.utils.errors import DataError

PROBABILITY_COLUMN = "probability"
RAW_PROBABILITY_COLUMN = "raw_probability"


def fit_calibration(scored: DataFrame, fitted_on: str = "validation") -> Calibration:
    """Isotonic (increasing) map from `raw_probability` to the observed default rate of `scored`."""
    data = scored.select(
        F.col(RAW_PROBABILITY_COLUMN).cast("double").alias(RAW_PROBABILITY_COLUMN),
        F.col(LABEL_COLUMN).cast("double").alias(LABEL_COLUMN),
    )
    rows = data.count()
    if rows == 0:
        raise DataError(f"calibration: no {fitted_on} rows to fit the calibrator on")
    model = IsotonicRegression(
        isotonic=True, featuresCol=RAW_PROBABILITY_COLUMN, labelCol=LABEL_COLUMN
    ).fit(data)
    return Calibration(
        boundaries=model.boundaries.toArray().tolist(),
        predictions=model.predictions.toArray().tolist(),
        fitted_on=fitted_on,
        rows=rows,
    )


def _interval(x: Column, calibration: Calibration, j: int) -> Column:
    # numpy.interp on [b_j, b_j+1): the value at b_j itself, else slope · (x − b_j) + p_j, with the
    # slope computed in Python doubles exactly as numpy computes it.
    b, p = calibration.boundaries, calibration.predictions
    if b[j + 1] == b[j]:  # an empty interval: never reached, kept for the index arithmetic
        return F.lit(p[j])
    slope = (p[j + 1] - p[j]) / (b[j + 1] - b[j])
    return F.when(x == F.lit(b[j]), F.lit(p[j])).otherwise(
        F.lit(slope) * (x - F.lit(b[j])) + F.lit(p[j])
    )


def _search(x: Column, calibration: Calibration, low: int, high: int) -> Column:
    # Binary search over the intervals low..high-1 (b_low <= x < b_high): depth log2 of the table.
    if high - low == 1:
        return _interval(x, calibration, low)
    middle = (low + high) // 2
    b = calibration.boundaries
    return F.when(x < F.lit(b[middle]), _search(x, calibration, low, middle)).otherwise(
        _search(x, calibration, middle, high)
    )


def calibrated(raw: Column, calibration: Calibration) -> Column:
    """`raw` (a double column of raw P(default)) mapped through `calibration`, as numpy.interp."""
    if calibration.method == "identity":
        return raw
    x = raw.cast("double")
    b, p = calibration.boundaries, calibration.predictions
    # Spark orders NaN above every number; numpy.interp returns NaN for it.
    nan = F.isnan(x)
    if len(b) == 1:
        return F.when(nan, F.lit(float("nan"))).when(x.isNotNull(), F.lit(p[0]))
    return (
        F.when(nan, F.lit(float("nan")))
        .when(x < F.lit(b[0]), F.lit(p[0]))
        .when(x >= F.lit(b[-1]), F.lit(p[-1]))
        .otherwise(_search(x, calibration, 0, len(b) - 1))
    )


def calibrate_predictions(scored: DataFrame, calibration: Calibration) -> DataFrame:
    """Key, label, calibrated `probability` and the model's `raw_probability` of `scored`."""
    raw = F.col(PROBABILITY_COLUMN)
    return scored.select(
        KEY_COLUMN,
        LABEL_COLUMN,
        calibrated(raw, calibration).alias(PROBABILITY_COLUMN),
        raw.alias(RAW_PROBABILITY_COLUMN),
    )
