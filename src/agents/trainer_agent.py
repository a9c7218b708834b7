"""TrainerAgent: training split → supervised default models, each an MLflow run and a DVC out."""

from __future__ import annotations

from pathlib import Path

from src.agents.base import Agent, Skill
from src.contracts import Artifact, TrainedModel, TrainSupRequest, TrainSupResult
from src.core.calibration import CALIBRATION_FILE
from src.pipelines.training.classifiers import ModelName
from src.pipelines.training.data import TrainingData, load_training_data
from src.pipelines.training.fitting import (
    MODEL_DIR,
    SPEC_FILE,
    VALIDATION_FILE,
    fit_calibrated,
    save_fitted,
)
from src.pipelines.training.tracking import log_training_run
from src.utils.atomic import atomic_path
from src.utils.hashing import content_hash
from src.utils.logging import get_logger
from src.utils.spark import get_spark
from src.utils.spark_progress import spark_progress
from src.utils.tracking import configure_mlflow, git_commit

log = get_logger(agent="TrainerAgent")


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
                    with spark_progress(spark, "train.progress", self.cfg.spark.progress_interval_s,
                                        model=name, i=i, n=len(names)):
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

    def _train_one(
        self,
        name: ModelName,
        data: TrainingData,
        request: TrainSupRequest,
        experiment_id: str,
        commit: str | None,
        staging: Path,
    ) -> TrainedModel:
        fitted = fit_calibrated(name, data, self.cfg)
        try:
            folder = save_fitted(staging / name, fitted, data.spec)
        finally:
            fitted.unpersist()
        validation_rows = fitted.validation_rows
        final = self.cfg.path(self.cfg.train.models_dir) / name
        run_id, model_uri = log_training_run(
            name, fitted, folder, data, request, self.cfg, experiment_id, commit, validation_rows
        )
        return TrainedModel(
            name=name,
            run_id=run_id,
            model_uri=model_uri,
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
