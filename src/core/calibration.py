"""The probability calibrator: a monotone piecewise-linear map from a model's raw P(default).

Balanced training inflates P(default); a centered isotonic fit on the validation slice maps it back
to observed default rates. The same table is applied in Spark (batch) and in numpy (serving): linear
interpolation between its boundaries and the end values held outside them, which is exactly
`numpy.interp`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

CALIBRATION_FILE = "calibration.json"


class Calibration(BaseModel):
    """Boundaries (raw probabilities, increasing) and the calibrated probability at each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["isotonic", "identity"] = "isotonic"
    boundaries: list[float] = Field(default_factory=list)
    predictions: list[float] = Field(default_factory=list)
    fitted_on: str = Field(default="", description="the data it was fitted on, e.g. 'validation'")
    rows: int = 0

    @model_validator(mode="after")
    def _table_is_monotone(self) -> Calibration:
        if self.method == "identity":
            return self
        if not self.boundaries or len(self.boundaries) != len(self.predictions):
            raise ValueError("calibration: boundaries and predictions: unequal lengths or empty")
        if any(b > a for a, b in zip(self.boundaries[1:], self.boundaries, strict=False)):
            raise ValueError("calibration: boundaries must be non-decreasing")
        if any(b > a for a, b in zip(self.predictions[1:], self.predictions, strict=False)):
            raise ValueError("calibration: predictions must be non-decreasing")
        if min(self.predictions) < 0.0 or max(self.predictions) > 1.0:
            raise ValueError("calibration: predictions must lie in [0, 1]")
        return self

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated P(default) of raw probabilities (float64)."""
        p = np.asarray(raw, dtype=np.float64)
        if self.method == "identity":
            return p
        return np.interp(p, np.asarray(self.boundaries), np.asarray(self.predictions))


def read_calibration(path: Path) -> Calibration:
    """The calibration table in `path` (a calibration.json)."""
    return Calibration.model_validate_json(path.read_text())
