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
from src.pipelines.evaluation.point_metrics import RANK, P, Y, calibration_figures
from src.pipelines.evaluation.spark_metrics import binary_metrics, positive_probability
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

    def unpersist(self) -> None:
        self.validation_predictions.unpersist()


def probability_quality(validation: DataFrame, test: DataFrame, bins: int) -> CalibrationCheck:
    """ECE and Brier of raw and calibrated probabilities on both slices, computed in Spark."""
    values: dict[str, float] = {}
    for side, frame in (("validation", validation), ("test", test)):
        for suffix, column in (("", PROBABILITY_COLUMN), ("_raw", RAW_PROBABILITY_COLUMN)):
            scored = frame.select(
                F.col(LABEL_COLUMN).cast("double").alias(Y),
                F.col(column).alias(P),
                F.col(column).alias(RANK),
            )
            ece, brier = calibration_figures(scored, bins, what=f"{side} {column}")
            values[f"{side}_ece{suffix}"] = ece
            values[f"{side}_brier{suffix}"] = brier
    return CalibrationCheck(bins=bins, **values)


def fit_calibrated(name: ModelName, data: TrainingData, cfg: Config) -> FittedModel:
    """Fit `name` on the fit part, calibrate it on the validation slice, measure both slices."""
    train_cfg = cfg.train
    params = train_cfg.models[name]
    grid = train_cfg.grids.get(name) if train_cfg.search else None
    started = time.perf_counter()
    model = fit_pipeline(
        name, data.fit, data.spec, params, cfg.seed, train_cfg.balance,
        grid=grid, search_train_ratio=1.0 - train_cfg.validation_fraction,
    )
    seconds = round(time.perf_counter() - started, 3)
    log.info("train.model_fitted", model=name, seconds=seconds)
    raw_validation = predictions(model, data.validation).withColumnRenamed(
        PROBABILITY_COLUMN, RAW_PROBABILITY_COLUMN
    ).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        # The calibrator is fitted on the same slice that evaluate later selects on: accepted
        # here, as isotonic regression is monotone and barely moves the ranking metrics.
        calibration = fit_calibration(raw_validation, fitted_on="validation")
    finally:
        raw_validation.unpersist()
    validation = calibrate_predictions(predictions(model, data.validation), calibration)
    validation = validation.persist(StorageLevel.MEMORY_AND_DISK)
    test = calibrate_predictions(predictions(model, data.test), calibration)
    return FittedModel(
        model=model,
        params=classifier_params(model, sorted({*params, *(grid or {})})),
        seconds=seconds,
        calibration=calibration,
        validation=binary_metrics(validation, LABEL_COLUMN, PROBABILITY_COLUMN),
        test=binary_metrics(test, LABEL_COLUMN, PROBABILITY_COLUMN),
        raw_validation=binary_metrics(validation, LABEL_COLUMN, RAW_PROBABILITY_COLUMN),
        check=probability_quality(validation, test, cfg.evaluate.calibration_bins),
        validation_predictions=validation,
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
