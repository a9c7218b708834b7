"""evaluate's MLflow run, and its test figures in each model's training run."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from src.contracts import EvaluateRequest
from src.pipelines.evaluation.report import BEST_MODEL_KEY, PRIMARY_METRIC_KEY, SELECTED_ON_KEY
from src.pipelines.evaluation.selection import SELECTED_ON
from src.utils.config import EvaluateConfig
from src.utils.logging import get_logger

log = get_logger(agent="EvaluatorAgent")

STAGE = "evaluate"
# Kept apart from the trainer's test_* metrics (its AUC-PR: Spark's trapezoid; ours: avg precision).
TRAINING_RUN_PREFIX = "evaluation.test_"


def track_evaluation(
    request: EvaluateRequest, cfg: EvaluateConfig, seed: int,
    flat: dict[str, dict[str, dict[str, float]]], best: str, plot_paths: list[Path],
    metrics_path: Path, experiment_id: str,
) -> None:
    """One run with the parameters, every flat figure (`<name>.<data>.<key>`) and the files."""
    with mlflow.start_run(experiment_id=experiment_id, run_name=STAGE) as run:
        mlflow.set_tags({"stage": STAGE, BEST_MODEL_KEY: best})
        mlflow.log_params({
            PRIMARY_METRIC_KEY: cfg.primary_metric,
            "threshold_rule": cfg.threshold.rule,
            "margin": cfg.threshold.margin,
            "loss_given_default": cfg.threshold.loss_given_default,
            "bootstrap_samples": cfg.bootstrap_samples,
            "calibration_bins": cfg.calibration_bins,
            "driver_sample_rows": cfg.driver_sample_rows,
            "seed": seed,
            "test_data_sha256": request.test.sha256,
            SELECTED_ON_KEY: SELECTED_ON,
            "train_data_sha256": request.train_sup.train_data_sha256,
        })
        mlflow.log_metrics({
            f"{name}.{data}.{key}": float(value)
            for name, by_data in flat.items()
            for data, values in by_data.items()
            for key, value in values.items()
        })
        mlflow.log_artifact(str(metrics_path))
        for path in plot_paths:
            mlflow.log_artifact(str(path), artifact_path="plots")
    client = MlflowClient()
    now = int(time.time() * 1000)
    for name, model in request.train_sup.models.items():
        metrics = [Metric(f"{TRAINING_RUN_PREFIX}{k}", float(v), now, 0)
                   for k, v in flat[name]["test"].items()]
        try:
            client.log_batch(model.run_id, metrics=metrics)
            client.set_tag(model.run_id, "evaluation_run_id", run.info.run_id)
        except MlflowException as exc:
            # The evaluation stands; only the cross-reference in the training run is lost.
            log.warning("evaluate.training_run_not_updated", model=name, run_id=model.run_id,
                        error=str(exc))
    log.info("evaluate.tracked", run_id=run.info.run_id, experiment_id=experiment_id,
             training_runs=len(request.train_sup.models))
