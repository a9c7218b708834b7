"""A trained model's calibration table, as evaluate and register read it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from src.contracts import Artifact, TrainedModel
from src.core.calibration import Calibration, read_calibration
from src.utils.errors import DataError

# The trainer's validation predictions: `probability` is calibrated when this column is present.
RAW_PROBABILITY_COLUMN = "raw_probability"
IDENTITY = Calibration(method="identity")


def model_calibration(model: TrainedModel, resolve: Callable[[str], Path]) -> Calibration:
    """The model's calibration.json, or the identity for a train_sup result without one."""
    # train_sup results written before calibration existed have no such field.
    artifact: Artifact | None = getattr(model, "calibration", None)
    if artifact is None:
        return IDENTITY
    path = resolve(artifact.path)
    if not path.is_file():
        raise DataError(f"{model.name}'s calibration {artifact.path} is missing; rerun 'train_sup'")
    return read_calibration(path)
