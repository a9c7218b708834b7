"""SegmenterAgent: the training split → KMeans and Gaussian-mixture risk segments (train_unsup)."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import mlflow.spark
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession

from src.agents.base import Agent, Skill
from src.contracts import (
    Artifact,
    SegmentationModel,
    SegmentProfile,
    TrainUnsupRequest,
    TrainUnsupResult,
)
from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.core.segment_params import MODEL_NAMES, ModelName
from src.pipelines.segmentation.bands import GapRule
from src.pipelines.segmentation.clustering import (
    FEATURES_VECTOR,
    Candidates,
    Fitted,
    Preprocessing,
    Segmentation,
    band_stats,
    choose_segmentation,
    export_params,
    fit_preprocessing,
    fit_sample,
    full_pipeline,
    gmm_candidates,
    kmeans_candidates,
)
from src.pipelines.segmentation.tracking import log_segmentation_run, write_report
from src.utils.atomic import atomic_path
from src.utils.errors import DataError
from src.utils.hashing import content_hash
from src.utils.logging import get_logger
from src.utils.spark import get_spark
from src.utils.spark_io import save_model_deterministic
from src.utils.spark_progress import spark_progress
from src.utils.tracking import configure_mlflow

log = get_logger(agent="SegmenterAgent")

MODEL_SUBDIR = "model"
PARAMS_FILE = "segments.json"


class SegmenterAgent(Agent):
    """Unsupervised risk segmentation stage."""

    skills = (Skill("train_unsup", TrainUnsupRequest, TrainUnsupResult, "segment"),)

    def _artifact(self, staged: Path, final: Path) -> Artifact:
        """An artifact named by its `final` path, hashed where it is `staged` until the rename."""
        return Artifact(path=str(final.relative_to(self.cfg.root)), sha256=content_hash(staged))

    def _read_train(self, spark: SparkSession, request: TrainUnsupRequest) -> DataFrame:
        path = self.cfg.path(request.train.path)
        if not path.exists():
            raise DataError(f"{request.train.path}: training split not found; rerun 'split'")
        loans = spark.read.parquet(str(path))
        missing = [c for c in [LABEL_COLUMN, *self.cfg.segment.features] if c not in loans.columns]
        if missing:
            raise DataError(f"{request.train.path}: columns {missing} are missing")
        return loans.select(KEY_COLUMN, LABEL_COLUMN, *self.cfg.segment.features)

    def segment(self, request: TrainUnsupRequest) -> TrainUnsupResult:
        """Fit both segmentations on the training split, save, profile, plot and log them."""
        seg = self.cfg.segment
        experiment_id = configure_mlflow(self.cfg)
        spark = get_spark(self.cfg.spark)
        train = self._read_train(spark, request).persist(StorageLevel.MEMORY_AND_DISK)
        scaled: DataFrame | None = None
        fitting: DataFrame | None = None
        try:
            rows = train.count()
            if rows < seg.k_range[1]:
                raise DataError(
                    f"{request.train.path}: {rows} rows cannot make {seg.k_range[1]} clusters"
                )
            preprocessing = fit_preprocessing(train, seg.features)
            scaled = preprocessing.model.transform(train).select(
                KEY_COLUMN, LABEL_COLUMN, *seg.features, FEATURES_VECTOR
            ).persist(StorageLevel.MEMORY_AND_DISK)
            sample = fit_sample(scaled, seg.fit_rows, rows, self.cfg.seed)
            if sample is scaled:  # within fit_rows: the fit reads the persisted table itself
                data = Fitted(scaled, scaled, rows, rows)
            else:
                fitting = sample.persist(StorageLevel.MEMORY_AND_DISK)
                data = Fitted(scaled, fitting, rows, fitting.count())
            log.info("train_unsup.preprocessed", rows=rows, fit_rows=data.fit_rows,
                     features=seg.features, impute=preprocessing.medians)
            # Both models go into one temporary sibling of models_dir, renamed into place once
            # both are saved: a killed run leaves the previous folder whole.
            with atomic_path(self.cfg.path(seg.models_dir)) as staging:
                staging.mkdir(parents=True)
                models: dict[ModelName, SegmentationModel] = {}
                for i, name in enumerate(MODEL_NAMES, start=1):
                    with spark_progress(spark, "train_unsup.progress",
                                        self.cfg.spark.progress_interval_s,
                                        model=name, i=i, n=len(MODEL_NAMES)):
                        models[name] = self._train_one(
                            name, request, data, preprocessing, experiment_id, staging
                        )
        finally:
            if fitting is not None:
                fitting.unpersist()
            if scaled is not None:
                scaled.unpersist()
            train.unpersist()
        report_path, plot_path = write_report(self.cfg, request, models)
        log.info("train_unsup.report", report=str(report_path), plot=str(plot_path))
        for model in models.values():
            with mlflow.start_run(run_id=model.run_id):
                mlflow.log_artifact(str(report_path), artifact_path="reports")
                mlflow.log_artifact(str(plot_path), artifact_path="reports")
        serving = models[seg.serving_model]
        log.info("train_unsup.done", serving_model=seg.serving_model, k=serving.k,
                 default_rates={s.band: round(s.default_rate, 4) for s in serving.segments})
        return TrainUnsupResult(
            serving_model=seg.serving_model, models=models, profile_plot=str(seg.profile_plot)
        )

    def _select(self, name: ModelName, data: Fitted) -> Segmentation:
        seg = self.cfg.segment
        ks = list(range(seg.k_range[0], seg.k_range[1] + 1))
        candidates: Candidates = (
            kmeans_candidates(data.fitting, ks, self.cfg.seed, seg.max_iter)
            if name == "kmeans"
            else gmm_candidates(data.fitting, ks, self.cfg.seed, seg.max_iter, data.fit_rows)
        )
        test_fraction = self.cfg.split.test_fraction
        rule = GapRule(seg.min_band_gap, seg.band_gap_z, test_fraction / (1.0 - test_fraction))
        return choose_segmentation(candidates, data.scaled, LABEL_COLUMN, rule, seg.risk_bands)

    def _train_one(
        self,
        name: ModelName,
        request: TrainUnsupRequest,
        data: Fitted,
        preprocessing: Preprocessing,
        experiment_id: str,
        staging: Path,
    ) -> SegmentationModel:
        seg = self.cfg.segment
        started = time.perf_counter()
        selection = self._select(name, data)
        bands = selection.bands
        profiles = [
            SegmentProfile(**s.model_dump())
            for s in band_stats(selection.model.transform(data.scaled), bands, seg.features,
                                LABEL_COLUMN)
        ]
        params = export_params(name, seg.features, preprocessing, selection.model, bands)
        pipeline = full_pipeline(preprocessing, selection.model)

        model_dir = staging / name
        model_dir.mkdir()
        save_model_deterministic(pipeline, model_dir / MODEL_SUBDIR)
        (model_dir / PARAMS_FILE).write_text(params.model_dump_json(indent=2) + "\n")
        train_seconds = round(time.perf_counter() - started, 3)

        run_id, model_uri = log_segmentation_run(
            self.cfg, name, request, selection, profiles, pipeline, model_dir / PARAMS_FILE,
            data.rows, data.fit_rows, experiment_id,
        )
        final = self.cfg.path(seg.models_dir) / name
        log.info("train_unsup.model", model=name, k=selection.k, fit_rows=data.fit_rows,
                 metric=selection.candidates.metric,
                 scores={k: round(v, 4) for k, v in selection.candidates.scores.items()},
                 bands_per_k=selection.bands_per_k,
                 default_rates={p.band: round(p.default_rate, 4) for p in profiles},
                 sizes={p.band: p.size for p in profiles}, train_seconds=train_seconds,
                 run_id=run_id)
        return SegmentationModel(
            name=name,
            run_id=run_id,
            model_uri=model_uri,
            k=selection.k,
            selection=selection.candidates.scores,
            bands_per_k=selection.bands_per_k,
            path=self._artifact(model_dir / MODEL_SUBDIR, final / MODEL_SUBDIR),
            params_file=self._artifact(model_dir / PARAMS_FILE, final / PARAMS_FILE),
            segments=profiles,
        )
