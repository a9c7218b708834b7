"""RegistryAgent: the evaluated best model → verified ONNX bundle → MLflow model version + alias.

Order of work, so that nothing is half-registered:
1. export the classifier to ONNX and check it against Spark, both calibrated, on a seeded sample
   of the validation slice (no registry yet; kept across retries: registry/prepare.py);
2. score the current champion's own bundle on the same sample: the gate never sees test;
3. log the bundle in a new run, create the version, add serving.json + model card, tag, verify
   the download, set the alias — any failure after the version exists deletes it again;
4. write the same bundle to `register.bundle_dir`.

How the gate compares (registry/decision.py): against the champion, both on the same sample by
the same metric code; against the lender's grade (`register.floor_reference`), evaluate's
figures of both on the whole validation slice. A version below either is a challenger.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from src.agents.base import Agent, Skill
from src.contracts import (
    Artifact,
    Evaluation,
    RegisterRequest,
    RegisterResult,
    SegmentationModel,
    TrainedModel,
)
from src.core.bundle import CARD_FILE
from src.core.metrics import ranking_metric
from src.pipelines.registry.champion import champion_score
from src.pipelines.registry.client import Registry
from src.pipelines.registry.decision import CHAMPION, decide, floor_of
from src.pipelines.registry.prepare import discard, prepare
from src.pipelines.registry.publish import SCORED_ON, Candidate, publish
from src.utils.atomic import atomic_path
from src.utils.errors import PermanentError
from src.utils.hashing import content_hash
from src.utils.logging import get_logger

log = get_logger(agent="RegistryAgent")


class RegistryAgent(Agent):
    """Model registration: ONNX bundle, MLflow version with tags and model card, alias promotion."""

    skills = (Skill("register", RegisterRequest, RegisterResult, "register"),)

    def _relative(self, path: Path) -> str:
        resolved, root = path.resolve(), self.cfg.root.resolve()
        return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)

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

    def register(self, request: RegisterRequest) -> RegisterResult:
        """Export, verify, register and promote the evaluated best model."""
        reg = self.cfg.registry
        trained, evaluation, segmentation = self._inputs(request)
        name = trained.name
        metric = request.evaluate.primary_metric
        floor = floor_of(request.evaluate, evaluation, reg.floor_reference, metric)
        # Reach the registry first: when it is down, the attempt fails in seconds, before the
        # Spark scoring and ONNX export. An outage later finds the export in the scratch folder.
        registry = Registry(self.cfg)
        registry.connect()
        prepared = prepare(self.cfg, request, trained, segmentation)
        sample = prepared.sample
        # Ranked on raw probabilities: the calibration table was fitted on these same rows, and
        # its pooled ties would flatter the challenger against the champion.
        score = ranking_metric(metric, sample.labels, prepared.raw_probability)

        with tempfile.TemporaryDirectory(prefix="register-") as scratch:
            work = Path(scratch)
            # publish writes serving.json and the card into its staging copy: the cached one
            # stays as exported for a retry.
            staging = work / "bundle"
            shutil.copytree(prepared.staging, staging)
            champion = registry.alias_version(reg.model_name, CHAMPION)
            champion_version = str(champion.version) if champion is not None else None
            champion_value = (
                champion_score(registry, reg.model_name, champion_version, metric, sample, work)
                if champion_version
                else None
            )
            alias, decision = decide(
                metric, score, champion_version, champion_value, reg.min_delta, floor
            )
            log.info("register.decision", model=name, alias=alias, metric=metric, score=score,
                     scored_on=SCORED_ON, scored_rows=prepared.parity.rows,
                     champion_version=champion_version, champion_score=champion_value,
                     floor=floor.name if floor else None,
                     floor_score=floor.score if floor else None,
                     floor_candidate_score=floor.candidate if floor else None,
                     min_delta=reg.min_delta, decision=decision)
            candidate = Candidate(
                request=request, trained=trained, evaluation=evaluation,
                segmentation=segmentation, spec=prepared.spec, parity=prepared.parity,
                metric=metric, score=score, alias=alias, decision=decision,
                champion_version=champion_version, champion_score=champion_value, floor=floor,
                calibration=prepared.calibration,
            )
            version = publish(registry, candidate, self.cfg, staging)
            bundle_dir = self.cfg.path(reg.bundle_dir)
            with atomic_path(bundle_dir) as tmp:
                shutil.copytree(staging, tmp)
        discard(prepared)
        log.info("register.done", model_name=reg.model_name, version=version, alias=alias,
                 source_model=name, bundle=str(bundle_dir), export_reused=prepared.reused)
        return RegisterResult(
            model_name=reg.model_name,
            version=version,
            alias=alias,  # type: ignore[arg-type]
            decision=decision,
            score=score,
            champion_score=champion_value,
            scored_on=SCORED_ON,
            floor_score=floor.score if floor else None,
            previous_champion_version=champion_version,
            onnx_max_abs_diff=prepared.parity.max_abs_diff,
            bundle=Artifact(path=self._relative(bundle_dir), sha256=content_hash(bundle_dir)),
            model_card=self._relative(bundle_dir / CARD_FILE),
            scored_rows=prepared.parity.rows,
            floor_candidate_score=floor.candidate if floor else None,
        )
