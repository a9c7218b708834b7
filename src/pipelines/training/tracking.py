"""A trained model as an MLflow run: parameters, metrics, spec, calibration and the Spark model."""

from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.spark
import pyspark

from src.contracts import TrainSupRequest
from src.core.calibration import CALIBRATION_FILE
from src.pipelines.training.data import TrainingData
from src.pipelines.training.fitting import SPEC_FILE, FittedModel
from src.utils.config import Config

MLFLOW_MODEL_NAME = "model"
# Explicit requirements: without them MLflow spends ~20 s per model inferring them.
PIP_REQUIREMENTS = [f"mlflow=={mlflow.__version__}", f"pyspark=={pyspark.__version__}"]


def log_training_run(
    name: str,
    fitted: FittedModel,
    folder: Path,
    data: TrainingData,
    request: TrainSupRequest,
    cfg: Config,
    experiment_id: str,
    commit: str | None,
    validation_rows: int,
) -> tuple[str, str]:
    """Log one model's run; return its run id and the logged model's URI."""
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.set_tags({"model": name, "stage": "train_sup"})
        mlflow.log_params(
            {
                **{f"model.{k}": v for k, v in fitted.params.items()},
                "model": name,
                "seed": cfg.seed,
                "balance": cfg.train.balance,
                "search": cfg.train.search,
                "validation_fraction": cfg.train.validation_fraction,
                "validation_method": cfg.train.validation_method,
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
    return run.info.run_id, info.model_uri
