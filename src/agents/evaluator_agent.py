"""EvaluatorAgent: every trained model and two plain references, on validation and on test.

The best model and every threshold are chosen on the validation slice of the training split (the
trainer's saved predictions for the models, the same rows for the references). The test split is
scored once and only reported. Model probabilities are calibrated (the model's calibration table
applied after the classifier), as the registered model serves them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession

from src.agents.base import Agent, Skill
from src.contracts import (
    Artifact,
    ConfusionMatrix,
    EvaluateRequest,
    EvaluateResult,
    Evaluation,
    Interval,
    SegmentationModel,
    SegmentEvaluation,
    SliceMetrics,
    ThresholdChoice,
    TrainedModel,
)
from src.core.feature_spec import FeatureSpec
from src.core.metrics import (
    Scored,
    auc_roc,
    average_precision,
    bootstrap_intervals,
    brier_score,
    confusion_at,
    expected_calibration_error,
    gini,
    ks_statistic,
    log_loss,
)
from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.core.segment_params import SegmentParams, assign_segment
from src.core.thresholds import ThresholdScan, profit_at, scan_thresholds
from src.pipelines.evaluation import plots
from src.pipelines.evaluation.calibrated import model_calibration
from src.pipelines.evaluation.spark_metrics import positive_probability
from src.pipelines.preparation.splitting import split_fit_validation
from src.pipelines.training.calibration import RAW_PROBABILITY_COLUMN
from src.pipelines.training.classifiers import PROBABILITY_COLUMN
from src.pipelines.training.references import (
    LOGISTIC_REFERENCE,
    SUB_GRADE,
    SUB_GRADE_REFERENCE,
    fit_logistic,
    fit_sub_grade,
)
from src.utils.atomic import atomic_write_json
from src.utils.config import EvaluateConfig
from src.utils.errors import DataError
from src.utils.hashing import content_hash
from src.utils.logging import get_logger
from src.utils.spark import get_spark
from src.utils.tracking import configure_mlflow

log = get_logger(agent="EvaluatorAgent")

STAGE = "evaluate"
# Tree models whose featureImportances are charted.
TREE_MODELS = ("random_forest", "gbt")
BEST_MODEL_KEY = "best_model"
PRIMARY_METRIC_KEY = "primary_metric"
SELECTED_ON_KEY = "selected_on"
# The data the best model is chosen on; test is only reported.
SELECTED_ON = "validation"
SEGMENTS_KEY = "segments"
# Kept apart from the trainer's test_* metrics (its AUC-PR: Spark's trapezoid; ours: avg precision).
TRAINING_RUN_PREFIX = "evaluation.test_"
Kind = Literal["model", "reference"]


@dataclass(frozen=True)
class Candidate:
    """A model or reference: test and validation predictions, and where its threshold comes from."""

    name: str
    kind: Kind
    test: Scored
    validation: Scored
    chosen_on: str
    importances: dict[str, float] | None = None
    calibrated: bool = False
    # Raw validation probabilities in `validation`'s row order, when the calibration table was
    # fitted on those rows: selection and the floor rank on them (see slice_metrics).
    validation_raw: np.ndarray | None = None


def slice_metrics(
    scored: Scored,
    data: Literal["validation", "test"],
    cfg: EvaluateConfig,
    seed: int,
    ranked: np.ndarray | None = None,
) -> SliceMetrics:
    """Ranking and probability metrics of one candidate on one data set, with 95% intervals.

    `ranked`: the scores ranking metrics use instead of `scored.p` (raw probabilities where the
    calibration table was fitted on these rows).
    """
    y, p = scored.y, scored.p
    r = p if ranked is None else ranked
    # One seed for every candidate: the same resamples, so intervals compare like with like.
    boot = bootstrap_intervals(y, r, cfg.bootstrap_samples, seed)
    auc = auc_roc(y, r)
    return SliceMetrics(
        data=data,
        rows=int(y.size),
        auc_roc=auc,
        auc_roc_ci=Interval(low=boot.auc_roc[0], high=boot.auc_roc[1]),
        auc_pr=average_precision(y, r),
        auc_pr_ci=Interval(low=boot.auc_pr[0], high=boot.auc_pr[1]),
        ks=ks_statistic(y, r),
        gini=gini(auc),
        brier=brier_score(y, p),
        log_loss=log_loss(y, p),
        calibration_error=expected_calibration_error(y, p, cfg.calibration_bins),
    )


def evaluate_candidate(candidate: Candidate, cfg: EvaluateConfig, seed: int) -> Evaluation:
    """Test metrics (reported) and validation metrics (selection) of one candidate, at the
    threshold its validation predictions choose."""
    y, p = candidate.test.y, candidate.test.p
    threshold, _ = scan_thresholds(
        candidate.validation.y, candidate.validation.p, cfg.threshold
    ).best
    test = slice_metrics(candidate.test, "test", cfg, seed)
    confusion = confusion_at(y, p, threshold)
    return Evaluation(
        name=candidate.name,
        kind=candidate.kind,
        **test.model_dump(exclude={"data", "rows"}),
        threshold=ThresholdChoice(
            rule=cfg.threshold.rule, value=threshold, chosen_on=candidate.chosen_on
        ),
        precision=confusion.precision,
        recall=confusion.recall,
        f1=confusion.f1,
        confusion=ConfusionMatrix(
            tn=confusion.tn, fp=confusion.fp, fn=confusion.fn, tp=confusion.tp
        ),
        validation=slice_metrics(
            candidate.validation, "validation", cfg, seed, ranked=candidate.validation_raw
        ),
        calibrated=candidate.calibrated,
    )


def _flat_ranking(m: SliceMetrics | Evaluation) -> dict[str, float]:
    return {
        "auc_roc": m.auc_roc,
        "auc_roc_low": m.auc_roc_ci.low,
        "auc_roc_high": m.auc_roc_ci.high,
        "auc_pr": m.auc_pr,
        "auc_pr_low": m.auc_pr_ci.low,
        "auc_pr_high": m.auc_pr_ci.high,
        "ks": m.ks,
        "gini": m.gini,
        "brier": m.brier,
        "log_loss": m.log_loss,
        "calibration_error": m.calibration_error,
    }


def flat_metrics(evaluation: Evaluation, profit_per_loan: float) -> dict[str, dict[str, float]]:
    """The numbers of one evaluation by data set, `validation` and `test` (metrics.json, MLflow).

    The threshold is chosen on validation; the decision figures at it are on test.
    """
    test = {
        "rows": evaluation.test_metrics().rows,
        **_flat_ranking(evaluation),
        "threshold": evaluation.threshold.value,
        "precision": evaluation.precision,
        "recall": evaluation.recall,
        "f1": evaluation.f1,
        "profit_per_loan": profit_per_loan,
        **evaluation.confusion.model_dump(),
    }
    v = evaluation.validation
    validation = {} if v is None else {"rows": v.rows, **_flat_ranking(v),
                                       "threshold": evaluation.threshold.value}
    return {"validation": validation, "test": test}


def selection_score(evaluation: Evaluation, metric: str) -> float:
    """`metric` of an evaluation on the validation slice: what selection and the floor compare."""
    if evaluation.validation is None:
        raise DataError(f"evaluate: {evaluation.name} has no validation metrics")
    return float(getattr(evaluation.validation, metric))


def best_model(evaluations: dict[str, Evaluation], metric: str) -> str:
    """The model (references excluded) with the highest validation `metric`; ties go to the name.

    Never chosen on test: the test figures stay an unbiased report.
    """
    models = [e for e in evaluations.values() if e.kind == "model"]
    if not models:
        raise DataError("evaluate: no model to choose from")
    return max(models, key=lambda e: (selection_score(e, metric), e.name)).name


def segment_evaluation(
    params: SegmentParams, band_order: list[str], frame: pd.DataFrame, p: np.ndarray
) -> list[SegmentEvaluation]:
    """Size, observed default rate and mean predicted probability per risk band, in risk order."""
    rows = frame[params.features].to_numpy(dtype=np.float64, na_value=np.nan)
    bands = np.array([params.bands[c] for c in assign_segment(params, rows)])
    y = frame[LABEL_COLUMN].to_numpy(dtype=np.float64)
    segments = []
    for band in band_order:
        member = bands == band
        if not member.any():
            log.warning("evaluate.segment_empty", band=band)
            continue
        segments.append(
            SegmentEvaluation(
                band=band,
                size=int(member.sum()),
                default_rate=float(y[member].mean()),
                mean_predicted=float(p[member].mean()),
            )
        )
    return segments


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

    # --- inputs ----------------------------------------------------------------------------------

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

    def _test_frame(self, test: DataFrame, features: list[str]) -> pd.DataFrame:
        needed = [KEY_COLUMN, LABEL_COLUMN, SUB_GRADE, *features]
        missing = [c for c in needed if c not in test.columns]
        if missing:
            raise DataError(f"evaluate: the test split lacks columns {missing}")
        frame = test.select(*dict.fromkeys(needed)).toPandas()
        if frame.empty:
            raise DataError("evaluate: the test split has no rows")
        return frame.sort_values(KEY_COLUMN, ignore_index=True)

    # --- scoring ---------------------------------------------------------------------------------

    @staticmethod
    def _spark_scores(model: PipelineModel, df: DataFrame) -> pd.DataFrame:
        scored = model.transform(df).select(
            KEY_COLUMN, LABEL_COLUMN, positive_probability(PROBABILITY_COLUMN).alias("p")
        )
        return scored.toPandas().sort_values(KEY_COLUMN, ignore_index=True)

    @staticmethod
    def _scored(name: str, kind: str, keys: pd.Series, frame: pd.DataFrame) -> Scored:
        if not frame[KEY_COLUMN].reset_index(drop=True).equals(keys.reset_index(drop=True)):
            raise DataError(
                f"evaluate: {name}'s predictions are not of the expected loans (the split or the "
                "trainer's validation slice changed); rerun 'train_sup'"
            )
        return Scored(
            name=name,
            kind=kind,
            y=frame[LABEL_COLUMN].to_numpy(dtype=np.float64),
            p=frame["p"].to_numpy(dtype=np.float64),
        )

    def _model_candidate(
        self, spark: SparkSession, model: TrainedModel, test: DataFrame, test_keys: pd.Series,
        validation_keys: pd.Series,
    ) -> Candidate:
        pipeline = PipelineModel.load(str(self.cfg.path(model.path.path)))
        calibration = model_calibration(model, self.cfg.path)
        saved = spark.read.parquet(str(self.cfg.path(model.validation_predictions.path)))
        # The trainer stores calibrated probabilities beside the raw ones it fitted the table on.
        validation = (
            saved.select(KEY_COLUMN, LABEL_COLUMN, PROBABILITY_COLUMN, RAW_PROBABILITY_COLUMN)
            .withColumnRenamed(PROBABILITY_COLUMN, "p")
            .toPandas()
            .sort_values(KEY_COLUMN, ignore_index=True)
        )
        test_scores = self._spark_scores(pipeline, test)
        test_scores["p"] = calibration.apply(test_scores["p"].to_numpy(dtype=np.float64))
        importances = None
        if model.name in TREE_MODELS:
            spec = FeatureSpec.model_validate_json(
                self.cfg.path(model.feature_spec.path).read_text()
            )
            values = pipeline.stages[-1].featureImportances.toArray().tolist()
            importances = dict(zip(spec.features, values, strict=True))
        return Candidate(
            name=model.name,
            kind="model",
            test=self._scored(model.name, "model", test_keys, test_scores),
            # The trainer's own validation rows must be the slice the references use.
            validation=self._scored(model.name, "model", validation_keys, validation),
            chosen_on=(
                f"validation slice of the training split ({len(validation):,} loans, "
                f"{model.validation_predictions.path})"
            ),
            importances=importances,
            calibrated=calibration.method != "identity",
            validation_raw=validation[RAW_PROBABILITY_COLUMN].to_numpy(dtype=np.float64),
        )

    def _reference_candidates(
        self, request: EvaluateRequest, fit: DataFrame, validation: DataFrame, test: DataFrame,
        test_frame: pd.DataFrame, validation_frame: pd.DataFrame,
    ) -> list[Candidate]:
        chosen_on = (
            f"validation slice of the training split ({len(validation_frame):,} loans; "
            "reference fitted on the rest of the training split)"
        )
        sub_grade = fit_sub_grade(fit)
        log.info("evaluate.reference.sub_grade", grades=len(sub_grade.rates),
                 overall_rate=round(sub_grade.overall, 4))

        def by_grade(frame: pd.DataFrame) -> Scored:
            grades = [None if pd.isna(g) else str(g) for g in frame[SUB_GRADE]]
            return Scored(SUB_GRADE_REFERENCE, "reference",
                          frame[LABEL_COLUMN].to_numpy(dtype=np.float64), sub_grade.predict(grades))

        first = min(request.train_sup.models)
        spec_path = self.cfg.path(request.train_sup.models[first].feature_spec.path)
        spec = FeatureSpec.model_validate_json(spec_path.read_text())
        started = time.perf_counter()
        logistic = fit_logistic(fit, spec, self.cfg.train.balance)
        log.info("evaluate.reference.logistic", spec=self._relative(spec_path),
                 features=len(spec.features), balance=self.cfg.train.balance,
                 seconds=round(time.perf_counter() - started, 3))
        val_keys, test_keys = validation_frame[KEY_COLUMN], test_frame[KEY_COLUMN]
        return [
            Candidate(SUB_GRADE_REFERENCE, "reference", by_grade(test_frame),
                      by_grade(validation_frame), chosen_on),
            Candidate(
                LOGISTIC_REFERENCE, "reference",
                self._scored(LOGISTIC_REFERENCE, "reference", test_keys,
                             self._spark_scores(logistic, test)),
                self._scored(LOGISTIC_REFERENCE, "reference", val_keys,
                             self._spark_scores(logistic, validation)),
                chosen_on,
            ),
        ]

    # --- the stage -------------------------------------------------------------------------------

    def evaluate(self, request: EvaluateRequest) -> EvaluateResult:
        """Score every model and reference on validation and test; write metrics.json, plots."""
        started = time.perf_counter()
        serving = self._check(request)
        params = SegmentParams.model_validate_json(
            self.cfg.path(serving.params_file.path).read_text()
        )
        spark = get_spark(self.cfg.spark)
        experiment_id = configure_mlflow(self.cfg)
        test = spark.read.parquet(str(self.cfg.path(request.test.path)))
        test = test.persist(StorageLevel.MEMORY_AND_DISK)
        fit, validation = split_fit_validation(
            self._read_train(spark, request),
            self.cfg.train.validation_fraction,
            self.cfg.seed,
            method=self.cfg.train.validation_method,
        )
        # The stratified window leaves one partition per label: spread the rows over the cores.
        fit = fit.repartition(self.cfg.spark.shuffle_partitions, KEY_COLUMN)
        fit = fit.persist(StorageLevel.MEMORY_AND_DISK)
        validation = validation.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            test_frame = self._test_frame(test, params.features)
            validation_frame = validation.select(KEY_COLUMN, LABEL_COLUMN, SUB_GRADE).toPandas()
            validation_frame = validation_frame.sort_values(KEY_COLUMN, ignore_index=True)
            candidates = [
                self._model_candidate(spark, m, test, test_frame[KEY_COLUMN],
                                      validation_frame[KEY_COLUMN])
                for m in request.train_sup.models.values()
            ]
            candidates += self._reference_candidates(
                request, fit, validation, test, test_frame, validation_frame
            )
        finally:
            for df in (test, fit, validation):
                df.unpersist()
        return self._report(request, candidates, test_frame, params, serving, experiment_id,
                            started)

    def _report(
        self,
        request: EvaluateRequest,
        candidates: list[Candidate],
        test_frame: pd.DataFrame,
        params: SegmentParams,
        serving: SegmentationModel,
        experiment_id: str,
        started: float,
    ) -> EvaluateResult:
        cfg = self.cfg.evaluate
        evaluations = {c.name: evaluate_candidate(c, cfg, self.cfg.seed) for c in candidates}
        for e in evaluations.values():
            log.info("evaluate.candidate", name=e.name, kind=e.kind, calibrated=e.calibrated,
                     validation_auc_roc=round(selection_score(e, "auc_roc"), 4),
                     validation_auc_pr=round(selection_score(e, "auc_pr"), 4),
                     validation_ece=round(selection_score(e, "calibration_error"), 4),
                     test_auc_roc=round(e.auc_roc, 4),
                     test_auc_roc_ci=[round(e.auc_roc_ci.low, 4), round(e.auc_roc_ci.high, 4)],
                     test_auc_pr=round(e.auc_pr, 4), test_ks=round(e.ks, 4),
                     test_brier=round(e.brier, 4), test_ece=round(e.calibration_error, 4),
                     threshold=round(e.threshold.value, 4), test_recall=round(e.recall, 4))
        best = best_model(evaluations, cfg.primary_metric)
        by_name = {c.name: c for c in candidates}
        band_order = [s.band for s in serving.segments]
        segments = segment_evaluation(params, band_order, test_frame, by_name[best].test.p)
        flat = {
            name: flat_metrics(e, self._profit(by_name[name], e)) for name, e in evaluations.items()
        }
        metrics_path = self.cfg.path(cfg.metrics_path)
        atomic_write_json(metrics_path, {
            **flat,
            BEST_MODEL_KEY: best,
            PRIMARY_METRIC_KEY: cfg.primary_metric,
            SELECTED_ON_KEY: SELECTED_ON,
            SEGMENTS_KEY: {s.band: s.model_dump(exclude={"band"}) for s in segments},
        })
        plot_paths = self._plots(candidates, evaluations, best, segments)
        self._track(request, flat, best, plot_paths, metrics_path, experiment_id)
        log.info("evaluate.done", best_model=best, primary_metric=cfg.primary_metric,
                 selected_on=SELECTED_ON,
                 validation_score=round(selection_score(evaluations[best], cfg.primary_metric), 4),
                 test_score=round(getattr(evaluations[best], cfg.primary_metric), 4),
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

    def _profit(self, candidate: Candidate, evaluation: Evaluation) -> float:
        t = self.cfg.evaluate.threshold
        return profit_at(candidate.test.y, candidate.test.p, evaluation.threshold.value,
                         t.margin, t.loss_given_default)

    def _plots(
        self,
        candidates: list[Candidate],
        evaluations: dict[str, Evaluation],
        best: str,
        segments: list[SegmentEvaluation],
    ) -> list[Path]:
        folder = self.cfg.path(self.cfg.evaluate.plots_dir)
        tests = [c.test for c in candidates]
        best_candidate = next(c for c in candidates if c.name == best)
        best_eval = evaluations[best]
        scans: dict[str, ThresholdScan] = {
            c.name: scan_thresholds(c.validation.y, c.validation.p, self.cfg.evaluate.threshold)
            for c in candidates
        }
        paths = [
            plots.plot_roc(tests, {n: e.auc_roc for n, e in evaluations.items()},
                           folder / plots.ROC_FILE),
            plots.plot_pr(tests, folder / plots.PR_FILE),
            plots.plot_calibration(tests, self.cfg.evaluate.calibration_bins,
                                   folder / plots.CALIBRATION_FILE),
            plots.plot_ks(best_candidate.test, folder / plots.KS_FILE),
            plots.plot_confusion(best, confusion_at(best_candidate.test.y, best_candidate.test.p,
                                                    best_eval.threshold.value),
                                 best_eval.threshold.value, folder / plots.CONFUSION_FILE),
            plots.plot_thresholds(scans, folder / plots.THRESHOLD_FILE),
        ]
        importances = {c.name: c.importances for c in candidates if c.importances is not None}
        if importances:
            paths.append(plots.plot_importances(importances, folder / plots.IMPORTANCE_FILE))
        if segments:
            paths.append(plots.plot_segments(segments, best, folder / plots.SEGMENT_FILE))
        log.info("evaluate.plots", folder=self._relative(folder), files=[p.name for p in paths])
        return paths

    def _track(
        self,
        request: EvaluateRequest,
        flat: dict[str, dict[str, dict[str, float]]],
        best: str,
        plot_paths: list[Path],
        metrics_path: Path,
        experiment_id: str,
    ) -> None:
        cfg = self.cfg.evaluate
        with mlflow.start_run(experiment_id=experiment_id, run_name=STAGE) as run:
            mlflow.set_tags({"stage": STAGE, BEST_MODEL_KEY: best})
            mlflow.log_params({
                PRIMARY_METRIC_KEY: cfg.primary_metric,
                "threshold_rule": cfg.threshold.rule,
                "margin": cfg.threshold.margin,
                "loss_given_default": cfg.threshold.loss_given_default,
                "bootstrap_samples": cfg.bootstrap_samples,
                "calibration_bins": cfg.calibration_bins,
                "seed": self.cfg.seed,
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
