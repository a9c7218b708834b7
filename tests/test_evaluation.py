"""Evaluation metrics and threshold rules against scikit-learn and hand-computed values."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from src.core.metrics import (
    _ap_from_groups,
    _auc_from_groups,
    _resampled_group_weights,
    _tie_groups,
    auc_roc,
    average_precision,
    bootstrap_intervals,
    brier_score,
    calibration_bins,
    confusion_at,
    expected_calibration_error,
    gini,
    ks_statistic,
    log_loss,
    pr_curve,
    roc_curve,
)
from src.core.thresholds import choose_threshold, profit_at, scan_thresholds
from src.utils.config import ThresholdConfig

PROFIT = ThresholdConfig(rule="profit", loss_given_default=0.6, margin=0.12)


def _sample(n: int, seed: int, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Labels with ~15% defaults and informative probabilities; rounded ones have many ties."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.15).astype(float)
    p = 1.0 / (1.0 + np.exp(-(rng.normal(size=n) + 1.2 * y - 1.8)))
    return y, np.round(p, 2) if ties else p


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_curves_agree_with_their_areas(seed: int, ties: bool) -> None:
    # The curves as the plots and KS read them: ROC from (0, 0), PR highest threshold first.
    y, p = _sample(3000, seed, ties)
    roc = roc_curve(y, p)
    assert (roc.x[0], roc.y[0], roc.x[-1], roc.y[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.trapezoid(roc.y, roc.x) == pytest.approx(auc_roc(y, p), abs=1e-12)
    pr = pr_curve(y, p)
    assert len(pr.x) == len(np.unique(p)) and pr.x[-1] == 1.0
    assert (np.diff(pr.x) >= 0).all()
    # Average precision is Σ (recall step) × precision along the curve.
    steps = np.diff(np.r_[0.0, pr.x])
    assert float(np.sum(steps * pr.y)) == pytest.approx(average_precision(y, p), abs=1e-12)
    assert ks_statistic(y, p) == pytest.approx(float(np.max(roc.y - roc.x)), abs=1e-12)


def test_probability_metrics() -> None:
    y, p = _sample(2000, 3)
    assert brier_score(y, p) == pytest.approx(float(np.mean((p - y) ** 2)), abs=1e-12)
    assert log_loss(y, p) == pytest.approx(
        float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))), abs=1e-12)
    # A certain, wrong forecast costs -ln(1e-15) (Spark's clipping too), not infinity.
    certain = log_loss(np.array([0.0, 1.0]), np.array([0.0, 0.0]))
    assert certain == pytest.approx(-np.log(1e-15) / 2)
    assert gini(0.75) == pytest.approx(0.5)


def test_serving_imports_no_scikit_learn() -> None:
    # The serving image has no scikit-learn: nothing it imports may pull in the metrics module.
    code = (
        "import sys\n"
        "import src.serving.app, src.serving.model_store, src.core.bundle, src.core.scorecard\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'pyspark'))\n"
        "assert not bad and 'src.core.metrics' not in sys.modules, bad[:5]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def test_hand_computed_small_case() -> None:
    y = np.array([0, 0, 1, 1, 0, 1], dtype=float)
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.8, 0.9])
    # Pairs (pos, neg): 9; pos 0.35 beats 0.1 only; 0.8 beats 0.1, 0.4 and ties 0.8; 0.9 beats all.
    assert auc_roc(y, p) == pytest.approx((1 + 2.5 + 3) / 9)
    c = confusion_at(y, p, 0.4)
    assert (c.tn, c.fp, c.fn, c.tp) == (1, 2, 1, 2)
    assert c.precision == pytest.approx(0.5) and c.recall == pytest.approx(2 / 3)
    assert c.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_calibration_error_by_hand() -> None:
    # Bins of width 0.5: [0.2, 0.4] observed 0.5 (gap 0.2); [0.6, 0.8, 0.9, 1.0] observed 0.75.
    y = np.array([0, 1, 1, 0, 1, 1], dtype=float)
    p = np.array([0.2, 0.4, 0.6, 0.8, 0.9, 1.0])
    cal = calibration_bins(y, p, 2)
    assert cal.count.tolist() == [2, 4]
    expected = (2 / 6) * abs(0.3 - 0.5) + (4 / 6) * abs(0.825 - 0.75)
    assert expected_calibration_error(y, p, 2) == pytest.approx(expected)
    # A perfectly calibrated constant forecast has no calibration error.
    assert expected_calibration_error(np.array([0, 0, 0, 1.0]), np.full(4, 0.25), 10) == 0.0


def test_confusion_matches_scikit_learn() -> None:
    y, p = _sample(1000, 4)
    c = confusion_at(y, p, 0.3)
    tn, fp, fn, tp = skm.confusion_matrix(y, p >= 0.3).ravel()
    assert (c.tn, c.fp, c.fn, c.tp) == (tn, fp, fn, tp)
    assert c.f1 == pytest.approx(skm.f1_score(y, p >= 0.3))


def test_bootstrap_is_seeded_contains_the_estimate_and_is_fast() -> None:
    y, p = _sample(8500, 5)
    started = time.perf_counter()
    boot = bootstrap_intervals(y, p, 500, seed=42)
    assert time.perf_counter() - started < 5.0
    assert boot == bootstrap_intervals(y, p, 500, seed=42)
    assert boot.auc_roc[0] < auc_roc(y, p) < boot.auc_roc[1]
    assert boot.auc_pr[0] < average_precision(y, p) < boot.auc_pr[1]
    # A ±2 standard-error band of AUC is roughly this wide at this size.
    assert 0.01 < boot.auc_roc[1] - boot.auc_roc[0] < 0.06


def test_bootstrap_resample_equals_an_explicit_resample() -> None:
    # Counting draws per tie group and class is the same as scoring the resampled rows.
    y, p = _sample(400, 6, ties=True)
    pos, neg = _resampled_group_weights(np.random.default_rng(9), _tie_groups(p), y, 3)
    draws = np.random.default_rng(9).integers(0, y.size, size=(3, y.size))
    for b, idx in enumerate(draws):
        assert _auc_from_groups(pos, neg)[b] == pytest.approx(skm.roc_auc_score(y[idx], p[idx]))
        assert _ap_from_groups(pos, neg)[b] == pytest.approx(
            skm.average_precision_score(y[idx], p[idx])
        )


def test_profit_threshold_is_the_brute_force_optimum() -> None:
    y, p = _sample(1500, 7)
    threshold, best = choose_threshold(y, p, PROFIT)
    brute = [profit_at(y, p, t, PROFIT.margin, PROFIT.loss_given_default) for t in np.unique(p)]
    assert best == pytest.approx(max(brute))
    at_threshold = profit_at(y, p, threshold, PROFIT.margin, PROFIT.loss_given_default)
    assert at_threshold == pytest.approx(best)


def test_profit_threshold_of_calibrated_probabilities_is_the_break_even() -> None:
    # Outcomes drawn from the probabilities themselves: declining pays once p·LGD > (1 − p)·margin.
    rng = np.random.default_rng(10)
    p = rng.beta(2.0, 8.0, size=40_000)
    y = (rng.random(p.size) < p).astype(float)
    threshold, _ = choose_threshold(y, p, PROFIT)
    break_even = PROFIT.margin / (PROFIT.margin + PROFIT.loss_given_default)
    assert threshold == pytest.approx(break_even, abs=0.03)


def test_profit_hand_case() -> None:
    # Approving loan i earns 0.12 if repaid, −0.6 if it defaults; best: decline p ≥ 0.5 only.
    y = np.array([0, 0, 0, 1, 1], dtype=float)
    p = np.array([0.1, 0.2, 0.3, 0.5, 0.9])
    threshold, best = choose_threshold(y, p, PROFIT)
    assert threshold == 0.5
    assert best == pytest.approx(3 * 0.12 / 5)


def test_f1_and_youden_match_scikit_learn_curves() -> None:
    y, p = _sample(2000, 8)
    f1_t, f1_best = choose_threshold(y, p, ThresholdConfig(rule="f1", loss_given_default=0.6,
                                                           margin=0.12))
    precision, recall, _ = skm.precision_recall_curve(y, p)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1s = np.nan_to_num(2 * precision * recall / (precision + recall))
    assert f1_best == pytest.approx(f1s.max())
    assert f1_best == pytest.approx(skm.f1_score(y, p >= f1_t))
    youden = scan_thresholds(y, p, ThresholdConfig(rule="youden", loss_given_default=0.6,
                                                   margin=0.12))
    fpr, tpr, _ = skm.roc_curve(y, p)
    assert youden.best[1] == pytest.approx(np.max(tpr - fpr))
    assert youden.best[1] == pytest.approx(ks_statistic(y, p))


def test_decline_nobody_is_a_candidate() -> None:
    # The one default scores lowest: any decline costs more than it saves, so approve every loan.
    y = np.array([0, 0, 0, 0, 0, 0, 1], dtype=float)
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.05])
    threshold, best = choose_threshold(y, p, PROFIT)
    assert threshold > p.max()
    assert confusion_at(y, p, threshold).tp + confusion_at(y, p, threshold).fp == 0
    assert best == pytest.approx((6 * 0.12 - 0.6) / 7)


def test_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="both classes"):
        auc_roc(np.zeros(5), np.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="within"):
        auc_roc(np.array([0, 1.0]), np.array([0.2, 1.2]))
    with pytest.raises(ValueError, match="length"):
        auc_roc(np.array([0, 1.0]), np.array([0.2]))


def test_an_evaluation_in_the_old_flat_layout_still_reads() -> None:
    # serving.json of versions registered before `test` was nested: the champion stays readable.
    from src.contracts import Evaluation

    flat = {
        "name": "gbt", "kind": "model", "auc_roc": 0.7, "auc_roc_ci": {"low": 0.68, "high": 0.72},
        "auc_pr": 0.3, "auc_pr_ci": {"low": 0.28, "high": 0.32}, "ks": 0.3, "gini": 0.4,
        "brier": 0.12, "log_loss": 0.4, "calibration_error": 0.01,
        "threshold": {"rule": "profit", "value": 0.2, "chosen_on": "validation"},
        "precision": 0.3, "recall": 0.5, "f1": 0.37,
        "confusion": {"tn": 50, "fp": 20, "fn": 10, "tp": 20}, "validation": None,
    }
    e = Evaluation.model_validate(flat)
    assert e.test.data == "test" and e.test.rows == 100
    assert (e.test.auc_roc, e.test.auc_pr_ci.high, e.test.calibration_error) == (0.7, 0.32, 0.01)
    assert Evaluation.model_validate_json(e.model_dump_json()) == e
