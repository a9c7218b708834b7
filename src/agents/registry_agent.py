"""RegistryAgent: the evaluated best model → verified ONNX bundle → MLflow model version + alias.

Order of work, so that nothing is half-registered:
1. export the classifier to ONNX and check it against Spark, both calibrated, on the validation
   slice of the training split (no registry yet);
2. score the current champion's own bundle on the same validation rows: the gate never sees test;
3. log the bundle in a new run, create the version, add serving.json + model card, tag, verify
   the download, set the alias — any failure after the version exists deletes it again;
4. write the same bundle to `register.bundle_dir`.

A version becomes champion only if it also beats the lender's own grade (evaluate's
`ref_sub_grade` reference, `register.floor_reference`, on the same validation rows) by
`min_delta`; otherwise it is a challenger.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.ml import PipelineModel

from src.agents.base import Agent, Skill
from src.contracts import (
    Artifact,
    Evaluation,
    RegisterRequest,
    RegisterResult,
    SegmentationModel,
    TrainedModel,
)
from src.core.bundle import (
    CALIBRATION_FILE,
    CARD_FILE,
    MODEL_FILE,
    ONNX_INPUT,
    ONNX_PROBABILITY_OUTPUT,
    SEGMENTATION_FILE,
    SERVING_FILE,
    SPARK_DIR,
    SPEC_FILE,
    ServingInfo,
    calibration_sha256,
    file_sha256,
    read_bundle,
)
from src.core.calibration import Calibration
from src.core.feature_spec import FeatureSpec, transform_records
from src.core.metrics import ranking_metric
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
from src.pipelines.preparation.splitting import split_fit_validation
from src.pipelines.registry.client import Registry, short_error
from src.pipelines.registry.model_card import ModelCardInput, render_model_card
from src.utils.atomic import atomic_path
from src.utils.errors import DataError, PermanentError, StaleUpstreamError
from src.utils.hashing import content_hash
from src.utils.logging import get_logger
from src.utils.spark import get_spark
from src.utils.tracking import git_commit

log = get_logger(agent="RegistryAgent")

CHAMPION = "champion"
CHALLENGER = "challenger"
ARTIFACT_PATH = "model"
STAGE = "register"
# Packages the ONNX flavour needs; explicit so MLflow does not spend seconds inferring them.
ONNX_PACKAGES = ("onnx", "onnxruntime", "numpy")
REPORTED_METRICS = ("auc_roc", "auc_pr", "ks", "gini", "brier", "log_loss", "calibration_error")
# The data the registry compares versions on.
SCORED_ON = "validation"
# Model version descriptions are bounded in the registry's database.
DESCRIPTION_CHARS = 4000


def _pip_requirements() -> list[str]:
    return [f"{name}=={package_version(name)}" for name in ONNX_PACKAGES]


def _signature(n_features: int) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float64), (-1, n_features), ONNX_INPUT)]),
        outputs=Schema([TensorSpec(np.dtype(np.float64), (-1, 2), ONNX_PROBABILITY_OUTPUT)]),
    )


@dataclass(frozen=True)
class Floor:
    """The reference a champion must beat on validation, and its score there."""

    name: str
    score: float

    def passed(self, score: float, min_delta: float) -> bool:
        """True when `score` beats the floor by at least min_delta."""
        return score - self.score >= min_delta


def calibrated_parity(parity: Parity, scored: ScoredTest, calibration: Calibration) -> Parity:
    """ONNX against Spark after both went through the calibration table, as they are served."""
    onnx_p = calibration.apply(parity.onnx_probability)
    diff = np.abs(onnx_p - calibration.apply(scored.spark_probability))
    # The raw difference counts too: a flat stretch of the table must not hide a broken export.
    diff = np.maximum(diff, np.abs(parity.onnx_probability - scored.spark_probability))
    worst = int(diff.argmax()) if len(diff) else None
    return Parity(
        rows=len(diff),
        max_abs_diff=float(diff.max()) if len(diff) else 0.0,
        worst_key=scored.keys[worst] if worst is not None else None,
        onnx_probability=onnx_p,
    )


def decide(
    metric: str, score: float, champion_version: str | None, champion_score: float | None,
    min_delta: float, floor: Floor | None = None,
) -> tuple[str, str]:
    """(alias, reason): champion when it beats the floor and is first or better by ≥ min_delta.

    Every score is on the validation slice; below the floor a version is challenger whatever
    the champion's score.
    """
    where = f"validation {metric}"
    if floor is not None and not floor.passed(score, min_delta):
        stays = f"v{champion_version} stays champion" if champion_version else "no champion"
        return CHALLENGER, (
            f"challenger: {where} {score:.4f} does not beat the {floor.name} reference's "
            f"{floor.score:.4f} by min_delta {min_delta} ({score - floor.score:+.4f}); the "
            f"lender's grade is the floor, so this version is never champion; {stays}"
        )
    beats = (
        f"; beats the {floor.name} reference's {floor.score:.4f} by {score - floor.score:+.4f}"
        if floor is not None else ""
    )
    if champion_version is None:
        return CHAMPION, (
            f"first champion: no version held '{CHAMPION}'; {where} {score:.4f}{beats}"
        )
    if champion_score is None:
        return CHAMPION, (
            f"champion: v{champion_version} could not be scored on the validation slice; "
            f"{where} {score:.4f}{beats}"
        )
    delta = score - champion_score
    if delta >= min_delta:
        return CHAMPION, (
            f"champion: {where} {score:.4f} beats v{champion_version}'s {champion_score:.4f} "
            f"by {delta:+.4f} (min_delta {min_delta}){beats}"
        )
    return CHALLENGER, (
        f"challenger: {where} {score:.4f} vs v{champion_version}'s {champion_score:.4f} "
        f"({delta:+.4f} < min_delta {min_delta}); v{champion_version} stays champion"
    )


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


class RegistryAgent(Agent):
    """Model registration: ONNX bundle, MLflow version with tags and model card, alias promotion."""

    skills = (Skill("register", RegisterRequest, RegisterResult, "register"),)

    # --- inputs ----------------------------------------------------------------------------------

    def _relative(self, path: Path) -> str:
        resolved, root = path.resolve(), self.cfg.root.resolve()
        return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)

    def _checked(self, artifact: Artifact, what: str) -> Path:
        path = self.cfg.path(artifact.path)
        if not path.exists():
            raise StaleUpstreamError(f"register: {what} {artifact.path} is missing")
        if content_hash(path) != artifact.sha256:
            raise StaleUpstreamError(f"register: {what} {artifact.path} changed since it was made")
        return path

    def _inputs(
        self, request: RegisterRequest
    ) -> tuple[TrainedModel, Evaluation, SegmentationModel]:
        best = request.evaluate.best_model
        trained = request.train_sup.models.get(best)
        if trained is None:
            raise PermanentError(
                f"register: best model '{best}' is not among the trained models "
                f"{sorted(request.train_sup.models)}"
            )
        evaluation = request.evaluate.evaluations.get(best)
        if evaluation is None or evaluation.kind != "model":
            raise PermanentError(f"register: evaluate has no model evaluation of '{best}'")
        serving = request.train_unsup.serving_model
        segmentation = request.train_unsup.models.get(serving)
        if segmentation is None:
            raise PermanentError(f"register: serving segmentation '{serving}' was not trained")
        return trained, evaluation, segmentation

    def _validation_slice(self, spark: Any, request: RegisterRequest) -> Any:
        """The validation slice of the training split: the rows evaluate selected on."""
        path = self.cfg.path(self.cfg.split.train_path)
        if not path.exists():
            raise StaleUpstreamError(f"register: the training split {path} is missing")
        if content_hash(path) != request.train_sup.train_data_sha256:
            raise StaleUpstreamError(
                f"register: the training split {path} changed since train_sup ran"
            )
        _, validation = split_fit_validation(
            spark.read.parquet(str(path)),
            self.cfg.train.validation_fraction,
            self.cfg.seed,
            method=self.cfg.train.validation_method,
        )
        return validation

    def _floor(self, request: RegisterRequest, metric: str) -> Floor | None:
        """The floor reference's validation score from evaluate (same rows, same metric code)."""
        name = self.cfg.registry.floor_reference
        if name is None:
            return None
        reference = request.evaluate.evaluations.get(name)
        if reference is None or reference.kind != "reference" or reference.validation is None:
            raise PermanentError(
                f"register: evaluate has no validation metrics of the floor reference '{name}'; "
                "rerun 'evaluate'"
            )
        return Floor(name=name, score=float(getattr(reference.validation, metric)))

    def _load_model(self, trained: TrainedModel) -> tuple[PipelineModel, FeatureSpec, Path, Path]:
        model_dir = self._checked(trained.path, f"{trained.name} model")
        spec_path = self._checked(trained.feature_spec, f"{trained.name} feature spec")
        spec = FeatureSpec.model_validate_json(spec_path.read_text())
        pipeline = PipelineModel.load(str(model_dir))
        if assembler_inputs(pipeline) != spec.features:
            raise PermanentError(
                f"register: {trained.name}'s pipeline assembles other columns than its feature "
                "spec lists"
            )
        return pipeline, spec, model_dir, spec_path

    # --- the stage -------------------------------------------------------------------------------

    def register(self, request: RegisterRequest) -> RegisterResult:
        """Export, verify, register and promote the evaluated best model."""
        reg = self.cfg.registry
        trained, evaluation, segmentation = self._inputs(request)
        name = trained.name
        started = time.perf_counter()
        # Reach the registry first: when it is down, the attempt fails in seconds, before the
        # Spark scoring and ONNX export that a supervisor retry would otherwise redo.
        registry = Registry(self.cfg)
        registry.connect()
        spark = get_spark(self.cfg.spark)
        pipeline, spec, model_dir, spec_path = self._load_model(trained)
        calibration = model_calibration(trained, self.cfg.path)
        segments_path = self._checked(segmentation.params_file, "segmentation parameters")
        validation_df = self._validation_slice(spark, request)
        # Every column travels with the records: the champion's spec may read inputs this spec
        # does not.
        columns = [c for c in validation_df.columns if c not in (KEY_COLUMN, LABEL_COLUMN)]
        validation = score_test_with_spark(pipeline, spec, validation_df, columns)
        log.info("register.validation_scored", model=name, rows=len(validation.keys),
                 seconds=round(time.perf_counter() - started, 3))

        started = time.perf_counter()
        onnx_model = export_classifier(
            spark, pipeline, len(spec.features), f"{reg.model_name}-{name}"
        )
        export_s = round(time.perf_counter() - started, 3)
        raw_parity = check_parity(onnx_model, spec, validation)
        parity = calibrated_parity(raw_parity, validation, calibration)
        log.info("register.onnx_parity", model=name, rows=parity.rows, data=SCORED_ON,
                 calibration=calibration.method, max_abs_diff=parity.max_abs_diff,
                 worst_key=parity.worst_key, tolerance=reg.onnx_tolerance, export_s=export_s)
        if not parity.max_abs_diff <= reg.onnx_tolerance:
            raise PermanentError(
                f"register: ONNX export of {name} differs from Spark by {parity.max_abs_diff:.3e} "
                f"(loan {parity.worst_key}) on {parity.rows} validation loans, above "
                f"register.onnx_tolerance {reg.onnx_tolerance:.1e}; nothing was registered"
            )
        metric = request.evaluate.primary_metric
        # Ranked on raw probabilities: the calibration table was fitted on these same rows, and
        # its pooled ties would flatter the challenger against the champion and the floor.
        score = ranking_metric(metric, validation.labels, raw_parity.onnx_probability)
        floor = self._floor(request, metric)

        with tempfile.TemporaryDirectory(prefix="register-") as scratch:
            work = Path(scratch)
            staging = work / "bundle"
            self._stage(
                staging, onnx_model, model_dir, spec_path, segments_path, len(spec.features)
            )
            (staging / CALIBRATION_FILE).write_text(calibration.model_dump_json(indent=2) + "\n")
            champion = registry.alias_version(reg.model_name, CHAMPION)
            champion_version = str(champion.version) if champion is not None else None
            champion_score = (
                self._champion_score(registry, champion_version, metric, validation, work)
                if champion_version
                else None
            )
            alias, decision = decide(
                metric, score, champion_version, champion_score, reg.min_delta, floor
            )
            log.info("register.decision", model=name, alias=alias, metric=metric, score=score,
                     scored_on=SCORED_ON, champion_version=champion_version,
                     champion_score=champion_score, floor=floor.name if floor else None,
                     floor_score=floor.score if floor else None, min_delta=reg.min_delta,
                     decision=decision)
            candidate = Candidate(
                request=request, trained=trained, evaluation=evaluation,
                segmentation=segmentation, spec=spec, parity=parity, metric=metric, score=score,
                alias=alias, decision=decision, champion_version=champion_version,
                champion_score=champion_score, floor=floor, calibration=calibration,
            )
            version = self._publish(registry, candidate, staging)
            bundle_dir = self.cfg.path(reg.bundle_dir)
            with atomic_path(bundle_dir) as tmp:
                shutil.copytree(staging, tmp)
        log.info("register.done", model_name=reg.model_name, version=version, alias=alias,
                 source_model=name, bundle=str(bundle_dir))
        return RegisterResult(
            model_name=reg.model_name,
            version=version,
            alias=alias,  # type: ignore[arg-type]
            decision=decision,
            score=score,
            champion_score=champion_score,
            scored_on=SCORED_ON,
            floor_score=floor.score if floor else None,
            previous_champion_version=champion_version,
            onnx_max_abs_diff=parity.max_abs_diff,
            bundle=Artifact(path=self._relative(bundle_dir), sha256=content_hash(bundle_dir)),
            model_card=self._relative(bundle_dir / CARD_FILE),
        )

    # --- bundle ----------------------------------------------------------------------------------

    def _stage(
        self, staging: Path, onnx_model: Any, model_dir: Path, spec_path: Path,
        segments_path: Path, n_features: int,
    ) -> None:
        """Every bundle file except serving.json and the card, which need the version number."""
        import mlflow.onnx

        mlflow.onnx.save_model(
            onnx_model,
            str(staging),
            pip_requirements=_pip_requirements(),
            signature=_signature(n_features),
            # One self-contained model.onnx: serving reads the file as it is.
            save_as_external_data=False,
        )
        shutil.copyfile(spec_path, staging / SPEC_FILE)
        shutil.copyfile(segments_path, staging / SEGMENTATION_FILE)
        shutil.copytree(model_dir, staging / SPARK_DIR)

    def _trained_at(self, request: RegisterRequest, model_dir: Path) -> datetime | None:
        if request.train_sup.finished_at is not None:
            return request.train_sup.finished_at
        metadata = model_dir / "metadata"
        if metadata.exists():
            return datetime.fromtimestamp(metadata.stat().st_mtime, tz=UTC)
        return None

    def _serving_info(self, c: Candidate, version: str) -> ServingInfo:
        request, trained, evaluation, spec = c.request, c.trained, c.evaluation, c.spec
        return ServingInfo(
            registered_model=self.cfg.registry.model_name,
            version=version,
            source_model=trained.name,  # type: ignore[arg-type]
            threshold=evaluation.threshold,
            metrics=evaluation,
            features=spec.features,
            trained_at=self._trained_at(request, self.cfg.path(trained.path.path)),
            train_data_sha256=request.train_sup.train_data_sha256,
            feature_spec_sha256=spec.sha256(),
            training_run_id=trained.run_id,
            calibration_sha256=calibration_sha256(c.calibration),
        )

    # --- champion --------------------------------------------------------------------------------

    def _champion_score(
        self, registry: Registry, version: str, metric: str, rows: ScoredTest, work: Path
    ) -> float | None:
        """The champion's own bundle (its spec, ONNX, calibration) on today's validation rows."""
        name = self.cfg.registry.model_name
        try:
            local = registry.download(f"models:/{name}/{version}", work / "champion")
            bundle = read_bundle(local)
        except DataError as exc:
            log.warning("register.champion_unreadable", version=version, error=short_error(exc))
            return None
        available = set(rows.records[0]) if rows.records else set()
        absent = [c for c in bundle.spec_inputs() if c not in available]
        if absent:
            log.warning("register.champion_inputs_absent", version=version, columns=absent,
                        effect="scored with these inputs imputed, as serving would")
        champion_spec = FeatureSpec.model_validate(bundle.spec_json)
        # Raw, as the challenger is ranked: a ranking metric needs no calibration.
        probabilities = bundle.raw_proba(transform_records(champion_spec, rows.records))
        score = ranking_metric(metric, rows.labels, probabilities)
        log.info("register.champion_scored", version=version, metric=metric, score=score,
                 source_model=bundle.serving.source_model)
        return score

    # --- registration ----------------------------------------------------------------------------

    def _version_tags(self, c: Candidate) -> dict[str, str]:
        request, trained, evaluation = c.request, c.trained, c.evaluation
        tags = {
            "source_model": trained.name,
            "training_run_id": trained.run_id,
            "train_data_sha256": request.train_sup.train_data_sha256,
            "test_data_sha256": request.test.sha256,
            "feature_spec_sha256": c.spec.sha256(),
            "git_commit": request.train_sup.git_commit or "unknown",
            "registration_git_commit": git_commit(self.cfg.root) or "unknown",
            "segmentation_model": c.segmentation.name,
            "threshold": repr(evaluation.threshold.value),
            "threshold_rule": evaluation.threshold.rule,
            "onnx_max_abs_diff": repr(c.parity.max_abs_diff),
            "primary_metric": c.metric,
            "scored_on": SCORED_ON,
            "score": repr(c.score),
            "champion_score": repr(c.champion_score) if c.champion_score is not None else "none",
            "previous_champion_version": c.champion_version or "none",
            "alias_at_registration": c.alias,
            "decision": c.decision,
            "floor_reference": c.floor.name if c.floor else "none",
            "floor_score": repr(c.floor.score) if c.floor else "none",
            "floor_passed": str(c.floor is None
                                or c.floor.passed(c.score, self.cfg.registry.min_delta)).lower(),
            "calibration": c.calibration.method,
        }
        # metric.* are test figures (reported only); validation_metric.* what selection saw.
        tags.update({f"metric.{m}": repr(getattr(evaluation.test, m)) for m in REPORTED_METRICS})
        if evaluation.validation is not None:
            tags.update({f"validation_metric.{m}": repr(getattr(evaluation.validation, m))
                         for m in REPORTED_METRICS})
        tags.update({f"param.{k}": str(v) for k, v in trained.params.items()})
        return tags

    def _publish(self, registry: Registry, c: Candidate, staging: Path) -> str:
        """Run + version + files + tags + alias; the version is deleted if any step fails."""
        name = self.cfg.registry.model_name
        tags = self._version_tags(c)
        registry.sweep_orphans(name)
        run_id = registry.create_run(f"{STAGE}-{c.trained.name}", {"stage": STAGE, **tags})
        version: str | None = None
        try:
            registry.log_run_data(
                run_id,
                params={"source_model": c.trained.name, "model_name": name,
                        "min_delta": self.cfg.registry.min_delta,
                        "onnx_tolerance": self.cfg.registry.onnx_tolerance},
                metrics={"score": c.score, "onnx_max_abs_diff": c.parity.max_abs_diff,
                         **({"champion_score": c.champion_score}
                            if c.champion_score is not None else {}),
                         **({"floor_score": c.floor.score} if c.floor is not None else {}),
                         **{f"test_{m}": getattr(c.evaluation.test, m) for m in REPORTED_METRICS},
                         **({f"validation_{m}": getattr(c.evaluation.validation, m)
                             for m in REPORTED_METRICS}
                            if c.evaluation.validation is not None else {})},
            )
            registry.log_artifacts(run_id, staging, ARTIFACT_PATH)
            registry.ensure_registered_model(name)
            source = registry.run_artifact_uri(run_id, ARTIFACT_PATH)
            created = registry.create_version(name, source, run_id, tags)
            version = str(created.version)
            log.info("register.version_created", model_name=name, version=version, run_id=run_id)

            serving = self._serving_info(c, version)
            (staging / SERVING_FILE).write_text(serving.model_dump_json(indent=2) + "\n")
            card = self._card(c, version)
            (staging / CARD_FILE).write_text(card)
            for file_name in (SERVING_FILE, CARD_FILE):
                registry.log_artifact(run_id, staging / file_name, ARTIFACT_PATH)
            registry.describe_version(name, version, self._description(c.decision, card))
            self._verify(registry, name, version, staging)
            registry.set_alias(name, c.alias, version)
        except BaseException as exc:
            self._roll_back(registry, name, version, run_id, exc)
            raise
        registry.end_run(run_id, "FINISHED")
        log.info("register.alias_set", model_name=name, version=version, alias=c.alias)
        return version

    def _verify(self, registry: Registry, name: str, version: str, staging: Path) -> None:
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

    def _roll_back(
        self, registry: Registry, name: str, version: str | None, run_id: str, exc: BaseException
    ) -> None:
        """Best effort: delete the version that got no alias, mark the run failed; never raises."""
        registry.roll_back(name, version, run_id, exc)

    @staticmethod
    def _description(decision: str, card: str) -> str:
        heading = card.splitlines()[0].lstrip("# ") if card else ""
        text = f"{heading}\n\n{decision}\n\nFull model card: {ARTIFACT_PATH}/{CARD_FILE}"
        return text[:DESCRIPTION_CHARS]

    def _card(self, c: Candidate, version: str) -> str:
        request, trained, spec, parity = c.request, c.trained, c.spec, c.parity
        return render_model_card(
            ModelCardInput(
                model_name=self.cfg.registry.model_name,
                version=version,
                alias=c.alias,
                decision=c.decision,
                primary_metric=c.metric,
                score=c.score,
                floor_reference=c.floor.name if c.floor else None,
                floor_score=c.floor.score if c.floor else None,
                min_delta=self.cfg.registry.min_delta,
                calibration=c.calibration,
                champion_score=c.champion_score,
                previous_champion_version=c.champion_version,
                trained=trained,
                evaluation=c.evaluation,
                evaluations=request.evaluate.evaluations,
                features=spec.features,
                dropped_features=spec.dropped,
                segmentation=c.segmentation,
                test_segments=request.evaluate.segments,
                split=request.split,
                fetch=request.fetch,
                balance=self.cfg.train.balance,
                train_data_sha256=request.train_sup.train_data_sha256,
                feature_spec_sha256=spec.sha256(),
                git_commit=request.train_sup.git_commit,
                onnx_max_abs_diff=parity.max_abs_diff,
                onnx_rows=parity.rows,
                onnx_tolerance=self.cfg.registry.onnx_tolerance,
                trained_at=self._trained_at(request, self.cfg.path(trained.path.path)),
                registered_at=datetime.now(UTC),
            )
        )
