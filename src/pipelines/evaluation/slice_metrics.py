"""The metrics of one candidate on one slice: point figures on every row (Spark, or scikit-learn
when the driver sample is the whole slice), bootstrap intervals and the threshold scan on the
driver sample (numpy / scikit-learn).

When the slice is larger than the sample, the sample's percentile interval is carried to the full
slice as an m-out-of-n bootstrap does: its deviations from the sample's own estimate, shrunk by
√(m/n), about the full-slice estimate. A slice within the bound is its own sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pyspark.sql import DataFrame

from src.contracts import ConfusionMatrix, Evaluation, Interval, SliceMetrics, ThresholdChoice
from src.core.metrics import auc_roc, average_precision, bootstrap_intervals, gini
from src.core.thresholds import ThresholdScan, profit_of_counts, scan_thresholds
from src.pipelines.evaluation.candidates import Candidate
from src.pipelines.evaluation.driver_sample import Sample, driver_sample
from src.pipelines.evaluation.point_metrics import (
    PointMetrics,
    driver_point_metrics,
    point_metrics,
)
from src.utils.config import EvaluateConfig


@dataclass(frozen=True)
class Evaluated:
    """A candidate's Evaluation and the driver-side pieces the plots read."""

    evaluation: Evaluation
    test_sample: Sample
    validation_scan: ThresholdScan
    profit_per_loan: float


def _interval(
    full: float, sample: float, bounds: tuple[float, float], m: int, n: int
) -> Interval:
    if m >= n:
        return Interval(low=bounds[0], high=bounds[1])
    shrink = math.sqrt(m / n)
    return Interval(low=full - (sample - bounds[0]) * shrink,
                    high=full + (bounds[1] - sample) * shrink)


def slice_metrics(
    points: PointMetrics, sample: Sample, data: Literal["validation", "test"],
    cfg: EvaluateConfig, seed: int,
) -> SliceMetrics:
    """Point figures of the whole slice, with 95% bootstrap intervals from its driver sample."""
    y, r = sample.scored.y, sample.rank
    # One seed for every candidate: the same resamples, so intervals compare like with like.
    boot = bootstrap_intervals(y, r, cfg.bootstrap_samples, seed)
    m, n = int(y.size), points.rows
    small = m >= n
    return SliceMetrics(
        data=data,
        rows=n,
        auc_roc=points.auc_roc,
        auc_roc_ci=_interval(points.auc_roc, 0.0 if small else auc_roc(y, r), boot.auc_roc, m, n),
        auc_pr=points.auc_pr,
        auc_pr_ci=_interval(points.auc_pr, 0.0 if small else average_precision(y, r),
                            boot.auc_pr, m, n),
        ks=points.ks,
        gini=gini(points.auc_roc),
        brier=points.brier,
        log_loss=points.log_loss,
        calibration_error=points.calibration_error,
        sample_rows=m,
    )


def _points(
    scored: DataFrame, sample: Sample, bins: int, threshold: float | None, what: str
) -> PointMetrics:
    """Point figures of every row: from the sample when it is the whole slice, else in Spark."""
    if sample.whole:
        return driver_point_metrics(sample.scored.y, sample.scored.p, sample.rank, bins,
                                    threshold, what)
    return point_metrics(scored, bins, threshold, what)


def evaluate_candidate(candidate: Candidate, cfg: EvaluateConfig, seed: int) -> Evaluated:
    """Validation metrics (selection) and test metrics (reported) of one candidate, at the
    threshold its validation sample chooses."""
    name, kind = candidate.name, candidate.kind
    validation_sample = driver_sample(candidate.validation, cfg.driver_sample_rows, seed, name,
                                      kind)
    scan = scan_thresholds(validation_sample.scored.y, validation_sample.scored.p, cfg.threshold)
    threshold, _ = scan.best
    validation_points = _points(candidate.validation, validation_sample, cfg.calibration_bins,
                                None, f"{name}'s validation slice")
    test_sample = driver_sample(candidate.test, cfg.driver_sample_rows, seed, name, kind)
    test_points = _points(candidate.test, test_sample, cfg.calibration_bins, threshold,
                          f"{name} on the test split")
    confusion = test_points.confusion
    assert confusion is not None  # a threshold was given
    evaluation = Evaluation(
        name=name,
        kind=kind,
        test=slice_metrics(test_points, test_sample, "test", cfg, seed),
        validation=slice_metrics(validation_points, validation_sample, "validation", cfg, seed),
        threshold=ThresholdChoice(rule=cfg.threshold.rule, value=threshold,
                                  chosen_on=candidate.chosen_on),
        precision=confusion.precision,
        recall=confusion.recall,
        f1=confusion.f1,
        confusion=ConfusionMatrix(tn=confusion.tn, fp=confusion.fp, fn=confusion.fn,
                                  tp=confusion.tp),
        calibrated=candidate.calibrated,
    )
    t = cfg.threshold
    profit = profit_of_counts(confusion.tn, confusion.fn, test_points.rows, t.margin,
                              t.loss_given_default)
    return Evaluated(evaluation=evaluation, test_sample=test_sample, validation_scan=scan,
                     profit_per_loan=profit)


def rows_by_source(evaluated: list[Evaluated]) -> dict[str, dict[str, int]]:
    """Rows of each slice on which the full-slice and the sample figures were computed."""
    out: dict[str, dict[str, int]] = {}
    for e in evaluated:
        for data, m in (("test", e.evaluation.test), ("validation", e.evaluation.validation)):
            if m is not None:
                out[data] = {"full_slice_rows": m.rows, "sample_rows": m.sample_rows or m.rows}
    return out
