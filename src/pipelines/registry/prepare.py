"""The candidate made ready for the registry: ONNX export, parity on a validation sample, staged
bundle; done once per model and kept in `register.scratch_dir` across retries.

The supervisor retries the whole stage on a transient fault. A registry outage after the export
must not redo the Spark scoring and the export on each attempt, so the result is cached under a
key of everything it is made from (the model's, spec's, calibration's and segmentation's content
hashes, the training split, the sample settings, the export code and package versions). Before
reuse the staged files must match their recorded hashes and the cached ONNX must still score the
cached sample like Spark did; anything else is discarded and made again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession

from src.contracts import Artifact, RegisterRequest, SegmentationModel, TrainedModel
from src.core.bundle import MODEL_FILE
from src.core.calibration import Calibration
from src.core.feature_spec import FeatureSpec
from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.pipelines.evaluation.calibrated import model_calibration
from src.pipelines.export.onnx_export import (
    Parity,
    ScoredTest,
    assembler_inputs,
    check_parity,
    export_classifier,
    score_test_with_spark,
)
from src.pipelines.preparation.splitting import recorded_fit_validation
from src.pipelines.registry.bundle import stage_bundle
from src.pipelines.registry.parity import calibrated_parity, require_parity, validation_sample
from src.utils.atomic import atomic_path
from src.utils.config import Config
from src.utils.errors import PermanentError, StaleUpstreamError
from src.utils.hashing import content_hash
from src.utils.logging import get_logger
from src.utils.spark import get_spark

log = get_logger(component="registry")

BUNDLE_DIR = "bundle"
SAMPLE_FILE = "sample.parquet"
MANIFEST_FILE = "manifest.json"
_SPARK_P = "_spark_probability"
_SRC = Path(__file__).resolve().parents[2]
# The code whose output is cached: a change to any of it makes a new key.
EXPORT_CODE = (
    "pipelines/export", "pipelines/registry/bundle.py", "pipelines/registry/parity.py",
    "pipelines/registry/prepare.py", "core",
)
EXPORT_PACKAGES = ("onnx", "onnxruntime", "onnxmltools", "numpy", "mlflow", "pyspark", "xgboost")


@dataclass(frozen=True)
class Prepared:
    """An exported, parity-checked candidate: the staged bundle and the sample it was checked on."""

    folder: Path
    spec: FeatureSpec
    calibration: Calibration
    sample: ScoredTest
    raw_probability: np.ndarray
    parity: Parity
    reused: bool

    @property
    def staging(self) -> Path:
        return self.folder / BUNDLE_DIR


def checked_artifact(cfg: Config, artifact: Artifact, what: str) -> Path:
    """The artifact's path, after checking it still holds what the upstream stage wrote."""
    path = cfg.path(artifact.path)
    if not path.exists():
        raise StaleUpstreamError(f"register: {what} {artifact.path} is missing")
    if content_hash(path) != artifact.sha256:
        raise StaleUpstreamError(f"register: {what} {artifact.path} changed since it was made")
    return path


def _code_version() -> str:
    digest = hashlib.sha256()
    for part in EXPORT_CODE:
        root = _SRC / part
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            digest.update(str(path.relative_to(_SRC)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _package_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in EXPORT_PACKAGES:
        try:
            found[name] = package_version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def export_key(
    cfg: Config, request: RegisterRequest, trained: TrainedModel, segmentation: SegmentationModel
) -> str:
    """Content key of everything the prepared candidate is made from."""
    document = {
        "model": trained.path.sha256,
        "feature_spec": trained.feature_spec.sha256,
        "calibration": trained.calibration.sha256,
        "segmentation": segmentation.params_file.sha256,
        "train_data": request.train_sup.train_data_sha256,
        "onnx_name": f"{cfg.registry.model_name}-{trained.name}",
        "seed": cfg.seed,
        "validation": [cfg.train.validation_fraction, cfg.train.validation_method],
        "sample_rows": cfg.registry.parity_sample_rows,
        "code": _code_version(),
        "packages": _package_versions(),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def validation_slice(spark: SparkSession, cfg: Config, request: RegisterRequest) -> DataFrame:
    """The validation slice of the training split: the rows evaluate selected on."""
    path = cfg.path(cfg.split.train_path)
    if not path.exists():
        raise StaleUpstreamError(f"register: the training split {path} is missing")
    if content_hash(path) != request.train_sup.train_data_sha256:
        raise StaleUpstreamError(
            f"register: the training split {path} changed since train_sup ran"
        )
    _, validation = recorded_fit_validation(
        spark.read.parquet(str(path)), request.train_sup.validation,
        cfg.train.validation_fraction, cfg.seed,
    )
    return validation


def load_model(model_dir: Path, spec: FeatureSpec, name: str) -> PipelineModel:
    """The trained Spark pipeline, checked to assemble the columns its spec lists."""
    pipeline = PipelineModel.load(str(model_dir))
    if assembler_inputs(pipeline) != spec.features:
        raise PermanentError(
            f"register: {name}'s pipeline assembles other columns than its feature spec lists"
        )
    return pipeline


# --- the cached sample ---------------------------------------------------------------------------


def _write_sample(path: Path, sample: ScoredTest) -> list[str]:
    columns = list(sample.records[0]) if sample.records else []
    frame = pd.DataFrame.from_records(sample.records, columns=columns)
    frame.insert(0, KEY_COLUMN, sample.keys)
    frame.insert(1, LABEL_COLUMN, sample.labels)
    frame[_SPARK_P] = sample.spark_probability
    frame.to_parquet(path, index=False)
    return columns


def _read_sample(path: Path, columns: list[str]) -> ScoredTest:
    frame = pd.read_parquet(path)
    return ScoredTest(
        keys=frame[KEY_COLUMN].astype(str).tolist(),
        labels=frame[LABEL_COLUMN].to_numpy(dtype=np.int64),
        records=frame[columns].to_dict("records"),  # type: ignore[arg-type]
        spark_probability=frame[_SPARK_P].to_numpy(dtype=np.float64),
    )


# --- prepare, reuse, discard ---------------------------------------------------------------------


def _export(
    cfg: Config, request: RegisterRequest, trained: TrainedModel, segmentation: SegmentationModel,
    folder: Path,
) -> Prepared:
    """Score the sample in Spark, export, check parity, stage the bundle into `folder`."""
    reg = cfg.registry
    name = trained.name
    started = time.perf_counter()
    model_dir = checked_artifact(cfg, trained.path, f"{name} model")
    spec_path = checked_artifact(cfg, trained.feature_spec, f"{name} feature spec")
    segments_path = checked_artifact(cfg, segmentation.params_file, "segmentation parameters")
    spec = FeatureSpec.model_validate_json(spec_path.read_text())
    calibration = model_calibration(trained, cfg.path)
    spark = get_spark(cfg.spark)
    pipeline = load_model(model_dir, spec, name)
    validation = validation_slice(spark, cfg, request)
    sampled = validation_sample(validation, reg.parity_sample_rows, cfg.seed)
    # Every column travels with the records: the champion's spec may read inputs this spec
    # does not.
    columns = [c for c in validation.columns if c not in (KEY_COLUMN, LABEL_COLUMN)]
    sample = score_test_with_spark(pipeline, spec, sampled, columns)
    log.info("register.validation_scored", model=name, rows=len(sample.keys),
             sample_rows=reg.parity_sample_rows, seconds=round(time.perf_counter() - started, 3))

    started = time.perf_counter()
    onnx_model = export_classifier(spark, pipeline, len(spec.features), f"{reg.model_name}-{name}")
    export_s = round(time.perf_counter() - started, 3)
    raw = check_parity(onnx_model, spec, sample)
    parity = calibrated_parity(raw, sample, calibration)
    log.info("register.onnx_parity", model=name, rows=parity.rows, data="validation",
             calibration=calibration.method, max_abs_diff=parity.max_abs_diff,
             worst_key=parity.worst_key, tolerance=reg.onnx_tolerance, export_s=export_s)
    require_parity(parity, reg.onnx_tolerance, name)
    stage_bundle(folder / BUNDLE_DIR, onnx_model, model_dir, spec_path, segments_path,
                 len(spec.features), calibration)
    return Prepared(folder, spec, calibration, sample, raw.onnx_probability, parity, reused=False)


def _reuse(cfg: Config, folder: Path, key: str, trained: TrainedModel) -> Prepared | None:
    """The cached candidate when it is whole and its ONNX still scores its sample like Spark."""
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        return None
    spec_path = checked_artifact(cfg, trained.feature_spec, f"{trained.name} feature spec")
    spec = FeatureSpec.model_validate_json(spec_path.read_text())
    calibration = model_calibration(trained, cfg.path)
    staging = folder / BUNDLE_DIR
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest["key"] != key or content_hash(staging) != manifest["bundle_sha256"]:
            raise ValueError("the staged files are not the ones recorded")
        if content_hash(folder / SAMPLE_FILE) != manifest["sample_sha256"]:
            raise ValueError("the sample is not the one recorded")
        sample = _read_sample(folder / SAMPLE_FILE, manifest["columns"])
        raw = check_parity(onnx.load(str(staging / MODEL_FILE)), spec, sample)
        parity = calibrated_parity(raw, sample, calibration)
        require_parity(parity, cfg.registry.onnx_tolerance, trained.name)
    except (OSError, ValueError, KeyError, PermanentError) as exc:
        log.warning("register.export_cache_invalid", model=trained.name, folder=str(folder),
                    error=str(exc)[:300], effect="exported again")
        shutil.rmtree(folder, ignore_errors=True)
        return None
    log.info("register.export_reused", model=trained.name, rows=parity.rows,
             max_abs_diff=parity.max_abs_diff, folder=str(folder))
    return Prepared(folder, spec, calibration, sample, raw.onnx_probability, parity, reused=True)


def prepare(
    cfg: Config, request: RegisterRequest, trained: TrainedModel, segmentation: SegmentationModel
) -> Prepared:
    """The candidate exported, checked and staged: from the scratch folder when an earlier
    attempt of the same registration made it, else made now and kept there."""
    key = export_key(cfg, request, trained, segmentation)
    scratch = cfg.path(cfg.registry.scratch_dir)
    folder = scratch / key[:32]
    reused = _reuse(cfg, folder, key, trained)
    if reused is not None:
        return reused
    # One registration at a time: an entry of another candidate is left over from a failure.
    if scratch.is_dir():
        for other in scratch.iterdir():
            shutil.rmtree(other, ignore_errors=True)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        made = _export(cfg, request, trained, segmentation, tmp)
        columns = _write_sample(tmp / SAMPLE_FILE, made.sample)
        manifest = {
            "key": key,
            "model": trained.name,
            "columns": columns,
            "bundle_sha256": content_hash(tmp / BUNDLE_DIR),
            "sample_sha256": content_hash(tmp / SAMPLE_FILE),
            "rows": made.parity.rows,
            "max_abs_diff": made.parity.max_abs_diff,
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return replace(made, folder=folder)


def discard(prepared: Prepared) -> None:
    """Remove the scratch copy once the registration it served is done."""
    shutil.rmtree(prepared.folder, ignore_errors=True)
