"""The data train_sup fits on: both splits, the validation slice carved from the training split,
and the feature spec fitted on the fit part only."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession

from src.contracts import Artifact, TrainSupRequest, ValidationSlice
from src.core.feature_spec import FeatureSpec
from src.core.raw_schema import KEY_COLUMN
from src.pipelines.preparation.splitting import side_summary, split_fit_validation
from src.pipelines.training.spec_fitting import fit_feature_spec
from src.utils.config import Config
from src.utils.errors import DataError
from src.utils.logging import get_logger
from src.utils.spark import table_partitions

log = get_logger(component="training")


@dataclass(frozen=True)
class TrainingData:
    """The fit and validation parts of the training split, the test split and the fitted spec."""

    fit: DataFrame
    validation: DataFrame
    test: DataFrame
    spec: FeatureSpec
    validation_slice: ValidationSlice
    test_rows: int

    def unpersist(self) -> None:
        for df in (self.fit, self.validation, self.test):
            df.unpersist()


def read_split(spark: SparkSession, cfg: Config, artifact: Artifact, side: str) -> DataFrame:
    path = cfg.path(artifact.path)
    if not path.exists():
        raise DataError(f"train_sup: the {side} split {artifact.path} is missing; run split")
    df = spark.read.parquet(str(path))
    if df.isEmpty():
        raise DataError(f"train_sup: the {side} split {artifact.path} has no rows")
    return df


def spread_and_persist(df: DataFrame, partitions: int) -> DataFrame:
    # Hashing the key fixes which rows share a partition, and sorting fixes their order: seeded
    # sampling inside the estimators depends on both, so neither may depend on the machine.
    spread = df.repartition(partitions, KEY_COLUMN).sortWithinPartitions(KEY_COLUMN)
    return spread.persist(StorageLevel.MEMORY_AND_DISK)


def load_training_data(spark: SparkSession, cfg: Config, request: TrainSupRequest) -> TrainingData:
    """Read both splits, carve the validation slice, fit the feature spec on the fit part only.

    The three frames come back persisted: call `unpersist` when done.
    """
    train = read_split(spark, cfg, request.train, "train")
    test = read_split(spark, cfg, request.test, "test")
    method = cfg.train.validation_method
    fit, validation = split_fit_validation(
        train, cfg.train.validation_fraction, cfg.seed, method=method
    )
    partitions = table_partitions(cfg.spark, train.count())
    fit, validation, test = (spread_and_persist(df, partitions) for df in (fit, validation, test))
    summary = side_summary(validation)
    fields = ("rows", "defaults", "first_issue_d", "last_issue_d")
    validation_slice = ValidationSlice.model_validate(
        {"method": method, **{k: summary[k] for k in fields}}
    )
    log.info("train.validation_slice", partitions=partitions, **validation_slice.model_dump())
    spec = fit_feature_spec(fit, cfg.train.numeric, cfg.train.categorical, cfg.train.spec)
    return TrainingData(
        fit=fit, validation=validation, test=test, spec=spec, validation_slice=validation_slice,
        test_rows=test.count(),
    )
