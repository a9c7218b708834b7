"""What evaluate writes: reports/metrics.json (flat numbers by model and data set) and the plots."""

from __future__ import annotations

from pathlib import Path

from src.contracts import Evaluation, SegmentEvaluation, SliceMetrics
from src.core.metrics import Confusion
from src.pipelines.evaluation import plots
from src.pipelines.evaluation.candidates import Candidate
from src.pipelines.evaluation.selection import SELECTED_ON
from src.pipelines.evaluation.slice_metrics import Evaluated
from src.utils.atomic import atomic_write_json
from src.utils.config import EvaluateConfig

BEST_MODEL_KEY = "best_model"
PRIMARY_METRIC_KEY = "primary_metric"
SELECTED_ON_KEY = "selected_on"
SEGMENTS_KEY = "segments"


def _flat_slice(m: SliceMetrics) -> dict[str, float]:
    return {
        "rows": m.rows,
        "auc_roc": m.auc_roc,
        "auc_roc_low": m.auc_roc_ci.low,
        "auc_roc_high": m.auc_roc_ci.high,
        "auc_pr": m.auc_pr,
        "auc_pr_low": m.auc_pr_ci.low,
        "auc_pr_high": m.auc_pr_ci.high,
        "ks": m.ks,
        "gini": m.gini,
        "brier": m.brier,
        "log_loss": m.log_loss,
        "calibration_error": m.calibration_error,
        "sample_rows": m.sample_rows if m.sample_rows is not None else m.rows,
    }


def flat_metrics(evaluation: Evaluation, profit_per_loan: float) -> dict[str, dict[str, float]]:
    """The numbers of one evaluation by data set, `validation` and `test` (metrics.json, MLflow).

    The threshold is chosen on validation; the decision figures at it are on test.
    """
    test = {
        **_flat_slice(evaluation.test),
        "threshold": evaluation.threshold.value,
        "precision": evaluation.precision,
        "recall": evaluation.recall,
        "f1": evaluation.f1,
        "profit_per_loan": profit_per_loan,
        **evaluation.confusion.model_dump(),
    }
    v = evaluation.validation
    validation = {} if v is None else {**_flat_slice(v), "threshold": evaluation.threshold.value}
    return {"validation": validation, "test": test}


def write_metrics(
    target: Path, flat: dict[str, dict[str, dict[str, float]]], best: str, primary_metric: str,
    segments: list[SegmentEvaluation],
) -> None:
    """reports/metrics.json, atomically."""
    atomic_write_json(target, {
        **flat,
        BEST_MODEL_KEY: best,
        PRIMARY_METRIC_KEY: primary_metric,
        SELECTED_ON_KEY: SELECTED_ON,
        SEGMENTS_KEY: {s.band: s.model_dump(exclude={"band"}) for s in segments},
    })


def write_plots(
    folder: Path, candidates: list[Candidate], evaluated: dict[str, Evaluated], best: str,
    segments: list[SegmentEvaluation], cfg: EvaluateConfig,
) -> list[Path]:
    """Curves of the test samples, the best model's confusion on the whole test split, the
    threshold scans of the validation samples, importances and segments."""
    tests = [evaluated[c.name].test_sample.scored for c in candidates]
    best_eval = evaluated[best].evaluation
    c = best_eval.confusion
    paths = [
        plots.plot_roc(tests, {n: e.evaluation.test.auc_roc for n, e in evaluated.items()},
                       folder / plots.ROC_FILE),
        plots.plot_pr(tests, folder / plots.PR_FILE),
        plots.plot_calibration(tests, cfg.calibration_bins, folder / plots.CALIBRATION_FILE),
        plots.plot_ks(evaluated[best].test_sample.scored, folder / plots.KS_FILE),
        plots.plot_confusion(best, Confusion(tn=c.tn, fp=c.fp, fn=c.fn, tp=c.tp),
                             best_eval.threshold.value, folder / plots.CONFUSION_FILE),
        plots.plot_thresholds({n: e.validation_scan for n, e in evaluated.items()},
                              folder / plots.THRESHOLD_FILE),
    ]
    importances = {c.name: c.importances for c in candidates if c.importances is not None}
    paths.append(plots.plot_importances(importances, folder / plots.IMPORTANCE_FILE))
    if segments:
        paths.append(plots.plot_segments(segments, best, folder / plots.SEGMENT_FILE))
    return paths
