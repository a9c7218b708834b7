"""Typed messages between the supervisor and the agents: one request and one result per stage.

A result is written to `reports/<stage>.json`; the next stage's request is built from it and checked
against the artifacts on disk, so a stale or foreign upstream result fails early and clearly.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Marks a field that records one run (ids, times) rather than what the run produced. Such fields
# are written to reports/runs/<stage>.json, so a rerun with the same outcome leaves
# reports/<stage>.json, which DVC's downstream stages depend on, byte-identical
# (src/utils/stage_reports.py).
RUN_RECORD: dict[str, Any] = {"run_record": True}


class Artifact(Message):
    """A file or folder a stage produced, with its content hash."""

    path: str = Field(description="path relative to the project root")
    sha256: str
    rows: int | None = None


class StageResult(Message):
    """Fields every result carries; the supervisor fills the run fields."""

    stage: str
    run_id: str = Field(default="", json_schema_extra=RUN_RECORD)
    finished_at: datetime | None = Field(default=None, json_schema_extra=RUN_RECORD)
    duration_s: float = Field(default=0.0, json_schema_extra=RUN_RECORD)

    def artifacts(self) -> list[Artifact]:
        """Every artifact this result names, however deeply nested, for staleness checks."""
        return list(_find_artifacts(self))


def _find_artifacts(value: object) -> Iterator[Artifact]:
    if isinstance(value, Artifact):
        yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _find_artifacts(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _find_artifacts(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _find_artifacts(item)


# --- fetch ---------------------------------------------------------------------------------------


class FetchRequest(Message):
    source: Literal["kaggle", "file", "synthetic"]
    reason: str = Field(description="why this source was chosen (auto resolves at request time)")


class FetchResult(StageResult):
    stage: Literal["fetch"] = "fetch"
    source: Literal["kaggle", "file", "synthetic"]
    origin: str = Field(description="dataset slug, input file or generator settings")
    raw: Artifact
    bytes: int


# --- prep ----------------------------------------------------------------------------------------


class PrepRequest(Message):
    raw: Artifact


class PrepResult(StageResult):
    stage: Literal["prep"] = "prep"
    processed: Artifact
    rejected: Artifact
    input_rows: int = Field(description="data lines read, footers included")
    footer_rows: int
    unresolved_rows: dict[str, int] = Field(description="loans without an outcome, by loan_status")
    rejected_rows: int
    rejected_reasons: dict[str, int] = Field(
        default_factory=dict,
        description="rejected rows per reason, most frequent first; a row may have several",
    )
    kept_rows: int
    default_share: float
    feature_columns: list[str]
    missing_columns: list[str] = Field(description="allowlisted columns empty in this input")


# --- split ---------------------------------------------------------------------------------------


class SplitRequest(Message):
    processed: Artifact


class SplitSide(Message):
    rows: int
    defaults: int
    default_share: float
    first_issue_d: str | None
    last_issue_d: str | None


class SplitResult(StageResult):
    stage: Literal["split"] = "split"
    method: Literal["stratified", "time"]
    seed: int
    train: Artifact
    test: Artifact
    train_side: SplitSide
    test_side: SplitSide
    time_cutoff: str | None = None


# --- train_sup -----------------------------------------------------------------------------------


class TrainSupRequest(Message):
    train: Artifact
    test: Artifact


class ModelMetrics(Message):
    auc_roc: float
    auc_pr: float
    log_loss: float


class CalibrationCheck(Message):
    """Expected calibration error and Brier score before (raw) and after the calibrator."""

    bins: int
    validation_ece_raw: float
    validation_ece: float = Field(description="in-sample: the calibrator is fitted on these rows")
    test_ece_raw: float
    test_ece: float
    validation_brier_raw: float
    validation_brier: float
    test_brier_raw: float
    test_brier: float


class TrainedModel(Message):
    name: str = Field(description="random_forest | gbt | mlp | logistic | xgboost")
    run_id: str = Field(description="MLflow run id", json_schema_extra=RUN_RECORD)
    model_uri: str = Field(
        description="MLflow URI of the logged Spark model", json_schema_extra=RUN_RECORD
    )
    path: Artifact = Field(description="Spark PipelineModel saved under models/supervised/<name>/")
    feature_spec: Artifact
    validation_predictions: Artifact = Field(
        description="loan_key, default, probability (calibrated), raw_probability of the "
        "validation slice of the training split"
    )
    calibration: Artifact = Field(
        description="calibration.json beside the model: centered isotonic map of its raw "
        "P(default), fitted on the validation slice"
    )
    params: dict[str, float | int | str | list[int]]
    validation: ModelMetrics = Field(description="on calibrated probabilities")
    test: ModelMetrics = Field(description="on calibrated probabilities")
    raw_validation: ModelMetrics = Field(description="on the model's raw probabilities")
    calibration_check: CalibrationCheck
    train_seconds: float = Field(json_schema_extra=RUN_RECORD)


class ValidationSlice(Message):
    """The part of the training split held out for validation, calibration and selection."""

    method: Literal["time", "random"] = Field(description="latest issue months, or seeded random")
    rows: int
    defaults: int
    first_issue_d: str | None
    last_issue_d: str | None


class TrainSupResult(StageResult):
    stage: Literal["train_sup"] = "train_sup"
    train_data_sha256: str
    git_commit: str | None = Field(json_schema_extra=RUN_RECORD)
    experiment: str
    validation: ValidationSlice
    models: dict[str, TrainedModel]


# --- train_unsup ---------------------------------------------------------------------------------


class SegmentProfile(Message):
    """One risk band on the training split: the clusters pooled into it and their loans."""

    band: str
    clusters: list[int]
    size: int
    default_rate: float
    feature_means: dict[str, float]


class SegmentationModel(Message):
    name: str = Field(description="kmeans | gmm")
    run_id: str = Field(json_schema_extra=RUN_RECORD)
    model_uri: str = Field(json_schema_extra=RUN_RECORD)
    k: int
    selection: dict[int, float] = Field(description="score of each k tried (silhouette or BIC)")
    bands_per_k: dict[int, int] = Field(
        description="risk bands left after merging close default rates, for each k tried"
    )
    path: Artifact
    params_file: Artifact = Field(description="JSON of centres / weights, means, covariances")
    segments: list[SegmentProfile]


class TrainUnsupRequest(Message):
    train: Artifact


class TrainUnsupResult(StageResult):
    stage: Literal["train_unsup"] = "train_unsup"
    serving_model: str
    models: dict[str, SegmentationModel]
    profile_plot: str


# --- evaluate ------------------------------------------------------------------------------------


class Interval(Message):
    low: float
    high: float


class ThresholdChoice(Message):
    rule: Literal["profit", "f1", "youden"]
    value: float = Field(description="probability of default at or above which a loan is declined")
    chosen_on: str = Field(description="data the threshold was chosen on (never the test split)")


class ConfusionMatrix(Message):
    tn: int
    fp: int
    fn: int
    tp: int


class SliceMetrics(Message):
    """Ranking and probability metrics of one model or reference on one named data set."""

    data: Literal["validation", "test"]
    rows: int
    auc_roc: float
    auc_roc_ci: Interval
    auc_pr: float
    auc_pr_ci: Interval
    ks: float
    gini: float
    brier: float
    log_loss: float
    calibration_error: float = Field(description="expected calibration error (ECE)")
    sample_rows: int | None = Field(
        default=None,
        description="rows of the seeded driver sample the bootstrap intervals (and, on "
        "validation, the threshold scan) used; the point figures are on all `rows`",
    )


class Evaluation(Message):
    """One model or reference: its test metrics (reported only), its validation metrics (the
    selection data) and the decision figures on test at the threshold chosen on validation.
    """

    name: str
    kind: Literal["model", "reference"]
    test: SliceMetrics
    validation: SliceMetrics | None = Field(
        default=None, description="the same metrics on the validation slice (selection data)"
    )
    threshold: ThresholdChoice
    precision: float
    recall: float
    f1: float
    confusion: ConfusionMatrix
    calibrated: bool = Field(
        default=False, description="probabilities went through the model's calibration table"
    )

    @model_validator(mode="before")
    @classmethod
    def _nest_legacy_test_figures(cls, data: Any) -> Any:
        # Bundles registered before `test` existed carry the test figures at the top level.
        if not isinstance(data, dict) or "test" in data or "auc_roc" not in data:
            return data
        shared = set(SliceMetrics.model_fields) - {"data", "rows", "sample_rows"}
        confusion = ConfusionMatrix.model_validate(data["confusion"])
        rows = confusion.tn + confusion.fp + confusion.fn + confusion.tp
        test = {"data": "test", "rows": rows, **{k: data[k] for k in shared if k in data}}
        return {**{k: v for k, v in data.items() if k not in shared}, "test": test}


class SegmentEvaluation(Message):
    band: str
    size: int
    default_rate: float
    mean_predicted: float


class EvaluateRequest(Message):
    test: Artifact
    train_sup: TrainSupResult
    train_unsup: TrainUnsupResult


class EvaluateResult(StageResult):
    stage: Literal["evaluate"] = "evaluate"
    primary_metric: str
    best_model: str
    selected_on: str = Field(
        default="validation",
        description="data the best model was chosen on (the validation slice, never test)",
    )
    evaluations: dict[str, Evaluation]
    segments: list[SegmentEvaluation]
    metrics_file: Artifact
    plots: list[str]


# --- register ------------------------------------------------------------------------------------


class RegisterRequest(Message):
    test: Artifact
    train_sup: TrainSupResult
    train_unsup: TrainUnsupResult
    evaluate: EvaluateResult
    split: SplitResult = Field(description="for the model card's data periods")
    fetch: FetchResult = Field(description="for the model card's data source")


class RegisterResult(StageResult):
    stage: Literal["register"] = "register"
    model_name: str
    version: str
    alias: Literal["champion", "challenger"]
    decision: str = Field(description="why the version got its alias, with both scores")
    score: float
    champion_score: float | None = Field(
        description="the previous champion on the same validation data"
    )
    scored_on: str = Field(
        default="validation", description="data `score`, `champion_score` and `floor_score` are on"
    )
    floor_score: float | None = Field(
        default=None, description="the floor reference (sub_grade) on the same validation data"
    )
    previous_champion_version: str | None
    onnx_max_abs_diff: float
    bundle: Artifact
    model_card: str
    scored_rows: int | None = Field(
        default=None,
        description="validation loans (a seeded sample of at most register.parity_sample_rows) "
        "that `score`, `champion_score` and the ONNX parity are on",
    )
    floor_candidate_score: float | None = Field(
        default=None,
        description="this version's own figure from evaluate on the whole validation slice, "
        "set against `floor_score`",
    )


# --- score (batch) -------------------------------------------------------------------------------


class ScoreRequest(Message):
    input_path: str
    output_path: str
    model_uri: str
    format: Literal["parquet", "csv"] | None = Field(
        default=None, description="output format; default `score.format` of params.yaml"
    )


class ScoreResult(StageResult):
    stage: Literal["score"] = "score"
    model_uri: str
    model_version: str | None
    scored_rows: int
    unscored_rows: int
    unscored_reasons: dict[str, int]
    output: str = Field(
        description="folder of part files, one row per loan: scored and unscored (`status`)"
    )
    unscored_output: str | None = Field(
        default=None,
        description="unused since unscored loans sit in `output` with status 'unscored'",
    )
    input_rows: int = Field(default=0, description="data records read, footers included")
    footer_rows: int = Field(default=0, description="summary lines of the export: not loans")
    open_loans: int = Field(default=0, description="scored loans without a final outcome yet")
    declined_rows: int = Field(default=0, description="scored loans with decision 'decline'")
    format: Literal["parquet", "csv"] = "parquet"
    output_files: int = Field(default=0, description="part files written")
