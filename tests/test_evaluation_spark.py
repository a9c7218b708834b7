"""evaluate's Spark point metrics against scikit-learn on the same rows, and the bounded driver
sample: intervals and the threshold on `driver_sample_rows` loans, point figures on all of them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from src.core.metrics import (
    auc_roc,
    average_precision,
    bootstrap_intervals,
    brier_score,
    confusion_at,
    expected_calibration_error,
    ks_statistic,
    log_loss,
)
from src.core.raw_schema import KEY_COLUMN
from src.core.thresholds import profit_at, scan_thresholds
from src.utils.config import EvaluateConfig, ThresholdConfig

# Integer counts and exact sums on the Spark side: only the last bits of a division may differ.
AGREEMENT = 1e-12
EVALUATE = EvaluateConfig(
    primary_metric="auc_pr", bootstrap_samples=200, calibration_bins=10,
    threshold=ThresholdConfig(rule="profit", loss_given_default=0.6, margin=0.12),
    plots_dir="reports/plots", metrics_path="reports/metrics.json", driver_sample_rows=100_000,
)


def _rows(n: int, seed: int, ties: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.15).astype(float)
    p = 1.0 / (1.0 + np.exp(-(rng.normal(size=n) + 1.2 * y - 1.8)))
    p = np.round(p, 2) if ties else p
    # Some exact 0 and 1 probabilities: log loss clips them as scikit-learn's convention does.
    p[:3] = [0.0, 1.0, 1.0]
    rank = np.round(p, 1) if ties else np.sqrt(p)
    return pd.DataFrame({KEY_COLUMN: [f"k{i:06d}" for i in range(n)], "y": y, "p": p,
                         "rank_score": rank})


def _frame(spark: Any, rows: pd.DataFrame, partitions: int = 4) -> Any:
    return spark.createDataFrame(rows).repartition(partitions)


@pytest.mark.parametrize("ties", [False, True])
def test_spark_point_metrics_agree_with_scikit_learn(spark: Any, ties: bool) -> None:
    from src.pipelines.evaluation.point_metrics import driver_point_metrics, point_metrics

    rows = _rows(5000, seed=3, ties=ties)
    y, p, r = (rows[c].to_numpy() for c in ("y", "p", "rank_score"))
    threshold = 0.2
    spark_figures = point_metrics(_frame(spark, rows), 10, threshold)
    expected = {
        "auc_roc": auc_roc(y, r), "auc_pr": average_precision(y, r), "ks": ks_statistic(y, r),
        "brier": brier_score(y, p), "log_loss": log_loss(y, p),
        "calibration_error": expected_calibration_error(y, p, 10),
    }
    gaps = {k: abs(getattr(spark_figures, k) - v) for k, v in expected.items()}
    print("spark − scikit-learn:", {k: f"{v:.1e}" for k, v in gaps.items()})
    assert max(gaps.values()) < AGREEMENT, gaps
    assert spark_figures.confusion == confusion_at(y, p, threshold)
    assert (spark_figures.rows, spark_figures.positives) == (y.size, int(y.sum()))
    # Exact sums: the figures do not depend on the partitioning.
    assert point_metrics(_frame(spark, rows, 1), 10, threshold) == spark_figures
    # A slice within the driver bound is measured there, with scikit-learn: the same figures.
    driver_figures = driver_point_metrics(y, p, r, 10, threshold)
    assert driver_figures.confusion == spark_figures.confusion
    assert (driver_figures.rows, driver_figures.positives) == (y.size, int(y.sum()))
    for k in expected:
        assert getattr(driver_figures, k) == pytest.approx(
            getattr(spark_figures, k), rel=0, abs=AGREEMENT), k


def test_point_metrics_refuse_bad_rows(spark: Any) -> None:
    from src.pipelines.evaluation.point_metrics import driver_point_metrics, point_metrics
    from src.utils.errors import DataError

    rows = _rows(200, seed=1, ties=False)
    rows.loc[5, "p"] = 1.5
    rows.loc[7, "rank_score"] = np.nan
    rows.loc[9, "y"] = 2.0
    one_class = _rows(200, seed=1, ties=False).assign(y=0.0)
    # Both paths refuse the same rows with the same words.
    for bad, message in ((rows, r"^evaluate: the slice has 3 rows .* outside \[0, 1\]$"),
                         (one_class, "^evaluate: the slice needs both classes among its 200")):
        y, p, r = (bad[c].to_numpy() for c in ("y", "p", "rank_score"))
        with pytest.raises(DataError, match=message):
            point_metrics(_frame(spark, bad), 10, what="the slice")
        with pytest.raises(DataError, match=message):
            driver_point_metrics(y, p, r, 10, what="the slice")


def test_the_driver_holds_a_bounded_sample_and_point_figures_cover_every_row(spark: Any) -> None:
    from src.pipelines.evaluation.candidates import Candidate
    from src.pipelines.evaluation.driver_sample import sample_rows
    from src.pipelines.evaluation.slice_metrics import evaluate_candidate

    bound, seed = 1000, 11
    test_rows, validation_rows = _rows(6000, seed=5, ties=False), _rows(4000, seed=6, ties=False)
    test, validation = _frame(spark, test_rows), _frame(spark, validation_rows)
    cfg = EVALUATE.model_copy(update={"driver_sample_rows": bound})
    candidate = Candidate("m", "model", test, validation, "validation rows")
    evaluated = evaluate_candidate(candidate, cfg, seed)
    e = evaluated.evaluation
    assert e.validation is not None
    assert (e.test.rows, e.validation.rows) == (6000, 4000)
    assert e.test.sample_rows == e.validation.sample_rows == bound
    assert evaluated.test_sample.scored.y.size == bound
    assert not evaluated.test_sample.whole

    # Point figures: every row, as scikit-learn computes them on the full slice.
    y, p, r = (test_rows[c].to_numpy() for c in ("y", "p", "rank_score"))
    assert e.test.auc_roc == pytest.approx(auc_roc(y, r), abs=1e-9)
    assert e.test.brier == pytest.approx(brier_score(y, p), abs=1e-9)
    c = confusion_at(y, p, e.threshold.value)
    assert (e.confusion.tn, e.confusion.fp, e.confusion.fn, e.confusion.tp) == (
        c.tn, c.fp, c.fn, c.tp)
    assert evaluated.profit_per_loan == profit_at(y, p, e.threshold.value, 0.12, 0.6)

    # Intervals and threshold: the `bound` sampled loans (the same loans for every candidate).
    picked = sample_rows(test, bound, seed).toPandas().sort_values(KEY_COLUMN)
    assert len(picked) == bound
    assert picked[KEY_COLUMN].tolist() == sample_rows(
        _frame(spark, test_rows, 1), bound, seed).toPandas()[KEY_COLUMN].sort_values().tolist()
    ys, rs = picked["y"].to_numpy(), picked["rank_score"].to_numpy()
    boot = bootstrap_intervals(ys, rs, cfg.bootstrap_samples, seed)
    shrink = math.sqrt(bound / 6000)
    assert e.test.auc_roc_ci.low == pytest.approx(
        e.test.auc_roc - (auc_roc(ys, rs) - boot.auc_roc[0]) * shrink, abs=1e-12)
    assert e.test.auc_roc_ci.high == pytest.approx(
        e.test.auc_roc + (boot.auc_roc[1] - auc_roc(ys, rs)) * shrink, abs=1e-12)
    v = sample_rows(validation, bound, seed).toPandas().sort_values(KEY_COLUMN)
    expected_threshold, _ = scan_thresholds(v["y"].to_numpy(), v["p"].to_numpy(),
                                            cfg.threshold).best
    assert e.threshold.value == expected_threshold


def test_a_slice_within_the_bound_is_its_own_sample(spark: Any) -> None:
    from src.pipelines.evaluation.candidates import Candidate
    from src.pipelines.evaluation.slice_metrics import evaluate_candidate

    rows = _rows(1500, seed=8, ties=True)
    df = _frame(spark, rows)
    # Exactly as many loans as the bound: still the whole slice.
    cfg = EVALUATE.model_copy(update={"driver_sample_rows": 1500})
    evaluated = evaluate_candidate(Candidate("m", "model", df, df, "rows"), cfg, 2)
    e = evaluated.evaluation
    y, p, r = (rows[c].to_numpy() for c in ("y", "p", "rank_score"))
    assert evaluated.test_sample.whole
    # Point figures from the sample itself: scikit-learn's, on the rows in key order.
    assert (e.test.auc_roc, e.test.auc_pr, e.test.brier) == (
        auc_roc(y, r), average_precision(y, r), brier_score(y, p))
    boot = bootstrap_intervals(y, r, EVALUATE.bootstrap_samples, 2)
    # Exactly today's driver-side figures: the whole slice, in key order.
    assert (e.test.auc_roc_ci.low, e.test.auc_roc_ci.high) == boot.auc_roc
    assert (e.test.auc_pr_ci.low, e.test.auc_pr_ci.high) == boot.auc_pr
    assert e.test.sample_rows == e.test.rows == 1500
    assert e.threshold.value == scan_thresholds(y, p, EVALUATE.threshold).best[0]


def test_ranking_running_sums_are_parallel_and_exact(spark: Any) -> None:
    """The running sums behind AUC, AP and KS: per score bucket plus the buckets above, equal to
    a plain cumulative sum in score order, and with no single-partition step in the plan."""
    from src.pipelines.evaluation.point_metrics import cumulative_counts

    rng = np.random.default_rng(9)
    # Scores in few buckets and many, with ties, and the ends 0 and 1.
    scores = np.concatenate([rng.uniform(size=3000), np.round(rng.uniform(size=2000), 3), [0, 1]])
    groups = pd.DataFrame({"rank_score": scores, "pos": rng.integers(0, 3, scores.size),
                           "neg": rng.integers(0, 5, scores.size)}).groupby(
        "rank_score", as_index=False).sum()
    frame = spark.createDataFrame(groups).repartition(3)
    cumulative = cumulative_counts(frame)
    plan = cumulative._jdf.queryExecution().executedPlan().toString()
    assert "SinglePartition" not in plan, plan
    got = cumulative.select("rank_score", "tp", "fp").toPandas().sort_values(
        "rank_score", ascending=False)
    expected = groups.sort_values("rank_score", ascending=False)
    assert got["rank_score"].tolist() == expected["rank_score"].tolist()
    assert got["tp"].tolist() == expected["pos"].cumsum().tolist()
    assert got["fp"].tolist() == expected["neg"].cumsum().tolist()
