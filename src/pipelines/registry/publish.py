"""A staged candidate into the registry: run, version, files, tags, card, verified download, alias.

Any failure after the version exists deletes it again (`Registry.roll_back`), so nothing is
half-registered.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from src.contracts import Evaluation, RegisterRequest, SegmentationModel, TrainedModel
from src.core.bundle import (
    CARD_FILE,
    MODEL_FILE,
    SERVING_FILE,
    ServingInfo,
    calibration_sha256,
    file_sha256,
    read_bundle,
)
from src.core.calibration import Calibration
from src.core.feature_spec import FeatureSpec
from src.pipelines.export.onnx_export import Parity
from src.pipelines.registry.client import Registry
from src.pipelines.registry.decision import Floor, validation_score
from src.pipelines.registry.model_card import ModelCardInput, render_model_card
from src.utils.config import Config
from src.utils.errors import PermanentError
from src.utils.logging import get_logger
from src.utils.tracking import git_commit

log = get_logger(component="registry")

ARTIFACT_PATH = "model"
STAGE = "register"
REPORTED_METRICS = ("auc_roc", "auc_pr", "ks", "gini", "brier", "log_loss", "calibration_error")
# The data the registry compares versions on.
SCORED_ON = "validation"
# Model version descriptions are bounded in the registry's database.
DESCRIPTION_CHARS = 4000


@dataclass(frozen=True)
class Candidate:
    """The version about to be registered and everything said about it."""

    request: RegisterRequest
    trained: TrainedModel
    evaluation: Evaluation
    segmentation: SegmentationModel
    spec: FeatureSpec
    parity: Parity
    metric: str
    score: float
    alias: str
    decision: str
    champion_version: str | None
    champion_score: float | None
    floor: Floor | None
    calibration: Calibration


def _validation_metrics(evaluation: Evaluation) -> dict[str, float]:
    found = {m: validation_score(evaluation, m) for m in REPORTED_METRICS}
    return {m: v for m, v in found.items() if v is not None}


def trained_at(c: Candidate, cfg: Config) -> datetime | None:
    """When train_sup finished, else when the model was saved."""
    if c.request.train_sup.finished_at is not None:
        return c.request.train_sup.finished_at
    metadata = cfg.path(c.trained.path.path) / "metadata"
    if metadata.exists():
        return datetime.fromtimestamp(metadata.stat().st_mtime, tz=UTC)
    return None


def serving_info(c: Candidate, cfg: Config, version: str) -> ServingInfo:
    return ServingInfo(
        registered_model=cfg.registry.model_name,
        version=version,
        source_model=c.trained.name,  # type: ignore[arg-type]
        threshold=c.evaluation.threshold,
        metrics=c.evaluation,
        features=c.spec.features,
        trained_at=trained_at(c, cfg),
        train_data_sha256=c.request.train_sup.train_data_sha256,
        feature_spec_sha256=c.spec.sha256(),
        training_run_id=c.trained.run_id,
        calibration_sha256=calibration_sha256(c.calibration),
    )


def version_tags(c: Candidate, cfg: Config) -> dict[str, str]:
    request, trained, evaluation = c.request, c.trained, c.evaluation
    tags = {
        "source_model": trained.name,
        "training_run_id": trained.run_id,
        "train_data_sha256": request.train_sup.train_data_sha256,
        "test_data_sha256": request.test.sha256,
        "feature_spec_sha256": c.spec.sha256(),
        "git_commit": request.train_sup.git_commit or "unknown",
        "registration_git_commit": git_commit(cfg.root) or "unknown",
        "segmentation_model": c.segmentation.name,
        "threshold": repr(evaluation.threshold.value),
        "threshold_rule": evaluation.threshold.rule,
        "onnx_max_abs_diff": repr(c.parity.max_abs_diff),
        "primary_metric": c.metric,
        "scored_on": SCORED_ON,
        "scored_rows": str(c.parity.rows),
        "score": repr(c.score),
        "champion_score": repr(c.champion_score) if c.champion_score is not None else "none",
        "previous_champion_version": c.champion_version or "none",
        "alias_at_registration": c.alias,
        "decision": c.decision,
        "floor_reference": c.floor.name if c.floor else "none",
        "floor_score": repr(c.floor.score) if c.floor else "none",
        "floor_candidate_score": repr(c.floor.candidate) if c.floor else "none",
        "floor_passed": str(c.floor is None or c.floor.passed(cfg.registry.min_delta)).lower(),
        "calibration": c.calibration.method,
    }
    # metric.* are test figures (reported only); validation_metric.* what selection saw.
    tags.update({f"metric.{m}": repr(getattr(evaluation.test, m)) for m in REPORTED_METRICS})
    tags.update({f"validation_metric.{m}": repr(v)
                 for m, v in _validation_metrics(evaluation).items()})
    tags.update({f"param.{k}": str(v) for k, v in trained.params.items()})
    return tags


def description(decision: str, card: str) -> str:
    heading = card.splitlines()[0].lstrip("# ") if card else ""
    text = f"{heading}\n\n{decision}\n\nFull model card: {ARTIFACT_PATH}/{CARD_FILE}"
    return text[:DESCRIPTION_CHARS]


def model_card(c: Candidate, cfg: Config, version: str) -> str:
    request, reg = c.request, cfg.registry
    return render_model_card(
        ModelCardInput(
            model_name=reg.model_name,
            version=version,
            alias=c.alias,
            decision=c.decision,
            primary_metric=c.metric,
            score=c.score,
            floor_reference=c.floor.name if c.floor else None,
            floor_score=c.floor.score if c.floor else None,
            floor_candidate_score=c.floor.candidate if c.floor else None,
            min_delta=reg.min_delta,
            calibration=c.calibration,
            champion_score=c.champion_score,
            previous_champion_version=c.champion_version,
            trained=c.trained,
            evaluation=c.evaluation,
            evaluations=request.evaluate.evaluations,
            features=c.spec.features,
            dropped_features=c.spec.dropped,
            segmentation=c.segmentation,
            test_segments=request.evaluate.segments,
            split=request.split,
            fetch=request.fetch,
            balance=cfg.train.balance,
            train_data_sha256=request.train_sup.train_data_sha256,
            feature_spec_sha256=c.spec.sha256(),
            git_commit=request.train_sup.git_commit,
            onnx_max_abs_diff=c.parity.max_abs_diff,
            onnx_rows=c.parity.rows,
            onnx_tolerance=reg.onnx_tolerance,
            trained_at=trained_at(c, cfg),
            registered_at=datetime.now(UTC),
        )
    )


def verify(registry: Registry, name: str, version: str, staging: Path) -> None:
    """The registered version downloads as the bundle just built (same ONNX, same version)."""
    with tempfile.TemporaryDirectory(prefix="register-verify-") as folder:
        local = registry.download(f"models:/{name}/{version}", Path(folder))
        bundle = read_bundle(local)
        if bundle.version != version:
            raise PermanentError(
                f"register: {name} v{version} downloads with serving.json version "
                f"{bundle.version}"
            )
        if file_sha256(local / MODEL_FILE) != file_sha256(staging / MODEL_FILE):
            raise PermanentError(f"register: {name} v{version} downloads another model.onnx")


def publish(registry: Registry, c: Candidate, cfg: Config, staging: Path) -> str:
    """Run + version + files + tags + alias; the version is deleted if any step fails.

    Writes serving.json and the model card into `staging`; returns the version.
    """
    reg = cfg.registry
    name = reg.model_name
    tags = version_tags(c, cfg)
    registry.sweep_orphans(name)
    run_id = registry.create_run(f"{STAGE}-{c.trained.name}", {"stage": STAGE, **tags})
    version: str | None = None
    try:
        registry.log_run_data(
            run_id,
            params={"source_model": c.trained.name, "model_name": name,
                    "min_delta": reg.min_delta, "onnx_tolerance": reg.onnx_tolerance,
                    "parity_sample_rows": reg.parity_sample_rows},
            metrics={"score": c.score, "onnx_max_abs_diff": c.parity.max_abs_diff,
                     "scored_rows": float(c.parity.rows),
                     **({"champion_score": c.champion_score}
                        if c.champion_score is not None else {}),
                     **({"floor_score": c.floor.score} if c.floor is not None else {}),
                     **{f"test_{m}": getattr(c.evaluation.test, m) for m in REPORTED_METRICS},
                     **{f"validation_{m}": v
                        for m, v in _validation_metrics(c.evaluation).items()}},
        )
        registry.log_artifacts(run_id, staging, ARTIFACT_PATH)
        registry.ensure_registered_model(name)
        source = registry.run_artifact_uri(run_id, ARTIFACT_PATH)
        created = registry.create_version(name, source, run_id, tags)
        version = str(created.version)
        log.info("register.version_created", model_name=name, version=version, run_id=run_id)

        info = serving_info(c, cfg, version)
        (staging / SERVING_FILE).write_text(info.model_dump_json(indent=2) + "\n")
        card = model_card(c, cfg, version)
        (staging / CARD_FILE).write_text(card)
        for file_name in (SERVING_FILE, CARD_FILE):
            registry.log_artifact(run_id, staging / file_name, ARTIFACT_PATH)
        registry.describe_version(name, version, description(c.decision, card))
        verify(registry, name, version, staging)
        registry.set_alias(name, c.alias, version)
    except BaseException as exc:
        # Best effort: delete the version that got no alias, mark the run failed; never raises.
        registry.roll_back(name, version, run_id, exc)
        raise
    registry.end_run(run_id, "FINISHED")
    log.info("register.alias_set", model_name=name, version=version, alias=c.alias)
    return version
