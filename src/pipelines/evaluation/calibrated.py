"""A trained model's calibration table, as evaluate and register read it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from src.contracts import TrainedModel
from src.core.calibration import Calibration, read_calibration
from src.pipelines.training.calibration import RAW_PROBABILITY_COLUMN
from src.utils.errors import DataError

__all__ = ["RAW_PROBABILITY_COLUMN", "model_calibration"]


def model_calibration(model: TrainedModel, resolve: Callable[[str], Path]) -> Calibration:
    """The model's calibration.json, as train_sup wrote it beside the model."""
    artifact = model.calibration
    path = resolve(artifact.path)
    if not path.is_file():
        raise DataError(f"{model.name}'s calibration {artifact.path} is missing; rerun 'train_sup'")
    return read_calibration(path)
