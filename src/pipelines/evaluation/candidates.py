"""The candidates evaluate compares: every trained model and two plain references, each as scored
Spark DataFrames of the test split and of the validation slice (key, y, p, rank_score).

Model probabilities are calibrated (the model's calibration table applied after the classifier), as
the registered model serves them. On the validation slice a model ranks by its raw probabilities,
because its calibration table was fitted on those rows and ties what it maps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from src.contracts import TrainedModel
from src.core.feature_spec import FeatureSpec
from src.core.raw_schema import KEY_COLUMN
from src.pipelines.evaluation.calibrated import model_calibration
from src.pipelines.evaluation.point_metrics import scored_slice
from src.pipelines.evaluation.spark_metrics import positive_probability
from src.pipelines.training.calibration import RAW_PROBABILITY_COLUMN, calibrated
from src.pipelines.training.classifiers import PROBABILITY_COLUMN
from src.pipelines.training.references import (
    LOGISTIC_REFERENCE,
    SUB_GRADE,
    SUB_GRADE_REFERENCE,
    fit_logistic,
    fit_sub_grade,
)
from src.utils.errors import DataError
from src.utils.logging import get_logger

log = get_logger(agent="EvaluatorAgent")

# Tree models whose featureImportances are charted.
TREE_MODELS = ("random_forest", "gbt")
Kind = Literal["model", "reference"]


@dataclass(frozen=True)
class Candidate:
    """A model or reference: its scored test and validation slices, and where its threshold
    comes from."""

    name: str
    kind: Kind
    test: DataFrame
    validation: DataFrame
    chosen_on: str
    importances: dict[str, float] | None = None
    calibrated: bool = False


def _persisted(df: DataFrame) -> DataFrame:
    # Scored once, read by the point metrics, the driver sample and the segments.
    return df.persist(StorageLevel.MEMORY_AND_DISK)


def _check_same_loans(name: str, scored: DataFrame, validation: DataFrame) -> None:
    left = scored.select(F.col(KEY_COLUMN).alias("a"))
    right = validation.select(F.col(KEY_COLUMN).alias("b"))
    unmatched = left.join(right, F.col("a") == F.col("b"), "full_outer").filter(
        F.col("a").isNull() | F.col("b").isNull()
    )
    if unmatched.limit(1).count():
        raise DataError(
            f"evaluate: {name}'s predictions are not of the expected loans (the split or the "
            "trainer's validation slice changed); rerun 'train_sup'"
        )


def model_candidate(
    model: TrainedModel, resolve: Callable[[str], Path], test: DataFrame, validation: DataFrame,
    validation_rows: int,
) -> Candidate:
    """A trained model: calibrated test scores, and the trainer's own validation predictions."""
    spark = test.sparkSession
    pipeline = PipelineModel.load(str(resolve(model.path.path)))
    calibration = model_calibration(model, resolve)
    saved = spark.read.parquet(str(resolve(model.validation_predictions.path)))
    _check_same_loans(model.name, saved, validation)
    raw = positive_probability(PROBABILITY_COLUMN)
    test_scores = _persisted(scored_slice(
        pipeline.transform(test).withColumn(RAW_PROBABILITY_COLUMN, raw),
        calibrated(F.col(RAW_PROBABILITY_COLUMN), calibration),
    ))
    importances = None
    if model.name in TREE_MODELS:
        spec = FeatureSpec.model_validate_json(resolve(model.feature_spec.path).read_text())
        values = pipeline.stages[-1].featureImportances.toArray().tolist()
        importances = dict(zip(spec.features, values, strict=True))
    return Candidate(
        name=model.name,
        kind="model",
        test=test_scores,
        # The trainer stores calibrated probabilities beside the raw ones it fitted the table on.
        validation=scored_slice(saved, F.col(PROBABILITY_COLUMN), F.col(RAW_PROBABILITY_COLUMN)),
        chosen_on=(
            f"validation slice of the training split ({validation_rows:,} loans, "
            f"{model.validation_predictions.path})"
        ),
        importances=importances,
        calibrated=calibration.method != "identity",
    )


def reference_candidates(
    fit: DataFrame, validation: DataFrame, validation_rows: int, test: DataFrame,
    spec: FeatureSpec, balance: bool, spec_path: str,
) -> list[Candidate]:
    """sub_grade's default rate and a plain logistic regression, both fitted on `fit`."""
    chosen_on = (
        f"validation slice of the training split ({validation_rows:,} loans; "
        "reference fitted on the rest of the training split)"
    )
    sub_grade = fit_sub_grade(fit)
    log.info("evaluate.reference.sub_grade", grades=len(sub_grade.rates),
             overall_rate=round(sub_grade.overall, 4))
    by_grade = sub_grade.probability(F.col(SUB_GRADE))
    started = time.perf_counter()
    logistic = fit_logistic(fit, spec, balance)
    log.info("evaluate.reference.logistic", spec=spec_path, features=len(spec.features),
             balance=balance, seconds=round(time.perf_counter() - started, 3))
    probability = positive_probability(PROBABILITY_COLUMN)
    return [
        Candidate(SUB_GRADE_REFERENCE, "reference", _persisted(scored_slice(test, by_grade)),
                  scored_slice(validation, by_grade), chosen_on),
        Candidate(LOGISTIC_REFERENCE, "reference",
                  _persisted(scored_slice(logistic.transform(test), probability)),
                  scored_slice(logistic.transform(validation), probability), chosen_on),
    ]
