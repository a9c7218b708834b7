"""One supervised model, fitted, calibrated on the validation slice, measured and saved."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from src.contracts import CalibrationCheck, ModelMetrics
from src.core.calibration import CALIBRATION_FILE, Calibration
from src.core.feature_spec import FeatureSpec
from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.pipelines.evaluation.point_metrics import (
    PointMetrics,
    ProbabilityFigures,
    driver_point_metrics,
    driver_probability_figures,
    point_metrics,
    probability_figures,
    scored_slice,
)
from src.pipelines.evaluation.spark_metrics import positive_probability
from src.pipelines.training.calibration import (
    RAW_PROBABILITY_COLUMN,
    calibrate_predictions,
    fit_calibration,
)
from src.pipelines.training.classifiers import (
    PROBABILITY_COLUMN,
    ModelName,
    classifier_params,
    fit_pipeline,
)
from src.pipelines.training.data import TrainingData
from src.utils.config import Config
from src.utils.logging import get_logger
from src.utils.spark_io import save_model_deterministic, write_parquet_deterministic

log = get_logger(component="training")

MODEL_DIR = "model"
SPEC_FILE = "feature_spec.json"
VALIDATION_FILE = "validation_predictions.parquet"


def predictions(model: PipelineModel, df: DataFrame) -> DataFrame:
    """Key, label and probability of default of every row of `df`."""
    return model.transform(df).select(
        KEY_COLUMN,
        LABEL_COLUMN,
        positive_probability(PROBABILITY_COLUMN).alias(PROBABILITY_COLUMN),
    )


@dataclass(frozen=True)
class FittedModel:
    """A fitted pipeline, its calibration, its figures and its persisted validation predictions."""

    model: PipelineModel
    params: dict[str, Any]
    seconds: float
    calibration: Calibration
    validation: ModelMetrics
    test: ModelMetrics
    raw_validation: ModelMetrics
    check: CalibrationCheck
    validation_predictions: DataFrame
    validation_rows: int

    def unpersist(self) -> None:
        self.validation_predictions.unpersist()


def slice_figures(
    scored: DataFrame, rows: int, bins: int, what: str, rank_by: str, driver_rows: int
) -> tuple[PointMetrics, ProbabilityFigures]:
    """Figures of the calibrated probabilities ranked by `rank_by`, as evaluate measures the
    slice, and of the raw probabilities alone; on the driver when the slice's `rows` are at most
    `driver_rows`, as evaluate does."""
    calibrated_what = f"{what} {PROBABILITY_COLUMN}"
    raw_what = f"{what} {RAW_PROBABILITY_COLUMN}"
    if rows <= driver_rows:
        local = scored.toPandas().sort_values(KEY_COLUMN, ignore_index=True)
        y = local[LABEL_COLUMN].to_numpy(dtype=float)
        p, raw = local[PROBABILITY_COLUMN].to_numpy(), local[RAW_PROBABILITY_COLUMN].to_numpy()
        return (
            driver_point_metrics(y, p, local[rank_by].to_numpy(), bins, what=calibrated_what),
            driver_probability_figures(y, raw, bins, what=raw_what),
        )
    calibrated = scored_slice(scored, F.col(PROBABILITY_COLUMN), F.col(rank_by))
    uncalibrated = scored_slice(scored, F.col(RAW_PROBABILITY_COLUMN))
    return (
        point_metrics(calibrated, bins, what=calibrated_what),
        probability_figures(uncalibrated, bins, what=raw_what),
    )


def _metrics(
    ranking: PointMetrics, probabilities: PointMetrics | ProbabilityFigures
) -> ModelMetrics:
    return ModelMetrics(
        auc_roc=ranking.auc_roc, auc_pr=ranking.auc_pr, log_loss=probabilities.log_loss
    )


def fit_calibrated(name: ModelName, data: TrainingData, cfg: Config) -> FittedModel:
    """Fit `name` on the fit part, calibrate it on the validation slice, measure both slices."""
    train_cfg = cfg.train
    params = train_cfg.models[name]
    grid = train_cfg.grids.get(name) if train_cfg.search else None
    bins = cfg.evaluate.calibration_bins
    started = time.perf_counter()
    model = fit_pipeline(
        name, data.fit, data.spec, params, cfg.seed, train_cfg.balance,
        grid=grid, search_train_ratio=1.0 - train_cfg.validation_fraction,
    )
    seconds = round(time.perf_counter() - started, 3)
    log.info("train.model_fitted", model=name, seconds=seconds)
    # Each slice is scored once: the calibrator's fit and every figure read the persisted scores.
    scored_validation = predictions(model, data.validation).persist(StorageLevel.MEMORY_AND_DISK)
    test = None
    try:
        # The calibrator is fitted on the same slice that evaluate later selects on: accepted
        # here, as isotonic regression is monotone and barely moves the ranking metrics.
        calibration = fit_calibration(
            scored_validation.withColumnRenamed(PROBABILITY_COLUMN, RAW_PROBABILITY_COLUMN),
            fitted_on="validation",
        )
        validation = calibrate_predictions(scored_validation, calibration).persist(
            StorageLevel.MEMORY_AND_DISK
        )
        test = calibrate_predictions(predictions(model, data.test), calibration).persist(
            StorageLevel.MEMORY_AND_DISK
        )
        # Selection ranks the validation slice by the raw scores the calibrator was fitted on;
        # test is ranked by what is served, the calibrated probability (evaluate does the same).
        driver_rows = cfg.evaluate.driver_sample_rows
        valid_cal, valid_raw = slice_figures(
            validation, data.validation_slice.rows, bins, "validation", RAW_PROBABILITY_COLUMN,
            driver_rows,
        )
        test_cal, test_raw = slice_figures(
            test, data.test_rows, bins, "test", PROBABILITY_COLUMN, driver_rows
        )
    finally:
        scored_validation.unpersist()
        if test is not None:
            test.unpersist()
    return FittedModel(
        model=model,
        params=classifier_params(model, sorted({*params, *(grid or {})})),
        seconds=seconds,
        calibration=calibration,
        validation=_metrics(valid_cal, valid_cal),
        test=_metrics(test_cal, test_cal),
        raw_validation=_metrics(valid_cal, valid_raw),  # ranked by the raw scores too
        check=CalibrationCheck(
            bins=bins,
            validation_ece_raw=valid_raw.calibration_error,
            validation_ece=valid_cal.calibration_error,
            test_ece_raw=test_raw.calibration_error,
            test_ece=test_cal.calibration_error,
            validation_brier_raw=valid_raw.brier,
            validation_brier=valid_cal.brier,
            test_brier_raw=test_raw.brier,
            test_brier=test_cal.brier,
        ),
        validation_predictions=validation,
        validation_rows=valid_cal.rows,
    )


def save_fitted(folder: Path, fitted: FittedModel, spec: FeatureSpec) -> Path:
    """Write model, spec, calibration and validation predictions to `folder`, byte-stably."""
    folder.mkdir(parents=True)
    save_model_deterministic(fitted.model, folder / MODEL_DIR)
    (folder / SPEC_FILE).write_text(spec.model_dump_json(indent=2) + "\n")
    (folder / CALIBRATION_FILE).write_text(fitted.calibration.model_dump_json(indent=2) + "\n")
    write_parquet_deterministic(
        fitted.validation_predictions, folder / VALIDATION_FILE, order_by=[KEY_COLUMN]
    )
    return folder
