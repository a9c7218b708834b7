"""The calibration table in Spark equals Calibration.apply (numpy.interp), and the isotonic fit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pyspark.ml.regression import IsotonicRegression
from pyspark.sql import functions as F

from src.core.calibration import Calibration
from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.pipelines.training.calibration import (
    RAW_PROBABILITY_COLUMN,
    calibrated,
    centered_table,
    fit_calibration,
)

TOLERANCE = 1e-12


def _spark_apply(spark: Any, calibration: Calibration, x: np.ndarray) -> np.ndarray:
    df = spark.createDataFrame([(i, float(v)) for i, v in enumerate(x)], ["i", "x"])
    rows = df.select("i", calibrated(F.col("x"), calibration).alias("p")).orderBy("i").collect()
    return np.array([r["p"] for r in rows], dtype=np.float64)


def _assert_agree(spark: Any, table: Calibration, x: np.ndarray) -> None:
    spark_values, numpy_values = _spark_apply(spark, table, x), table.apply(x)
    assert np.max(np.abs(spark_values - numpy_values)) <= TOLERANCE


def _inputs(rng: np.random.Generator, table: Calibration) -> np.ndarray:
    """Random points inside and outside the table, every boundary, and the ends of [0, 1]."""
    b = np.asarray(table.boundaries)
    inside = rng.uniform(b[0], b[-1], 300)
    outside = np.concatenate([rng.uniform(-0.5, b[0], 20), rng.uniform(b[-1], 1.5, 20)])
    return np.concatenate([inside, outside, b, np.nextafter(b, -1), np.nextafter(b, 2), [0, 1]])


def _random_table(rng: np.random.Generator, size: int) -> Calibration:
    boundaries = np.sort(rng.uniform(0.05, 0.95, size))
    if size > 3:
        boundaries[2] = boundaries[1]  # a repeated boundary, as a step of the isotonic fit
    predictions = np.sort(rng.uniform(0, 1, size))
    return Calibration(boundaries=boundaries.tolist(), predictions=predictions.tolist())


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("size", [1, 7, 200])
def test_spark_equals_numpy_interp(spark: Any, seed: int, size: int) -> None:
    rng = np.random.default_rng(seed * 1000 + size)
    table = _random_table(rng, size)
    x = _inputs(rng, table)
    _assert_agree(spark, table, x)


def _inflated_scores(
    spark: Any, rng: np.random.Generator, n: int
) -> tuple[np.ndarray, np.ndarray, Any]:
    """n raw scores, their labels and both as a scored frame; the true default rate is raw²."""
    raw = rng.uniform(0, 1, n)
    # raw² is a balanced model's inflated score: the calibrator must undo it.
    labels = (rng.uniform(0, 1, n) < raw**2).astype(int)
    scored = spark.createDataFrame(
        [(f"k{i}", int(y), float(r)) for i, (y, r) in enumerate(zip(labels, raw, strict=True))],
        [KEY_COLUMN, LABEL_COLUMN, RAW_PROBABILITY_COLUMN],
    )
    return raw, labels, scored


def test_fitted_table_applies_alike_and_maps_to_default_rates(spark: Any) -> None:
    rng = np.random.default_rng(11)
    n = 4000
    raw, labels, scored = _inflated_scores(spark, rng, n)
    table = fit_calibration(scored)
    assert table.fitted_on == "validation" and table.rows == n
    assert len(table.boundaries) > 2
    x = _inputs(rng, table)
    _assert_agree(spark, table, x)
    # Mean calibrated probability over a band equals its default rate within 4 standard errors.
    for low, high in [(0.1, 0.4), (0.4, 0.7), (0.7, 1.0)]:
        band = (raw >= low) & (raw < high)
        rate = labels[band].mean()
        se = np.sqrt(rate * (1 - rate) / band.sum())
        assert abs(table.apply(raw[band]).mean() - rate) <= 4 * se + 1e-9
        assert abs(rate - raw[band].mean()) > 4 * se  # the raw score was off in that band


def _max_slope(boundaries: list[float], predictions: list[float]) -> float:
    b, p = np.asarray(boundaries), np.asarray(predictions)
    rising = np.diff(p) > 0
    return float(np.max(np.diff(p)[rising] / np.diff(b)[rising]))


def test_centered_table_joins_block_midpoints() -> None:
    # Blocks [0.1, 0.2] at 0.0, [0.2000001, 0.5] at 0.3 and the single score 0.6 at 0.9.
    boundaries = [0.1, 0.2, 0.2000001, 0.5, 0.6]
    predictions = [0.0, 0.0, 0.3, 0.3, 0.9]
    assert centered_table(boundaries, predictions) == (
        [(0.1 + 0.2) / 2, (0.2000001 + 0.5) / 2, 0.6], [0.0, 0.3, 0.9]
    )
    assert centered_table([0.4], [0.2]) == ([0.4], [0.2])


def test_fitted_table_has_no_near_vertical_steps(spark: Any) -> None:
    """A last-bit change of the raw score (float32 trees, ONNX against Spark) stays invisible."""
    rng = np.random.default_rng(5)
    n = 20000
    *_, scored = _inflated_scores(spark, rng, n)
    table = fit_calibration(scored)
    # Spark's own table steps between adjacent scores, on average 1/n apart.
    model = IsotonicRegression(featuresCol=RAW_PROBABILITY_COLUMN, labelCol=LABEL_COLUMN).fit(
        scored.select(RAW_PROBABILITY_COLUMN, F.col(LABEL_COLUMN).cast("double"))
    )
    steep = _max_slope(model.boundaries.toArray().tolist(), model.predictions.toArray().tolist())
    slope = _max_slope(table.boundaries, table.predictions)
    assert steep > 1000, steep
    assert slope < 100, slope


def test_nan_and_null_pass_through(spark: Any) -> None:
    table = Calibration(boundaries=[0.2, 0.6], predictions=[0.1, 0.3])
    df = spark.createDataFrame([(float("nan"),), (None,)], "x double")
    rows = df.select(calibrated(F.col("x"), table).alias("p")).collect()
    assert np.isnan(rows[0]["p"]) and rows[1]["p"] is None
    assert np.isnan(table.apply(np.array([np.nan]))[0])
