"""Plain references the models are judged against: LendingClub's sub_grade alone, and a logistic
regression on the same feature spec, both fitted on the fit part of the training split.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pyspark.ml import PipelineModel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from src.core.feature_spec import FeatureSpec
from src.core.raw_schema import LABEL_COLUMN
from src.pipelines.training.classifiers import fit_pipeline
from src.utils.errors import DataError

SUB_GRADE = "sub_grade"
SUB_GRADE_REFERENCE = "ref_sub_grade"
LOGISTIC_REFERENCE = "ref_logistic"
REFERENCE_NAMES = (SUB_GRADE_REFERENCE, LOGISTIC_REFERENCE)
class SubGradeReference(BaseModel):
    """Observed default rate of each sub_grade on the fit rows; unseen grades: the overall rate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rates: dict[str, float]
    counts: dict[str, int]
    overall: float = Field(ge=0, le=1)

    def probability(self, sub_grade: Column) -> Column:
        """Probability of default of each loan from its sub_grade alone (a Spark column)."""
        rates = F.create_map(*(F.lit(v) for kv in sorted(self.rates.items()) for v in kv))
        return F.coalesce(F.try_element_at(rates, sub_grade), F.lit(self.overall))


def fit_sub_grade(fit: DataFrame) -> SubGradeReference:
    """Default rate per sub_grade on `fit` (one Spark job)."""
    if SUB_GRADE not in fit.columns:
        raise DataError(f"references: the training split has no '{SUB_GRADE}' column")
    rows = (
        fit.filter(F.col(SUB_GRADE).isNotNull())
        .groupBy(SUB_GRADE)
        .agg(F.count(F.lit(1)).alias("n"), F.sum(F.col(LABEL_COLUMN).cast("double")).alias("d"))
        .collect()
    )
    overall = fit.agg(F.avg(F.col(LABEL_COLUMN).cast("double"))).first()
    if not rows or overall is None or overall[0] is None:
        raise DataError("references: no loans with a sub_grade in the fit part of the split")
    return SubGradeReference(
        rates={str(r[SUB_GRADE]): float(r["d"]) / int(r["n"]) for r in rows},
        counts={str(r[SUB_GRADE]): int(r["n"]) for r in rows},
        overall=float(overall[0]),
    )


def fit_logistic(fit: DataFrame, spec: FeatureSpec, balance: bool) -> PipelineModel:
    """Spark's LogisticRegression (its defaults) on the spec's features, class-weighted as the
    trainer weights its models when `balance` is on: the candidate `logistic` with no settings."""
    return fit_pipeline("logistic", fit, spec, {}, seed=0, balance=balance)
