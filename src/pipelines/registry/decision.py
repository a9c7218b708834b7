"""Which alias a new version gets: champion only past the floor and the current champion.

Two comparisons, each of two figures on the same rows by the same metric code:
- the floor (the lender's grade, `register.floor_reference`): evaluate's validation figures of the
  candidate and of the reference, both on the whole validation slice (`src/pipelines/evaluation/`
  `slice_metrics`, raw probabilities where the calibration table was fitted on those rows);
- the current champion: the candidate's ONNX and the champion's own bundle, both raw, on the same
  seeded validation sample (`parity.validation_sample`), by `src.core.metrics.ranking_metric`.
A figure of one set of rows is never set against a figure of another.
"""

from __future__ import annotations

from dataclasses import dataclass

from src.contracts import EvaluateResult, Evaluation
from src.utils.errors import PermanentError

CHAMPION = "champion"
CHALLENGER = "challenger"


def validation_score(evaluation: Evaluation, metric: str) -> float | None:
    """`metric` of an evaluation on the validation slice, or None when evaluate gave none.

    The one place register reads the Evaluation contract's validation figures.
    """
    figures = evaluation.validation
    return None if figures is None else float(getattr(figures, metric))


@dataclass(frozen=True)
class Floor:
    """The reference a champion must beat, and the candidate's figure on the same rows."""

    name: str
    score: float
    candidate: float

    def passed(self, min_delta: float) -> bool:
        """True when the candidate beats the floor by at least min_delta."""
        return self.candidate - self.score >= min_delta


def floor_of(
    evaluate: EvaluateResult, candidate: Evaluation, reference: str | None, metric: str
) -> Floor | None:
    """The floor reference and the candidate, both as evaluate scored them on validation."""
    if reference is None:
        return None
    found = evaluate.evaluations.get(reference)
    floor = None if found is None or found.kind != "reference" else validation_score(found, metric)
    if floor is None:
        raise PermanentError(
            f"register: evaluate has no validation metrics of the floor reference '{reference}'; "
            "rerun 'evaluate'"
        )
    own = validation_score(candidate, metric)
    if own is None:
        raise PermanentError(
            f"register: evaluate has no validation metrics of '{candidate.name}'; rerun 'evaluate'"
        )
    return Floor(name=reference, score=floor, candidate=own)


def decide(
    metric: str, score: float, champion_version: str | None, champion_score: float | None,
    min_delta: float, floor: Floor | None = None,
) -> tuple[str, str]:
    """(alias, reason): champion when it beats the floor and is first or better by ≥ min_delta.

    `score` and `champion_score` are on the same validation rows; below the floor a version is
    challenger whatever the champion's score.
    """
    where = f"validation {metric}"
    if floor is not None and not floor.passed(min_delta):
        stays = f"v{champion_version} stays champion" if champion_version else "no champion"
        return CHALLENGER, (
            f"challenger: {where} {floor.candidate:.4f} does not beat the {floor.name} "
            f"reference's {floor.score:.4f} by min_delta {min_delta} "
            f"({floor.candidate - floor.score:+.4f}); the lender's grade is the floor, so this "
            f"version is never champion; {stays}"
        )
    beats = (
        f"; beats the {floor.name} reference's {floor.score:.4f} by "
        f"{floor.candidate - floor.score:+.4f} (whole slice, {floor.candidate:.4f})"
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
