"""Which model is best: chosen on the validation slice, never on test."""

from __future__ import annotations

from src.contracts import Evaluation
from src.utils.errors import DataError

# The data the best model is chosen on; test is only reported.
SELECTED_ON = "validation"


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
