"""Risk bands from clusters: merging close default rates, and the choice of k."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from src.pipelines.segmentation.bands import ClusterRisk, GapRule, choose_k, merge_clusters

NO_NOISE = GapRule(min_gap=0.02, z=0.0, holdout_ratio=0.25)


def test_clusters_closer_than_the_gap_are_pooled() -> None:
    clusters = [ClusterRisk(0, 10_000, 0.20), ClusterRisk(1, 10_000, 0.10),
                ClusterRisk(2, 30_000, 0.11)]
    groups = merge_clusters(clusters, NO_NOISE, max_bands=6)
    assert [g.clusters for g in groups] == [(1, 2), (0,)]
    assert [g.size for g in groups] == [40_000, 10_000]
    assert groups[0].default_rate == (0.10 * 10_000 + 0.11 * 30_000) / 40_000


def test_small_clusters_need_a_wider_gap() -> None:
    # 5 points apart: separate with 100k loans each, pooled with 300 (the test split's noise).
    rule = GapRule(min_gap=0.02, z=2.0, holdout_ratio=0.25)
    big = [ClusterRisk(0, 100_000, 0.10), ClusterRisk(1, 100_000, 0.15)]
    small = [ClusterRisk(0, 300, 0.10), ClusterRisk(1, 300, 0.15)]
    assert len(merge_clusters(big, rule, max_bands=6)) == 2
    assert len(merge_clusters(small, rule, max_bands=6)) == 1


def test_no_more_bands_than_names() -> None:
    clusters = [ClusterRisk(i, 100_000, 0.05 + 0.1 * i) for i in range(5)]
    assert len(merge_clusters(clusters, NO_NOISE, max_bands=5)) == 5
    assert len(merge_clusters(clusters, NO_NOISE, max_bands=3)) == 3


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 50_000), st.floats(0.0, 1.0)), min_size=1, max_size=9),
    st.floats(0.0, 0.1), st.floats(0.0, 4.0), st.integers(1, 6),
)
def test_merged_bands_clear_the_rule_and_keep_every_loan(
    drawn: list[tuple[int, float]], min_gap: float, z: float, max_bands: int
) -> None:
    clusters = [ClusterRisk(i, n, rate) for i, (n, rate) in enumerate(drawn)]
    rule = GapRule(min_gap, z, holdout_ratio=0.25)
    groups = merge_clusters(clusters, rule, max_bands)
    assert 1 <= len(groups) <= max_bands
    assert sorted(c for g in groups for c in g.clusters) == list(range(len(clusters)))
    assert sum(g.size for g in groups) == sum(c.size for c in clusters)
    for low, high in itertools.pairwise(groups):
        assert low.default_rate < high.default_rate
        assert rule.separates(low, high)


def test_equal_rates_are_one_band_even_without_a_gap() -> None:
    clusters = [ClusterRisk(0, 100, 0.1), ClusterRisk(1, 200, 0.1), ClusterRisk(2, 100, 0.3)]
    groups = merge_clusters(clusters, GapRule(0.0, 0.0, 1.0), max_bands=6)
    assert [g.clusters for g in groups] == [(0, 1), (2,)]


def test_k_with_the_most_bands_wins_then_the_score() -> None:
    bands = {3: 2, 4: 3, 5: 3}
    assert choose_k({3: 0.9, 4: 0.4, 5: 0.5}, bands, higher_is_better=True) == 5
    assert choose_k({3: 10.0, 4: 30.0, 5: 20.0}, bands, higher_is_better=False) == 5
    assert choose_k({3: 0.9, 4: 0.5, 5: 0.5}, bands, higher_is_better=True) == 4
