"""A segmentation as an MLflow run, and the stage's report and profile chart."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import mlflow.spark
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from src.contracts import SegmentationModel, SegmentProfile, TrainUnsupRequest
from src.pipelines.segmentation.clustering import PREDICTION, Segmentation, plot_profiles
from src.utils.atomic import atomic_write_json
from src.utils.config import Config
from src.utils.tracking import git_commit

STAGE = "train_unsup"
REPORT_FILE = "segments.json"
# Pinned into the logged model, so `mlflow models serve` rebuilds the environment that trained it.
PIP_PACKAGES = ("pyspark", "mlflow", "numpy", "pandas", "pyarrow")
BAND_RULE = (
    "clusters ordered by observed training default rate; the closest adjacent pair is pooled "
    "until every adjacent gap is at least segment.min_band_gap plus segment.band_gap_z standard "
    "errors of the gap as the test split will measure it, and there are no more bands than "
    "segment.risk_bands; k is the one giving the most bands, then the best silhouette (kmeans) "
    "or BIC (gmm); band names are an evenly spread subset of segment.risk_bands, first and last "
    "always kept"
)


def pip_requirements() -> list[str]:
    """Exact versions of the packages needed to load the logged Spark model."""
    return [f"{name}=={version(name)}" for name in PIP_PACKAGES]


def log_segmentation_run(
    cfg: Config,
    name: str,
    request: TrainUnsupRequest,
    selection: Segmentation,
    profiles: list[SegmentProfile],
    pipeline: Any,
    params_file: Path,
    rows: int,
    fit_rows: int,
    experiment_id: str,
) -> tuple[str, str]:
    """Log one segmentation's run; return its run id and the logged model's URI."""
    seg = cfg.segment
    # Declared, not inferred: each feature is a double (NaN when missing), the output a cluster.
    signature = ModelSignature(
        inputs=Schema([ColSpec("double", f) for f in seg.features]),
        outputs=Schema([ColSpec("integer", PREDICTION)]),
    )
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{STAGE}-{name}") as run:
        mlflow.set_tags({
            "stage": STAGE,
            "model": name,
            "git_commit": git_commit(cfg.root) or "unknown",
            "train_data_sha256": request.train.sha256,
        })
        mlflow.log_params({
            "model": name,
            "features": ",".join(seg.features),
            "k_range": f"{seg.k_range[0]}-{seg.k_range[1]}",
            "max_iter": seg.max_iter,
            "seed": cfg.seed,
            "selection_metric": selection.candidates.metric,
            "min_band_gap": seg.min_band_gap,
            "band_gap_z": seg.band_gap_z,
            "train_rows": rows,
            "fit_rows": fit_rows,
        })
        mlflow.log_metric("chosen_k", selection.k)
        chosen = selection.candidates
        per_k = {chosen.metric: chosen.scores, **chosen.extra,
                 "bands": {k: float(b) for k, b in selection.bands_per_k.items()}}
        for metric, values in per_k.items():
            for k, value in values.items():
                mlflow.log_metric(metric, value, step=k)
        for p in profiles:
            mlflow.log_metric(f"default_rate_{p.band}", p.default_rate)
            mlflow.log_metric(f"size_{p.band}", p.size)
        mlflow.log_artifact(str(params_file), artifact_path="segmentation")
        info = mlflow.spark.log_model(
            pipeline, "model", pip_requirements=pip_requirements(), signature=signature
        )
    return run.info.run_id, info.model_uri


def write_report(
    cfg: Config, request: TrainUnsupRequest, models: dict[str, SegmentationModel]
) -> tuple[Path, Path]:
    """reports/segments.json and the profile chart; returns both paths."""
    seg = cfg.segment
    report_path = cfg.path(cfg.supervisor.reports_dir) / REPORT_FILE
    atomic_write_json(report_path, {
        "serving_model": seg.serving_model,
        "band_rule": BAND_RULE,
        "train": request.train.model_dump(mode="json"),
        "models": {
            name: {
                # No MLflow run id: this file is a DVC out, and byte-identical across reruns
                # (the run ids are in reports/train_unsup.json).
                "k": m.k,
                "selection": {str(k): v for k, v in m.selection.items()},
                "bands_per_k": {str(k): b for k, b in m.bands_per_k.items()},
                "segments": [p.model_dump(mode="json") for p in m.segments],
            }
            for name, m in models.items()
        },
    })
    plot_path = cfg.path(seg.profile_plot)
    plot_profiles(
        {name: [p.model_dump() for p in m.segments] for name, m in models.items()},
        seg.risk_bands,
        seg.serving_model,
        plot_path,
    )
    return report_path, plot_path
