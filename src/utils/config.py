"""The one typed configuration of the pipeline, read from `params.yaml`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from src.core.loan import DERIVED, ISSUE_COLUMN, LOAN_COLUMNS, application_columns, required_columns
from src.core.raw_schema import RAW_COLUMNS, is_leaky
from src.core.scorecard import ScorecardScaling
from src.utils.errors import ConfigError

PARAMS_ENV = "CREDIT_RISK_PARAMS"
DEFAULT_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"

# Inputs of each derived feature: a derived feature is allowed only when its inputs are allowlisted
# (the issue month is always read).
DERIVED_INPUTS: dict[str, tuple[str, ...]] = {
    name: tuple(c for c in d.inputs if c != ISSUE_COLUMN) for name, d in DERIVED.items()
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KaggleConfig(Section):
    dataset: str
    file_name: str
    min_bytes: int = Field(gt=0)


class SyntheticConfig(Section):
    rows: int = Field(gt=0)
    chunk_rows: int = Field(gt=0)
    percent_strings: bool
    footer_lines: int = Field(ge=0)


class DataConfig(Section):
    source: Literal["auto", "kaggle", "file", "synthetic"]
    raw_path: Path
    file_path: Path
    kaggle: KaggleConfig
    synthetic: SyntheticConfig


class PrepConfig(Section):
    processed_path: Path
    rejected_path: Path
    multiline_csv: bool
    numeric: list[str]
    categorical: list[str]
    dates: list[str]
    derived: list[str]

    @model_validator(mode="after")
    def _origination_only(self) -> PrepConfig:
        allowed = [*self.numeric, *self.categorical, *self.dates]
        groups = {
            **{n: "numeric" for n in self.numeric},
            **{n: "categorical" for n in self.categorical},
            **{n: "dates" for n in self.dates},
        }
        for name in allowed:
            if name not in RAW_COLUMNS:
                raise ValueError(f"prep: '{name}' is not a LendingClub raw column")
            if is_leaky(name):
                raise ValueError(
                    f"prep: '{name}' is filled after the loan is issued and leaks the label; "
                    "only origination columns may be features"
                )
            if name not in LOAN_COLUMNS:
                raise ValueError(
                    f"prep: '{name}' has no entry in the loan table (src/core/loan.py) that says "
                    "how it parses and what values are plausible"
                )
            if LOAN_COLUMNS[name].group != groups[name]:
                raise ValueError(
                    f"prep: '{name}' is a {LOAN_COLUMNS[name].kind} column: list it under "
                    f"prep.{LOAN_COLUMNS[name].group}, not prep.{groups[name]}"
                )
        duplicates = {n for n in allowed if allowed.count(n) > 1}
        if duplicates:
            raise ValueError(f"prep: columns listed twice: {sorted(duplicates)}")
        for name in self.derived:
            if name not in DERIVED_INPUTS:
                raise ValueError(f"prep.derived: unknown derived feature '{name}'")
            missing = [c for c in DERIVED_INPUTS[name] if c not in allowed]
            if missing:
                raise ValueError(f"prep.derived: '{name}' needs {missing} in the allowlist")
        return self

    @property
    def application_columns(self) -> list[str]:
        """The columns a loan is parsed and judged on: the allowlist and the issue month."""
        return application_columns(self.numeric, self.categorical, self.dates)

    @property
    def required(self) -> list[str]:
        """Columns a kept loan must have: those the loan table marks required (issue_d always)."""
        return required_columns(self.application_columns)

    @property
    def feature_columns(self) -> list[str]:
        """Model-ready columns of the processed table (dates become derived features only)."""
        return [*self.numeric, *self.categorical, *self.derived]


class SplitConfig(Section):
    method: Literal["stratified", "time"]
    test_fraction: float = Field(gt=0, lt=1)
    train_path: Path
    test_path: Path


class ClusterConfig(Section):
    """The standalone cluster `make cluster-up` starts on this machine (scripts/cluster.py)."""

    host: str = "127.0.0.1"
    master_port: int = Field(default=7077, ge=1, le=65535)
    master_webui_port: int = Field(default=8080, ge=1, le=65535)
    workers: int = Field(default=2, ge=1)
    worker_cores: int = Field(default=1, ge=1)
    worker_memory: str = "1500m"
    daemon_memory: str = "256m"
    dir: Path = Path(".cluster")


class SparkConfig(Section):
    master: str
    app_name: str
    driver_memory: str
    shuffle_partitions: int = Field(gt=0)
    log_level: str
    # Where executors reach the driver: 127.0.0.1 only works when every executor is on this host.
    driver_host: str = "127.0.0.1"
    driver_bind_address: str = "127.0.0.1"
    executor_memory: str = "1g"
    # Raw CSV.gz is streamed once into record-aligned plain CSV parts of about this size.
    input_chunk_mb: int = Field(default=16, gt=0)
    # Training tables get one partition per this many rows, at least 2 and at most
    # shuffle_partitions: Spark's tree learners run a task per partition for every tree level.
    partition_rows: int = Field(default=100_000, gt=0)
    # How often long Spark work (training, scoring) logs a progress event.
    progress_interval_s: float = Field(default=30.0, gt=0)
    # Any other Spark setting, passed as is (e.g. spark.hadoop.fs.s3a.* for an object store).
    conf: dict[str, str] = Field(default_factory=dict)
    cluster: ClusterConfig = ClusterConfig()


class RetryConfig(Section):
    attempts: int = Field(ge=1)
    backoff_initial_s: float = Field(ge=0)
    backoff_max_s: float = Field(ge=0)


class SupervisorConfig(Section):
    reports_dir: Path
    logs_dir: Path
    retry: RetryConfig


class MlflowHttpConfig(Section):
    """MLflow client's own HTTP retries, capped: the supervisor's retry waits out an outage."""

    max_retries: int = Field(ge=0, le=10)
    backoff_factor: int = Field(ge=0, le=120)
    backoff_jitter: float = Field(ge=0)
    timeout_s: int = Field(gt=0)


class MlflowConfig(Section):
    tracking_uri: str
    artifact_root: Path
    experiment: str
    http: MlflowHttpConfig


class FeatureSpecConfig(Section):
    clip_quantiles: tuple[float, float]
    min_category_count: int = Field(ge=1)


class TrainConfig(Section):
    models_dir: Path
    validation_fraction: float = Field(gt=0, lt=1)
    validation_method: Literal["time", "random"]
    numeric: list[str]
    categorical: list[str]
    spec: FeatureSpecConfig
    balance: bool
    search: bool
    models: dict[Literal["random_forest", "gbt", "mlp", "logistic", "xgboost"], dict[str, Any]]
    grids: dict[Literal["random_forest", "gbt", "mlp", "logistic", "xgboost"], dict[str, list[Any]]]


class SegmentConfig(Section):
    models_dir: Path
    features: list[str]
    k_range: tuple[int, int]
    max_iter: int = Field(gt=0)
    fit_rows: int = Field(default=500_000, gt=0)
    risk_bands: list[str] = Field(min_length=2)
    min_band_gap: float = Field(ge=0, lt=1)
    band_gap_z: float = Field(ge=0)
    serving_model: Literal["kmeans", "gmm"]
    profile_plot: Path

    @model_validator(mode="after")
    def _valid_range(self) -> SegmentConfig:
        low, high = self.k_range
        if not 2 <= low <= high:
            raise ValueError("segment.k_range: need 2 <= low <= high")
        if self.fit_rows < high:
            raise ValueError(f"segment.fit_rows: {self.fit_rows} loans cannot make {high} clusters")
        if len(set(self.risk_bands)) < len(self.risk_bands):
            raise ValueError("segment.risk_bands: names must be distinct")
        return self


class ThresholdConfig(Section):
    rule: Literal["profit", "f1", "youden"]
    loss_given_default: float = Field(gt=0, le=1)
    margin: float = Field(gt=0)


class EvaluateConfig(Section):
    primary_metric: Literal["auc_roc", "auc_pr", "ks", "gini"]
    bootstrap_samples: int = Field(ge=10)
    calibration_bins: int = Field(ge=2)
    # Rows of a slice the driver holds (bootstrap intervals, threshold scan, curves); point
    # figures are computed in Spark on every row, or on the driver when the slice fits this bound
    # (train_sup's and evaluate's figures alike).
    driver_sample_rows: int = Field(default=50_000, ge=100)
    threshold: ThresholdConfig
    plots_dir: Path
    metrics_path: Path


class RegisterConfig(Section):
    model_name: str
    min_delta: float = Field(ge=0)
    bundle_dir: Path
    onnx_tolerance: float = Field(gt=0)
    # The lender's own grade is the floor: a model that does not beat this reference on the
    # validation slice by min_delta is registered as challenger only (null: no floor).
    floor_reference: Literal["ref_sub_grade", "ref_logistic"] | None = "ref_sub_grade"
    # Validation loans brought to the driver for ONNX parity and the champion comparison: a
    # seeded sample of this many (all of them when the slice is smaller).
    parity_sample_rows: int = Field(default=50_000, ge=1)
    # The exported, parity-checked bundle waits here between retries of one registration.
    scratch_dir: Path = Path(".cache/register")


class ServingConfig(Section):
    host: str
    port: int = Field(ge=0, le=65535)
    backend: Literal["onnx", "spark"]
    model_uri: str
    bundle_path: Path | None
    max_batch: int = Field(ge=1)
    max_body_bytes: int = Field(ge=1024)
    poll_interval_s: float = Field(gt=0)
    reload_token_env: str
    top_factors: int = Field(ge=0)
    onnx_threads: int = Field(ge=1)


OutputFormat = Literal["parquet", "csv"]


class ScoreConfig(Section):
    """Batch scoring (`credit-risk score`): output format, part-file size, ONNX threads per task."""

    format: OutputFormat = "parquet"
    # Part files hold about this many loans each (at least one file): sized to the data.
    rows_per_file: int = Field(default=500_000, ge=1)
    # onnxruntime threads inside one Spark task: Spark already runs one task per core.
    onnx_threads: int = Field(default=1, ge=1)


class Config(Section):
    root: Path
    seed: int
    data: DataConfig
    prep: PrepConfig
    split: SplitConfig
    spark: SparkConfig
    supervisor: SupervisorConfig
    mlflow: MlflowConfig
    train: TrainConfig
    segment: SegmentConfig
    evaluate: EvaluateConfig
    # `register` would shadow BaseModel.register (ABC machinery); params.yaml still says `register`.
    registry: RegisterConfig = Field(alias="register")
    serving: ServingConfig
    scorecard: ScorecardScaling = ScorecardScaling()
    score: ScoreConfig = ScoreConfig()

    @model_validator(mode="after")
    def _features_come_from_prep(self) -> Config:
        available = set(self.prep.feature_columns)
        for section, names in (
            ("train.numeric", self.train.numeric),
            ("train.categorical", self.train.categorical),
            ("segment.features", self.segment.features),
        ):
            unknown = [n for n in names if n not in available]
            if unknown:
                raise ValueError(f"{section}: {unknown} are not columns prep produces")
        return self

    def path(self, relative: Path | str) -> Path:
        """Resolve a path of params.yaml against the project root."""
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def report_path(self, stage: str) -> Path:
        return self.path(self.supervisor.reports_dir) / f"{stage}.json"


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` merged in, recursively for nested sections."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read params.yaml (or $CREDIT_RISK_PARAMS) into a validated Config rooted at its folder."""
    params = Path(path or os.environ.get(PARAMS_ENV) or DEFAULT_PARAMS).resolve()
    if not params.is_file():
        raise ConfigError(f"{params}: params file not found")
    try:
        raw = yaml.safe_load(params.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{params}: not valid YAML: {exc}") from exc
    if overrides:
        raw = deep_merge(raw, overrides)
    try:
        return Config(root=params.parent, **raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "params"
        raise ConfigError(f"{params}: {where}: {first['msg']}") from exc
