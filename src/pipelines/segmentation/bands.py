"""Risk bands from clusters: adjacent clusters whose default rates are too close are merged.

A band is only worth showing a lender when its default rate differs from its neighbours' by a
margin that survives the test split's sampling noise. Clusters are ordered by their training
default rate; the closest adjacent pair that misses the margin is pooled, and so on, until every
adjacent gap clears it and there are no more bands than band names. Plain Python: the inputs are
one size and one default rate per cluster.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterRisk:
    """One cluster's training size and observed default rate."""

    cluster: int
    size: int
    default_rate: float


@dataclass(frozen=True)
class RiskGroup:
    """Clusters pooled into one band: their total size and pooled default rate."""

    clusters: tuple[int, ...]
    size: int
    defaults: float

    @property
    def default_rate(self) -> float:
        return self.defaults / self.size

    def pooled(self, other: RiskGroup) -> RiskGroup:
        return RiskGroup(
            clusters=tuple(sorted(self.clusters + other.clusters)),
            size=self.size + other.size,
            defaults=self.defaults + other.defaults,
        )


@dataclass(frozen=True)
class GapRule:
    """Adjacent bands must differ by `min_gap` plus `z` standard errors of the test-split gap.

    `holdout_ratio` is test rows per training row: the gap is measured again on the test split,
    so its noise there (and the training estimate's own) must not close it.
    """

    min_gap: float
    z: float
    holdout_ratio: float

    def required(self, low: RiskGroup, high: RiskGroup) -> float:
        """The smallest default-rate gap between `low` and `high` that counts as separate."""
        variance = sum(
            g.default_rate * (1.0 - g.default_rate) / g.size for g in (low, high)
        )
        # Training estimate plus an independent test estimate with 1/holdout_ratio the rows each.
        se = math.sqrt(variance * (1.0 + 1.0 / self.holdout_ratio))
        return self.min_gap + self.z * se

    def shortfall(self, low: RiskGroup, high: RiskGroup) -> float:
        """How far the observed gap is above (≥ 0) or below (< 0) the required one."""
        return (high.default_rate - low.default_rate) - self.required(low, high)

    def separates(self, low: RiskGroup, high: RiskGroup) -> bool:
        """True when `high` is riskier than `low` by at least the required gap."""
        return high.default_rate > low.default_rate and self.shortfall(low, high) >= 0


def merge_clusters(
    clusters: Sequence[ClusterRisk], rule: GapRule, max_bands: int
) -> list[RiskGroup]:
    """Risk groups, lowest default rate first, each adjacent pair clearing `rule`."""
    if not clusters:
        raise ValueError("no cluster to band")
    groups = [
        RiskGroup((c.cluster,), c.size, c.default_rate * c.size)
        for c in sorted(clusters, key=lambda c: (c.default_rate, c.cluster))
    ]
    while len(groups) > 1:
        pairs = list(itertools.pairwise(groups))
        if len(groups) <= max_bands and all(rule.separates(a, b) for a, b in pairs):
            break
        # The pair furthest below its required gap; on a tie, the closer default rates.
        worst = min(range(len(pairs)), key=lambda i: (
            rule.shortfall(*pairs[i]), pairs[i][1].default_rate - pairs[i][0].default_rate, i))
        merged = groups[worst].pooled(groups[worst + 1])
        # The pooled rate lies between the pair's rates, so the order of the groups holds.
        groups[worst:worst + 2] = [merged]
    return groups


def choose_k(
    scores: dict[int, float], bands: dict[int, int], higher_is_better: bool
) -> int:
    """The k giving the most risk bands; among those, the best clustering score, then smallest k."""
    sign = 1.0 if higher_is_better else -1.0
    return max(scores, key=lambda k: (bands[k], sign * scores[k], -k))
