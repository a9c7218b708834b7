"""The model card of a registered version: Markdown built from the stage results, no free text
that could go stale (every number comes from a contract)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from src.contracts import (
    Evaluation,
    FetchResult,
    SegmentationModel,
    SegmentEvaluation,
    SliceMetrics,
    SplitResult,
    TrainedModel,
)
from src.core.calibration import Calibration

_DIGITS = 4


class ModelCardInput(BaseModel):
    """Everything the card states, gathered by the RegistryAgent."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    model_name: str
    version: str
    alias: str
    decision: str
    primary_metric: str
    score: float
    champion_score: float | None
    floor_reference: str | None = None
    floor_score: float | None = None
    floor_candidate_score: float | None = None
    min_delta: float = 0.0
    calibration: Calibration = Calibration(method="identity")
    previous_champion_version: str | None
    trained: TrainedModel
    evaluation: Evaluation
    evaluations: dict[str, Evaluation]
    features: list[str]
    dropped_features: list[str]
    segmentation: SegmentationModel
    test_segments: list[SegmentEvaluation]
    split: SplitResult | None
    fetch: FetchResult | None
    balance: bool
    train_data_sha256: str
    feature_spec_sha256: str
    git_commit: str | None
    onnx_max_abs_diff: float
    onnx_rows: int
    onnx_tolerance: float
    trained_at: datetime | None
    registered_at: datetime


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.{_DIGITS}f}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _year(date: str | None) -> int | None:
    return int(date[:4]) if date and date[:4].isdigit() else None


def _period(split: SplitResult | None) -> str:
    if split is None:
        return "unknown (no split result)"
    train, test = split.train_side, split.test_side
    return (
        f"train {train.first_issue_d} → {train.last_issue_d}, "
        f"test {test.first_issue_d} → {test.last_issue_d}"
    )


def _limits(card: ModelCardInput) -> list[str]:
    limits: list[str] = []
    if card.fetch is not None and card.fetch.source == "synthetic":
        limits.append(
            "**Synthetic data.** The training loans were generated "
            f"({card.fetch.origin}), not LendingClub records: the metrics say nothing about real "
            "borrowers. Do not use this version for decisions."
        )
    split = card.split
    if split is not None:
        first = _year(split.train_side.first_issue_d)
        last = _year(max(filter(None, [split.train_side.last_issue_d,
                                       split.test_side.last_issue_d]), default=None))
        if first is not None and last is not None:
            limits.append(
                f"Trained on loans issued {first}–{last} only: later vintages, rate regimes and "
                "LendingClub's later underwriting rules are not represented."
            )
        if split.method == "stratified":
            limits.append(
                "The test split is a random stratified sample of the same period, not a later "
                "period: the metrics are in-time, an out-of-time test would be lower."
            )
    limits.append(
        "The label exists only for loans that finished (Fully Paid vs Charged Off/Default); loans "
        "still open at export time were left out of training, which under-represents recent "
        "vintages."
    )
    limits.append(
        "Origination fields only (no payment history, no macroeconomic inputs); fields filled "
        "after issue are excluded by construction."
    )
    if card.balance and card.calibration.method == "identity":
        limits.append(
            "Classes were balanced in training and no calibration table was fitted, so scores "
            "rank well but overstate the default probability (calibration error on test: "
            f"{_f(card.evaluation.test.calibration_error)}); use the decision threshold above, "
            "not 0.5."
        )
    elif card.calibration.method != "identity":
        limits.append(
            f"Probabilities are calibrated by a {card.calibration.method} table fitted on the "
            f"{card.calibration.fitted_on or 'validation'} data ({card.calibration.rows:,} loans): "
            "validation calibration figures are in-sample; the test figures are not "
            f"(calibration error on test: {_f(card.evaluation.test.calibration_error)})."
        )
    limits.append(
        "Serving runs the ONNX export: calibrated probabilities differ from Spark's by at most "
        f"{card.onnx_max_abs_diff:.2e} on {card.onnx_rows:,} validation loans (a seeded sample "
        "of the slice)."
    )
    return limits


def _slice_row(m: SliceMetrics) -> str:
    return (
        f"{m.data} | {m.rows:,} | {_f(m.auc_roc)} [{_f(m.auc_roc_ci.low)}, "
        f"{_f(m.auc_roc_ci.high)}] | {_f(m.auc_pr)} [{_f(m.auc_pr_ci.low)}, "
        f"{_f(m.auc_pr_ci.high)}] | {_f(m.ks)} | {_f(m.gini)} | {_f(m.brier)} | "
        f"{_f(m.log_loss)} | {_f(m.calibration_error)}"
    )


def render_model_card(card: ModelCardInput) -> str:
    """The Markdown model card."""
    ev = card.evaluation
    trained = card.trained
    trained_at = card.trained_at.isoformat(timespec="seconds") if card.trained_at else "–"
    lines = [
        f"# {card.model_name} v{card.version} — {trained.name}",
        "",
        f"Alias at registration: **{card.alias}**. {card.decision}",
        "",
        "| | |",
        "|---|---|",
        f"| Registered | {card.registered_at.isoformat(timespec='seconds')} |",
        f"| Trained | {trained_at} |",
        f"| Source model | `{trained.name}` (MLflow run `{trained.run_id}`) |",
        f"| Git commit | `{card.git_commit or 'unknown'}` |",
        f"| Training data sha256 | `{card.train_data_sha256}` |",
        f"| Feature spec sha256 | `{card.feature_spec_sha256}` |",
        "",
        "## Intended use",
        "",
        "Probability that a LendingClub-style personal loan defaults (Charged Off/Default) given "
        "its origination fields; loans at or above the threshold are declined. A decision aid "
        "for analysts, not an automated credit decision.",
        "",
        "## Data",
        "",
    ]
    if card.fetch is not None:
        lines.append(f"- Source: {card.fetch.source} ({card.fetch.origin})")
    if card.split is not None:
        s = card.split
        lines += [
            f"- Split: {s.method}, seed {s.seed}"
            + (f", cut-off {s.time_cutoff}" if s.time_cutoff else ""),
            f"- Train: {s.train_side.rows:,} loans, {s.train_side.defaults:,} defaults "
            f"({_pct(s.train_side.default_share)})",
            f"- Test: {s.test_side.rows:,} loans, {s.test_side.defaults:,} defaults "
            f"({_pct(s.test_side.default_share)})",
        ]
    lines += [f"- Issue dates: {_period(card.split)}", ""]

    lines += [
        "## Features",
        "",
        f"{len(card.features)} model inputs from the feature spec (imputed with training "
        "medians, capped at training quantiles, standardized; categorical levels one-hot):",
        "",
        ", ".join(f"`{f}`" for f in card.features),
        "",
    ]
    if card.dropped_features:
        lines += [f"Dropped (empty in training): {', '.join(card.dropped_features)}", ""]

    lines += [
        "## Metrics",
        "",
        "The best model is chosen on the **validation** slice of the training split (the "
        "trainer's held-out rows); the **test** split is scored once and only reported. "
        "95% bootstrap intervals in brackets; ECE is the expected calibration error.",
        "",
        "| model | data | loans | AUC-ROC | AUC-PR | KS | Gini | Brier | log loss | ECE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in card.evaluations.items():
        mark = " **(this version)**" if name == trained.name else ""
        kind = " (reference)" if e.kind == "reference" else ""
        for m in (e.validation, e.test):
            if m is not None:
                lines.append(f"| {name}{kind}{mark} | {_slice_row(m)} |")
    floor = (
        f"Floor, evaluate's figures on the whole validation slice: this version "
        f"{_f(card.floor_candidate_score)}, the `{card.floor_reference}` reference "
        f"{_f(card.floor_score)} (a champion must beat it by min_delta {card.min_delta})."
        if card.floor_reference else "No floor reference."
    )
    lines += [
        "",
        f"Registry comparison on validation `{card.primary_metric}`, raw probabilities of this "
        "version's ONNX and of the previous champion's own bundle on the same "
        f"{card.onnx_rows:,} validation loans (a seeded sample of at most "
        "`register.parity_sample_rows`): "
        f"this version {_f(card.score)}; previous champion "
        + (
            f"v{card.previous_champion_version} {_f(card.champion_score)}"
            if card.previous_champion_version
            else "none"
        )
        + f". {floor}",
        "",
        "## Decision threshold",
        "",
        f"Decline when calibrated P(default) ≥ **{ev.threshold.value:.4f}** (rule "
        f"`{ev.threshold.rule}`, chosen on {ev.threshold.chosen_on}). On test: precision "
        f"{_f(ev.precision)}, recall {_f(ev.recall)}, F1 {_f(ev.f1)}; confusion tn "
        f"{ev.confusion.tn:,}, fp {ev.confusion.fp:,}, fn {ev.confusion.fn:,}, tp "
        f"{ev.confusion.tp:,}.",
        "",
        "## Risk segments",
        "",
        f"Serving segmentation: `{card.segmentation.name}`, k = {card.segmentation.k}.",
        "",
        "| band | train loans | train default rate | test loans | test default rate | "
        "mean predicted |",
        "|---|---|---|---|---|---|",
    ]
    test_by_band = {s.band: s for s in card.test_segments}
    for seg in card.segmentation.segments:
        t = test_by_band.get(seg.band)
        lines.append(
            f"| {seg.band} | {seg.size:,} | {_pct(seg.default_rate)} | "
            + (f"{t.size:,} | {_pct(t.default_rate)} | {_pct(t.mean_predicted)} |" if t else
               "– | – | – |")
        )
    lines += ["", "## Training", ""]
    lines += [f"- `{k}`: {v}" for k, v in sorted(trained.params.items())]
    lines += [
        f"- balanced classes: {card.balance}",
        f"- training time: {trained.train_seconds:.1f} s",
        f"- validation AUC-ROC {_f(trained.validation.auc_roc)}, AUC-PR "
        f"{_f(trained.validation.auc_pr)}",
        "",
        "## Export check",
        "",
        f"ONNX (spec in numpy + ONNX Runtime) vs Spark PipelineModel, both through the "
        f"{card.calibration.method} calibration table, on {card.onnx_rows:,} validation loans: "
        f"max |Δp| = {card.onnx_max_abs_diff:.2e} (tolerance {card.onnx_tolerance:.0e}).",
        "",
        "## Known limits",
        "",
    ]
    lines += [f"- {limit}" for limit in _limits(card)]
    return "\n".join(lines) + "\n"
