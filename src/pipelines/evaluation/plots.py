"""Evaluation charts (matplotlib, Agg): one PNG per question a reader asks of the models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from src.contracts import SegmentEvaluation
from src.core.metrics import (
    Confusion,
    Scored,
    average_precision,
    calibration_bins,
    pr_curve,
    roc_curve,
)
from src.core.thresholds import ThresholdScan
from src.utils.atomic import atomic_path

PLOT_DPI = 120
TOP_FEATURES = 15
ROC_FILE = "roc.png"
PR_FILE = "pr.png"
CALIBRATION_FILE = "calibration.png"
KS_FILE = "ks.png"
CONFUSION_FILE = "confusion.png"
IMPORTANCE_FILE = "feature_importance.png"
SEGMENT_FILE = "segment_risk.png"
THRESHOLD_FILE = "threshold.png"
# Wide enough for a legend beside a square-ish axis.
_FIGSIZE = (7.5, 6.0)
_RULE_LABELS = {
    "profit": "expected profit per loan (share of principal)",
    "f1": "F1 of the default class",
    "youden": "Youden's J (TPR − FPR)",
}
_REFERENCE_STYLE = "--"
_MODEL_STYLE = "-"


def _save(fig: Figure, target: Path) -> Path:
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=PLOT_DPI, format="png")
    plt.close(fig)
    return target


def _colours(names: Sequence[str]) -> dict[str, tuple[float, ...]]:
    cmap = plt.get_cmap("tab10")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _style(s: Scored) -> str:
    return _REFERENCE_STYLE if s.kind == "reference" else _MODEL_STYLE


def _label(s: Scored, value: float, metric: str) -> str:
    suffix = " (reference)" if s.kind == "reference" else ""
    return f"{s.name}{suffix}: {metric} {value:.3f}"


def plot_roc(scored: Sequence[Scored], aucs: Mapping[str, float], target: Path) -> Path:
    """ROC curves of every model and reference on one axis, AUC in the legend."""
    colours = _colours([s.name for s in scored])
    fig, ax = plt.subplots(figsize=_FIGSIZE)
    for s in scored:
        curve = roc_curve(s.y, s.p)
        ax.plot(curve.x, curve.y, _style(s), color=colours[s.name], linewidth=1.6,
                label=_label(s, aucs[s.name], "AUC"))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance: AUC 0.500")
    ax.set(xlabel="false-positive rate (repaid loans declined)",
           ylabel="true-positive rate (defaults declined)", xlim=(0, 1), ylim=(0, 1),
           title="ROC on the test split")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, target)


def plot_pr(scored: Sequence[Scored], target: Path) -> Path:
    """Precision–recall curves of every model and reference, with the default rate as chance."""
    colours = _colours([s.name for s in scored])
    fig, ax = plt.subplots(figsize=_FIGSIZE)
    for s in scored:
        curve = pr_curve(s.y, s.p)
        ax.plot(curve.x, curve.y, _style(s), color=colours[s.name], linewidth=1.6,
                label=_label(s, average_precision(s.y, s.p), "AP"))
    base = float(np.mean(scored[0].y))
    ax.axhline(base, linestyle=":", color="grey", label=f"chance: default rate {base:.3f}")
    ax.set(xlabel="recall (share of defaults caught)", ylabel="precision (defaults among declined)",
           xlim=(0, 1), ylim=(0, 1), title="Precision–recall on the test split")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, target)


def plot_calibration(scored: Sequence[Scored], bins: int, target: Path) -> Path:
    """Observed default rate against mean predicted probability per equal-width bin."""
    colours = _colours([s.name for s in scored])
    fig, ax = plt.subplots(figsize=_FIGSIZE)
    for s in scored:
        cal = calibration_bins(s.y, s.p, bins)
        ax.plot(cal.mean_predicted, cal.observed, _style(s), marker="o", markersize=4,
                color=colours[s.name], label=s.name)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    ax.set(xlabel="mean predicted probability of default", ylabel="observed default rate",
           xlim=(0, 1), ylim=(0, 1), title=f"Calibration on the test split ({bins} bins)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, target)


def plot_ks(s: Scored, target: Path) -> Path:
    """Score distributions (CDF) of defaults and repaid loans, and where they differ the most."""
    grid = np.unique(s.p)
    defaults = np.sort(s.p[s.y == 1])
    repaid = np.sort(s.p[s.y == 0])
    cdf_defaults = np.searchsorted(defaults, grid, side="right") / defaults.size
    cdf_repaid = np.searchsorted(repaid, grid, side="right") / repaid.size
    gap = cdf_repaid - cdf_defaults
    at = int(np.argmax(gap))
    fig, ax = plt.subplots(figsize=_FIGSIZE)
    ax.plot(grid, cdf_repaid, color="tab:green", label="repaid loans")
    ax.plot(grid, cdf_defaults, color="tab:red", label="defaulted loans")
    ax.vlines(grid[at], cdf_defaults[at], cdf_repaid[at], color="black", linewidth=2,
              label=f"KS {gap[at]:.3f} at p = {grid[at]:.3f}")
    ax.set(xlabel="predicted probability of default", ylabel="share of loans scored at most p",
           ylim=(0, 1), title=f"KS of {s.name} on the test split")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    return _save(fig, target)


def plot_confusion(name: str, confusion: Confusion, threshold: float, target: Path) -> Path:
    """The 2×2 decision table of `name` at its threshold: counts and share of all loans."""
    table = np.array([[confusion.tn, confusion.fp], [confusion.fn, confusion.tp]])
    total = table.sum()
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    ax.imshow(table, cmap="Blues")
    for (i, j), count in np.ndenumerate(table):
        colour = "white" if count > table.max() / 2 else "black"
        ax.text(j, i, f"{count:,}\n{count / total:.1%}", ha="center", va="center", fontsize=13,
                color=colour)
    ax.set_xticks([0, 1], ["approved", "declined"])
    ax.set_yticks([0, 1], ["repaid", "defaulted"])
    ax.set(xlabel=f"decision (decline when p ≥ {threshold:.3f})", ylabel="outcome",
           title=f"{name} on the test split: precision {confusion.precision:.2f}, "
           f"recall {confusion.recall:.2f}")
    return _save(fig, target)


def plot_importances(importances: Mapping[str, Mapping[str, float]], target: Path) -> Path:
    """Top feature importances of each tree model, one panel per model. Without a tree model the
    file still exists (DVC declares it), saying so."""
    names = list(importances)
    if not names:
        fig, ax = plt.subplots(figsize=(6.5, 2.0))
        ax.axis("off")
        ax.text(0.5, 0.5, "no tree model among the candidates: no impurity importances",
                ha="center", va="center")
        return _save(fig, target)
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 6.0), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        top = sorted(importances[name].items(), key=lambda kv: kv[1], reverse=True)[:TOP_FEATURES]
        labels = [k for k, _ in top][::-1]
        ax.barh(labels, [v for _, v in top][::-1], color="tab:blue")
        ax.set(xlabel="importance (share of impurity reduction)",
               title=f"{name}: top {len(top)} features")
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    return _save(fig, target)


def plot_segments(segments: Sequence[SegmentEvaluation], model: str, target: Path) -> Path:
    """Per risk band on the test split: observed default rate beside the model's mean prediction."""
    bands = [s.band for s in segments]
    x = np.arange(len(bands))
    width = 0.38
    total = sum(s.size for s in segments)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(bands)), 5.0))
    observed = ax.bar(x - width / 2, [100 * s.default_rate for s in segments], width,
                      color="tab:red", label="observed default rate")
    ax.bar(x + width / 2, [100 * s.mean_predicted for s in segments], width,
           color="tab:blue", label=f"mean predicted ({model})")
    for bar, s in zip(observed, segments, strict=True):
        ax.annotate(f"n={s.size:,} ({s.size / total:.0%})",
                    (bar.get_x() + width, max(bar.get_height(), 100 * s.mean_predicted)),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, bands)
    top = max(max(s.default_rate, s.mean_predicted) for s in segments)
    ax.set(xlabel="risk band (serving segmentation)", ylabel="percent",
           ylim=(0, 100 * top * 1.2), title="Risk bands on the test split")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    return _save(fig, target)


def plot_thresholds(scans: Mapping[str, ThresholdScan], target: Path) -> Path:
    """The threshold rule's objective on the validation slice, chosen threshold marked."""
    colours = _colours(list(scans))
    fig, ax = plt.subplots(figsize=_FIGSIZE)
    rule = next(iter(scans.values())).rule
    for name, scan in scans.items():
        best_t, best_v = scan.best
        ax.plot(scan.thresholds, scan.objective, color=colours[name], linewidth=1.4,
                label=f"{name}: {best_t:.3f}")
        ax.plot([best_t], [best_v], "o", color=colours[name])
    ax.set(xlabel="threshold (decline when p ≥ threshold)", ylabel=_RULE_LABELS.get(rule, rule),
           xlim=(0, 1), title=f"Threshold choice ({rule}) on the validation slice")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, target)
