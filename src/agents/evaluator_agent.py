"""EvaluatorAgent: every trained model and two plain references, on validation and on test.

The best model and every threshold are chosen on the validation slice of the training split (the
trainer's saved predictions for the models, the same rows for the references). The test split is
scored once and only reported. Point figures are computed in Spark on every row; the driver holds
at most `evaluate.driver_sample_rows` rows per slice (intervals, threshold scan, curves).
"""

from __future__ import annotations

import time
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession

from src.agents.base import Agent, Skill
from src.contracts import (
    Artifact,
    EvaluateRequest,
    EvaluateResult,
    SegmentationModel,
    SegmentEvaluation,
)
from src.core.feature_spec import FeatureSpec
from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.core.segment_params import SegmentParams
from src.pipelines.evaluation.candidates import Candidate, model_candidate, reference_candidates
from src.pipelines.evaluation.report import flat_metrics, write_metrics, write_plots
from src.pipelines.evaluation.segments import segment_evaluation
from src.pipelines.evaluation.selection import SELECTED_ON, best_model, selection_score
from src.pipelines.evaluation.slice_metrics import Evaluated, evaluate_candidate, rows_by_source
from src.pipelines.evaluation.tracking import track_evaluation
from src.pipelines.preparation.splitting import recorded_fit_validation
from src.pipelines.training.references import SUB_GRADE
from src.utils.errors import DataError
from src.utils.hashing import content_hash
from src.utils.logging import get_logger
from src.utils.spark import get_spark, table_partitions
from src.utils.tracking import configure_mlflow

log = get_logger(agent="EvaluatorAgent")

FULL_SLICE_FIGURES = ("auc_roc", "auc_pr", "ks", "gini", "brier", "log_loss",
                      "calibration_error", "confusion", "profit_per_loan", "segments")
SAMPLE_FIGURES = ("auc_roc_ci", "auc_pr_ci", "threshold_scan", "plot_curves")


class EvaluatorAgent(Agent):
    """Test-split evaluation of every model against plain references; picks the best model."""

    skills = (Skill("evaluate", EvaluateRequest, EvaluateResult, "evaluate"),)

    def _relative(self, path: Path) -> str:
        resolved, root = path.resolve(), self.cfg.root.resolve()
        return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)

    def _existing(self, artifact: Artifact, what: str, upstream: str) -> Path:
        path = self.cfg.path(artifact.path)
        if not path.exists():
            raise DataError(f"evaluate: {what} {artifact.path} is missing; rerun '{upstream}'")
        return path

    def _check(self, request: EvaluateRequest) -> SegmentationModel:
        self._existing(request.test, "the test split", "split")
        if not request.train_sup.models:
            raise DataError("evaluate: train_sup produced no models; rerun 'train_sup'")
        for name, model in request.train_sup.models.items():
            for artifact in (model.path, model.feature_spec, model.validation_predictions):
                self._existing(artifact, f"{name}'s", "train_sup")
        serving = request.train_unsup.models.get(request.train_unsup.serving_model)
        if serving is None:
            raise DataError(
                f"evaluate: serving segmentation '{request.train_unsup.serving_model}' is not "
                "among the train_unsup models; rerun 'train_unsup'"
            )
        self._existing(serving.params_file, "the segmentation parameters", "train_unsup")
        return serving

    def _read_train(self, spark: SparkSession, request: EvaluateRequest) -> DataFrame:
        path = self.cfg.path(self.cfg.split.train_path)
        if not path.exists():
            raise DataError(f"evaluate: the training split {path} is missing; rerun 'split'")
        # The references must learn from the very rows the models learned from.
        if content_hash(path) != request.train_sup.train_data_sha256:
            raise DataError(
                f"evaluate: the training split {path} changed since train_sup ran; rerun it"
            )
        return spark.read.parquet(str(path))

    def _read_test(self, spark: SparkSession, request: EvaluateRequest) -> DataFrame:
        test = spark.read.parquet(str(self.cfg.path(request.test.path)))
        missing = [c for c in (KEY_COLUMN, LABEL_COLUMN, SUB_GRADE) if c not in test.columns]
        if missing:
            raise DataError(f"evaluate: the test split lacks columns {missing}")
        return test.persist(StorageLevel.MEMORY_AND_DISK)

    def _candidates(
        self, request: EvaluateRequest, fit: DataFrame, validation: DataFrame, test: DataFrame
    ) -> list[Candidate]:
        rows = validation.count()
        candidates = [model_candidate(m, self.cfg.path, test, validation, rows)
                      for m in request.train_sup.models.values()]
        spec_path = self.cfg.path(request.train_sup.models[min(request.train_sup.models)]
                                  .feature_spec.path)
        spec = FeatureSpec.model_validate_json(spec_path.read_text())
        return candidates + reference_candidates(fit, validation, rows, test, spec,
                                                 self.cfg.train.balance, self._relative(spec_path))

    def evaluate(self, request: EvaluateRequest) -> EvaluateResult:
        """Score every model and reference on validation and test; write metrics.json, plots."""
        started = time.perf_counter()
        serving = self._check(request)
        params = SegmentParams.model_validate_json(
            self.cfg.path(serving.params_file.path).read_text()
        )
        spark = get_spark(self.cfg.spark)
        experiment_id = configure_mlflow(self.cfg)
        cfg = self.cfg.evaluate
        train = self._read_train(spark, request)
        fit, validation = recorded_fit_validation(
            train, request.train_sup.validation, self.cfg.train.validation_fraction, self.cfg.seed
        )
        # As many partitions as train_sup gives the same rows (table_partitions); not key-sorted.
        fit = fit.repartition(table_partitions(self.cfg.spark, train.count()), KEY_COLUMN)
        fit = fit.persist(StorageLevel.MEMORY_AND_DISK)
        validation = validation.persist(StorageLevel.MEMORY_AND_DISK)
        test = self._read_test(spark, request)
        candidates: list[Candidate] = []
        try:
            candidates = self._candidates(request, fit, validation, test)
            evaluated = {c.name: evaluate_candidate(c, cfg, self.cfg.seed) for c in candidates}
            evaluations = {n: e.evaluation for n, e in evaluated.items()}
            best = best_model(evaluations, cfg.primary_metric)
            band_order = [s.band for s in serving.segments]
            best_test = next(c.test for c in candidates if c.name == best)
            segments = segment_evaluation(params, band_order, test, best_test)
        finally:
            for df in (test, fit, validation, *(c.test for c in candidates)):
                df.unpersist()
        for e in evaluations.values():
            t = e.test
            log.info("evaluate.candidate", name=e.name, kind=e.kind, calibrated=e.calibrated,
                     validation_auc_roc=round(selection_score(e, "auc_roc"), 4),
                     validation_auc_pr=round(selection_score(e, "auc_pr"), 4),
                     validation_ece=round(selection_score(e, "calibration_error"), 4),
                     test_auc_roc=round(t.auc_roc, 4),
                     test_auc_roc_ci=[round(t.auc_roc_ci.low, 4), round(t.auc_roc_ci.high, 4)],
                     test_auc_pr=round(t.auc_pr, 4), test_ks=round(t.ks, 4),
                     test_brier=round(t.brier, 4), test_ece=round(t.calibration_error, 4),
                     threshold=round(e.threshold.value, 4), test_recall=round(e.recall, 4))
        log.info("evaluate.driver_bounds", driver_sample_rows=cfg.driver_sample_rows,
                 slices=rows_by_source(list(evaluated.values())),
                 on_full_slice=list(FULL_SLICE_FIGURES), on_sample=list(SAMPLE_FIGURES))
        return self._report(request, candidates, evaluated, best, segments, experiment_id,
                            started)

    def _report(
        self, request: EvaluateRequest, candidates: list[Candidate],
        evaluated: dict[str, Evaluated], best: str, segments: list[SegmentEvaluation],
        experiment_id: str,
        started: float,
    ) -> EvaluateResult:
        cfg = self.cfg.evaluate
        evaluations = {n: e.evaluation for n, e in evaluated.items()}
        flat = {n: flat_metrics(e.evaluation, e.profit_per_loan) for n, e in evaluated.items()}
        metrics_path = self.cfg.path(cfg.metrics_path)
        write_metrics(metrics_path, flat, best, cfg.primary_metric, segments)
        folder = self.cfg.path(cfg.plots_dir)
        plot_paths = write_plots(folder, candidates, evaluated, best, segments, cfg)
        log.info("evaluate.plots", folder=self._relative(folder),
                 files=[p.name for p in plot_paths])
        track_evaluation(request, cfg, self.cfg.seed, flat, best, plot_paths, metrics_path,
                         experiment_id)
        log.info("evaluate.done", best_model=best, primary_metric=cfg.primary_metric,
                 selected_on=SELECTED_ON,
                 validation_score=round(selection_score(evaluations[best], cfg.primary_metric), 4),
                 test_score=round(getattr(evaluations[best].test, cfg.primary_metric), 4),
                 plots=len(plot_paths), seconds=round(time.perf_counter() - started, 3))
        return EvaluateResult(
            primary_metric=cfg.primary_metric,
            best_model=best,
            selected_on=SELECTED_ON,
            evaluations=evaluations,
            segments=segments,
            metrics_file=Artifact(path=self._relative(metrics_path),
                                  sha256=content_hash(metrics_path)),
            plots=[self._relative(p) for p in plot_paths],
        )
