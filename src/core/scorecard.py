"""Scorecard points from P(default), with the industry's points-to-double-the-odds scaling.

points = base_points + pdo / ln 2 · ln(odds / base_odds), where odds = P(repaid) / P(default): at
`base_odds` good:bad the score is `base_points`, and every `pdo` points double the odds.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

# Probabilities are kept this far from 0 and 1 so a score is always finite.
_P_EPS = 1e-9


class ScorecardScaling(BaseModel):
    """base_points at base_odds (good:bad), pdo points to double the odds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_points: float = 600.0
    base_odds: float = Field(default=50.0, gt=0)
    pdo: float = Field(default=20.0, gt=0)


def score_points(p_default: np.ndarray, scaling: ScorecardScaling) -> np.ndarray:
    """Scorecard points of P(default) values (higher is safer), rounded to 0.01."""
    p = np.clip(np.asarray(p_default, dtype=np.float64), _P_EPS, 1.0 - _P_EPS)
    factor = scaling.pdo / math.log(2.0)
    points = scaling.base_points + factor * (np.log((1.0 - p) / p) - math.log(scaling.base_odds))
    return np.round(points, 2)
