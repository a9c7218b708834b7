"""Statistical bounds for tests, set from the sample size so that they cannot flake."""

from __future__ import annotations

import math

# How many standard errors below the expected value a bound sits.
STANDARD_ERRORS = 4.0


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil's standard error of an AUC estimated on `positives` and `negatives`."""
    q1 = auc / (2.0 - auc)
    q2 = 2.0 * auc * auc / (1.0 + auc)
    variance = (
        auc * (1.0 - auc)
        + (positives - 1) * (q1 - auc * auc)
        + (negatives - 1) * (q2 - auc * auc)
    ) / (positives * negatives)
    return math.sqrt(variance)


def auc_lower_bound(expected: float, positives: int, negatives: int) -> float:
    """`expected` minus STANDARD_ERRORS standard errors, for this many positives and negatives."""
    return expected - STANDARD_ERRORS * auc_standard_error(expected, positives, negatives)


def share_bounds(expected: float, n: int) -> tuple[float, float]:
    """A share's expected value ± STANDARD_ERRORS binomial standard errors over `n` draws."""
    se = math.sqrt(expected * (1.0 - expected) / n)
    return expected - STANDARD_ERRORS * se, expected + STANDARD_ERRORS * se
