"""Decision thresholds: decline a loan when its probability of default is at or above the threshold.

The threshold is chosen on training data only (the validation slice of the training split), by one
of three rules: expected profit per loan, F1 of the default class, or Youden's J (TPR − FPR).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from src.core.metrics import check_inputs
from src.utils.config import ThresholdConfig


@dataclass(frozen=True)
class ThresholdScan:
    """Every candidate threshold (ascending) with the rule's objective there."""

    rule: str
    thresholds: np.ndarray
    objective: np.ndarray

    @property
    def best(self) -> tuple[float, float]:
        """(threshold, objective) at the maximum; on a plateau the highest threshold wins."""
        # Highest threshold = fewest declined loans for the same value of the objective.
        i = len(self.objective) - 1 - int(np.argmax(self.objective[::-1]))
        return float(self.thresholds[i]), float(self.objective[i])


@dataclass(frozen=True)
class _Declined:
    """Cumulative outcomes of the declined loans at each candidate threshold (ascending)."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    positives: float
    negatives: float
    rows: int


def _declined(y: np.ndarray, p: np.ndarray) -> _Declined:
    labels, probs = check_inputs(y, p)
    values, inverse = np.unique(probs, return_inverse=True)
    defaults_at = np.bincount(inverse, weights=labels, minlength=values.size)
    rows_at = np.bincount(inverse, minlength=values.size).astype(np.float64)
    # Declined at threshold t: every loan with p ≥ t, i.e. a reverse cumulative sum.
    tp = np.cumsum(defaults_at[::-1])[::-1]
    fp = np.cumsum((rows_at - defaults_at)[::-1])[::-1]
    # One candidate above every score: decline nobody.
    above = np.nextafter(values[-1], np.inf)
    return _Declined(
        thresholds=np.r_[values, above],
        tp=np.r_[tp, 0.0],
        fp=np.r_[fp, 0.0],
        positives=float(labels.sum()),
        negatives=float(labels.size - labels.sum()),
        rows=labels.size,
    )


def expected_profit(d: _Declined, margin: float, loss_given_default: float) -> np.ndarray:
    """Profit per loan: approved repaid loans earn `margin`, approved defaults lose the LGD."""
    approved_repaid = d.negatives - d.fp
    approved_defaults = d.positives - d.tp
    return (approved_repaid * margin - approved_defaults * loss_given_default) / d.rows


def _f1(d: _Declined) -> np.ndarray:
    fn = d.positives - d.tp
    return 2.0 * d.tp / (2.0 * d.tp + d.fp + fn)


def _youden(d: _Declined) -> np.ndarray:
    return d.tp / d.positives - d.fp / d.negatives


def scan_thresholds(y: np.ndarray, p: np.ndarray, cfg: ThresholdConfig) -> ThresholdScan:
    """The objective of `cfg.rule` at every distinct probability (and above all of them)."""
    d = _declined(y, p)
    if cfg.rule == "profit":
        objective = expected_profit(d, cfg.margin, cfg.loss_given_default)
    elif cfg.rule == "f1":
        objective = _f1(d)
    else:
        objective = _youden(d)
    return ThresholdScan(rule=cfg.rule, thresholds=d.thresholds, objective=objective)


def choose_threshold(y: np.ndarray, p: np.ndarray, cfg: ThresholdConfig) -> tuple[float, float]:
    """(threshold, objective) maximising `cfg.rule` on labelled predictions (training data only)."""
    return scan_thresholds(y, p, cfg).best


def profit_at(
    y: np.ndarray, p: np.ndarray, threshold: float, margin: float, loss_given_default: float
) -> float:
    """Expected profit per loan of declining every loan with probability ≥ `threshold`."""
    labels, probs = check_inputs(y, p)
    approved = probs < threshold
    repaid = int(np.sum(approved & (labels == 0.0)))
    defaults = int(np.sum(approved & (labels == 1.0)))
    return profit_of_counts(repaid, defaults, labels.size, margin, loss_given_default)


def profit_of_counts(
    approved_repaid: int, approved_defaults: int, rows: int, margin: float,
    loss_given_default: float,
) -> float:
    """Expected profit per loan from the approved loans' counts (true and false negatives)."""
    return float((approved_repaid * margin - approved_defaults * loss_given_default) / rows)
