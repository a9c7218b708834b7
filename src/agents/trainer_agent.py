"""TrainerAgent: training split → supervised default models, each an MLflow run and a DVC out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.spark
import numpy as np
import pandas as pd
import pyspark
from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession

from src.agents.base import Agent, Skill
from src.contracts import (
    Artifact,
    CalibrationCheck,
    ModelMetrics,
    TrainedModel,
    TrainSupRequest,
    TrainSupResult,
    ValidationSlice,
)
from src.core.calibration import CALIBRATION_FILE, Calibration
from src.core.feature_spec import FeatureSpec
from src.core.metrics import brier_score, expected_calibration_error
from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.pipelines.evaluation.spark_metrics import binary_metrics, positive_probability
from src.pipelines.preparation.splitting import side_summary, split_fit_validation
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
from src.pipelines.training.spec_fitting import fit_feature_spec
from src.utils.atomic import atomic_path
from src.utils.config import Config
from src.utils.errors import DataError
from src.utils.hashing import content_hash
from src.utils.logging import get_logger
from src.utils.spark import get_spark
from src.utils.spark_io import save_model_deterministic, write_parquet_deterministic
from src.utils.tracking import configure_mlflow, git_commit

log = get_logger(agent="TrainerAgent")

MODEL_DIR = "model"
SPEC_FILE = "feature_spec.json"
VALIDATION_FILE = "validation_predictions.parquet"
MLFLOW_MODEL_NAME = "model"
# Explicit requirements: without them MLflow spends ~20 s per model inferring them.
PIP_REQUIREMENTS = [f"mlflow=={mlflow.__version__}", f"pyspark=={pyspark.__version__}"]


@dataclass(frozen=True)
class TrainingData:
    """The fit and validation parts of the training split, the test split and the fitted spec."""

    fit: DataFrame
    validation: DataFrame
    test: DataFrame
    spec: FeatureSpec
    validation_slice: ValidationSlice

    def unpersist(self) -> None:
        for df in (self.fit, self.validation, self.test):
            df.unpersist()


def _read_split(spark: SparkSession, cfg: Config, artifact: Artifact, side: str) -> DataFrame:
    path = cfg.path(artifact.path)
    if not path.exists():
        raise DataError(f"train_sup: the {side} split {artifact.path} is missing; run split")
    df = spark.read.parquet(str(path))
    if df.isEmpty():
        raise DataError(f"train_sup: the {side} split {artifact.path} has no rows")
    return df


def _spread(df: DataFrame, partitions: int) -> DataFrame:
    # The stratified window leaves one partition per label; hashing the key spreads rows over the
    # cores, and sorting fixes their order, which seeded sampling inside the estimators depends on.
    spread = df.repartition(partitions, KEY_COLUMN).sortWithinPartitions(KEY_COLUMN)
    return spread.persist(StorageLevel.MEMORY_AND_DISK)


def load_training_data(spark: SparkSession, cfg: Config, request: TrainSupRequest) -> TrainingData:
    """Read both splits, carve the validation slice, fit the feature spec on the fit part only.

    The three frames come back persisted: call `unpersist` when done.
    """
    train = _read_split(spark, cfg, request.train, "train")
    test = _read_split(spark, cfg, request.test, "test")
    method = cfg.train.validation_method
    fit, validation = split_fit_validation(
        train, cfg.train.validation_fraction, cfg.seed, method=method
    )
    partitions = cfg.spark.shuffle_partitions
    fit, validation, test = (_spread(df, partitions) for df in (fit, validation, test))
    summary = side_summary(validation)
    fields = ("rows", "defaults", "first_issue_d", "last_issue_d")
    validation_slice = ValidationSlice.model_validate(
        {"method": method, **{k: summary[k] for k in fields}}
    )
    log.info("train.validation_slice", **validation_slice.model_dump())
    spec = fit_feature_spec(fit, cfg.train.numeric, cfg.train.categorical, cfg.train.spec)
    return TrainingData(
        fit=fit, validation=validation, test=test, spec=spec, validation_slice=validation_slice
    )


def predictions(model: PipelineModel, df: DataFrame) -> DataFrame:
    """Key, label and probability of default of every row of `df`."""
    return model.transform(df).select(
        KEY_COLUMN,
        LABEL_COLUMN,
        positive_probability(PROBABILITY_COLUMN).alias(PROBABILITY_COLUMN),
    )


@dataclass(frozen=True)
class _Fitted:
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


def _probability_quality(
    validation: pd.DataFrame, test: pd.DataFrame, bins: int
) -> CalibrationCheck:
    """ECE and Brier of raw and calibrated probabilities on both frames."""
    values: dict[str, float] = {}
    for side, frame in (("validation", validation), ("test", test)):
        y = frame[LABEL_COLUMN].to_numpy(dtype=np.float64)
        for suffix, column in (("", PROBABILITY_COLUMN), ("_raw", RAW_PROBABILITY_COLUMN)):
            p = frame[column].to_numpy(dtype=np.float64)
            values[f"{side}_ece{suffix}"] = expected_calibration_error(y, p, bins)
            values[f"{side}_brier{suffix}"] = brier_score(y, p)
    return CalibrationCheck(bins=bins, **values)


class TrainerAgent(Agent):
    """Supervised training: the default models of `train.models`, calibrated, tracked in MLflow."""

    skills = (Skill("train_sup", TrainSupRequest, TrainSupResult, "train"),)

    def _relative(self, path: Path) -> str:
        resolved = path.resolve()
        root = self.cfg.root.resolve()
        return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)

    def _artifact(self, staged: Path, final: Path, rows: int | None = None) -> Artifact:
        """An artifact named by its `final` path, hashed where it is `staged` until the rename."""
        return Artifact(path=self._relative(final), sha256=content_hash(staged), rows=rows)

    def train(self, request: TrainSupRequest) -> TrainSupResult:
        """Train every model of `train.models` on the training split; each becomes an MLflow run."""
        spark = get_spark(self.cfg.spark)
        experiment_id = configure_mlflow(self.cfg)
        commit = git_commit(self.cfg.root)
        data = load_training_data(spark, self.cfg, request)
        names: list[ModelName] = list(self.cfg.train.models)
        models: dict[str, TrainedModel] = {}
        # All models go into one temporary sibling of models_dir, renamed into place once every
        # one is saved: a killed run leaves the previous folder whole, never a mixture.
        try:
            with atomic_path(self.cfg.path(self.cfg.train.models_dir)) as staging:
                staging.mkdir(parents=True)
                for i, name in enumerate(names, start=1):
                    log.info("train.model_start", model=name, i=i, n=len(names),
                             features=len(data.spec.features), balance=self.cfg.train.balance,
                             search=self.cfg.train.search)
                    models[name] = self._train_one(
                        name, data, request, experiment_id, commit, staging
                    )
                    trained = models[name]
                    log.info("train.model_done", model=name, i=i, n=len(names),
                             seconds=trained.train_seconds,
                             validation_auc=round(trained.validation.auc_roc, 4),
                             raw_validation_auc=round(trained.raw_validation.auc_roc, 4),
                             test_ece_raw=round(trained.calibration_check.test_ece_raw, 4),
                             test_ece=round(trained.calibration_check.test_ece, 4),
                             run_id=trained.run_id)
        finally:
            data.unpersist()
        return TrainSupResult(
            train_data_sha256=request.train.sha256,
            git_commit=commit,
            experiment=self.cfg.mlflow.experiment,
            validation=data.validation_slice,
            models=models,
        )

    def _fit(self, name: ModelName, data: TrainingData) -> _Fitted:
        train_cfg = self.cfg.train
        params = train_cfg.models[name]
        grid = train_cfg.grids.get(name) if train_cfg.search else None
        started = time.perf_counter()
        model = fit_pipeline(
            name, data.fit, data.spec, params, self.cfg.seed, train_cfg.balance,
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
        columns = [LABEL_COLUMN, PROBABILITY_COLUMN, RAW_PROBABILITY_COLUMN]
        return _Fitted(
            model=model,
            params=classifier_params(model, sorted({*params, *(grid or {})})),
            seconds=seconds,
            calibration=calibration,
            validation=binary_metrics(validation, LABEL_COLUMN, PROBABILITY_COLUMN),
            test=binary_metrics(test, LABEL_COLUMN, PROBABILITY_COLUMN),
            raw_validation=binary_metrics(validation, LABEL_COLUMN, RAW_PROBABILITY_COLUMN),
            check=_probability_quality(
                validation.select(columns).toPandas(),
                test.select(columns).toPandas(),
                self.cfg.evaluate.calibration_bins,
            ),
            validation_predictions=validation,
        )

    def _save(self, folder: Path, fitted: _Fitted, spec: FeatureSpec) -> Path:
        """Write model, spec, calibration and validation predictions to `folder`, byte-stably."""
        folder.mkdir(parents=True)
        save_model_deterministic(fitted.model, folder / MODEL_DIR)
        (folder / SPEC_FILE).write_text(spec.model_dump_json(indent=2) + "\n")
        (folder / CALIBRATION_FILE).write_text(fitted.calibration.model_dump_json(indent=2) + "\n")
        write_parquet_deterministic(
            fitted.validation_predictions, folder / VALIDATION_FILE, order_by=[KEY_COLUMN]
        )
        return folder

    def _train_one(
        self,
        name: ModelName,
        data: TrainingData,
        request: TrainSupRequest,
        experiment_id: str,
        commit: str | None,
        staging: Path,
    ) -> TrainedModel:
        fitted = self._fit(name, data)
        try:
            folder = self._save(staging / name, fitted, data.spec)
            validation_rows = fitted.validation_predictions.count()
        finally:
            fitted.unpersist()
        final = self.cfg.path(self.cfg.train.models_dir) / name
        with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
            mlflow.set_tags({"model": name, "stage": "train_sup"})
            mlflow.log_params(
                {
                    **{f"model.{k}": v for k, v in fitted.params.items()},
                    "model": name,
                    "seed": self.cfg.seed,
                    "balance": self.cfg.train.balance,
                    "search": self.cfg.train.search,
                    "validation_fraction": self.cfg.train.validation_fraction,
                    "validation_method": self.cfg.train.validation_method,
                    "validation_rows": validation_rows,
                    "n_features": len(data.spec.features),
                    "train_data_sha256": request.train.sha256,
                    "feature_spec_sha256": data.spec.sha256(),
                    "git_commit": commit,
                }
            )
            mlflow.log_metrics(
                {
                    **{f"validation_{k}": v for k, v in fitted.validation.model_dump().items()},
                    **{f"test_{k}": v for k, v in fitted.test.model_dump().items()},
                    **{f"raw_validation_{k}": v
                       for k, v in fitted.raw_validation.model_dump().items()},
                    **{k: v for k, v in fitted.check.model_dump().items() if k != "bins"},
                    "train_seconds": fitted.seconds,
                }
            )
            mlflow.log_artifact(str(folder / SPEC_FILE))
            mlflow.log_artifact(str(folder / CALIBRATION_FILE))
            info = mlflow.spark.log_model(
                fitted.model, MLFLOW_MODEL_NAME, pip_requirements=PIP_REQUIREMENTS
            )
        return TrainedModel(
            name=name,
            run_id=run.info.run_id,
            model_uri=info.model_uri,
            path=self._artifact(folder / MODEL_DIR, final / MODEL_DIR),
            feature_spec=self._artifact(folder / SPEC_FILE, final / SPEC_FILE),
            validation_predictions=self._artifact(
                folder / VALIDATION_FILE, final / VALIDATION_FILE, validation_rows
            ),
            calibration=self._artifact(folder / CALIBRATION_FILE, final / CALIBRATION_FILE),
            params=fitted.params,
            validation=fitted.validation,
            test=fitted.test,
            raw_validation=fitted.raw_validation,
            calibration_check=fitted.check,
            train_seconds=fitted.seconds,
        )
