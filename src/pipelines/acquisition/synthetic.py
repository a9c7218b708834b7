"""Synthetic LendingClub loans in the raw Kaggle layout, calibrated on aggregates of the real data.

`calibrate` turns the real 2007-2011 sample into aggregate statistics (marginals, a Gaussian copula,
a logistic default model, servicing ratios); `write_synthetic_loans` streams loans drawn from them.
No row of the real sample is ever copied: only quantiles, shares, correlations and coefficients.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit, ndtr, ndtri

from src.core.raw_schema import DEFAULT_STATUSES, PAID_STATUSES, RAW_COLUMNS
from src.utils.atomic import atomic_path
from src.utils.logging import get_logger

log = get_logger(component="synthetic")

CALIBRATION_PATH = Path(__file__).with_name("synthetic_calibration.json")
CALIBRATION_VERSION = 1
_GZIP_LEVEL = 1  # compression dominated the run time at level 6 for a file only ~25% smaller
_DNMCP_PREFIX = "Does not meet the credit policy. Status:"
_PAID, _CHARGED = "Fully Paid", "Charged Off"
# LendingClub offers exactly two terms; the raw file spells them " 36 months" / " 60 months".
_SHORT_TERM, _LONG_TERM = 36, 60

# Gaussian-copula variables, drawn jointly so that e.g. grade, term, rate and dti stay correlated.
COPULA_VARS: tuple[str, ...] = (
    "issue_month",
    "sub_grade_ordinal",
    "term_60",
    "loan_amnt",
    "log_annual_inc",
    "dti",
    "revol_util",
    "log_revol_bal",
    "open_acc",
    "extra_acc",
    "inq_last_6mths",
    "delinq_2yrs",
    "pub_rec",
    "credit_history_months",
)
_DISCRETE_VARS = frozenset(
    {
        "issue_month",
        "sub_grade_ordinal",
        "term_60",
        "open_acc",
        "inq_last_6mths",
        "delinq_2yrs",
        "pub_rec",
    }
)
_INTEGER_VARS = frozenset({"extra_acc", "credit_history_months"})
MODEL_NUMERIC: tuple[str, ...] = (
    "sub_grade_ordinal",
    "int_rate",
    "term_60",
    "log_annual_inc",
    "dti",
    "loan_to_income",
    "revol_util",
    "log_revol_bal",
    "inq_last_6mths",
    "delinq_2yrs",
    "pub_rec",
    "open_acc",
    "total_acc",
    "credit_history_months",
    "emp_length_years",
    "emp_length_missing",
    "log_loan_amnt",
)
MODEL_CATEGORICAL: tuple[str, ...] = ("home_ownership", "verification_status", "purpose")
CATEGORICAL_MARGINS: tuple[str, ...] = (
    "emp_length",
    "home_ownership",
    "verification_status",
    "purpose",
    "addr_state",
)
# Columns generated explicitly; every other column is a sample-wide constant or empty.
_GENERATED = frozenset(
    {
        "id",
        "loan_amnt",
        "funded_amnt",
        "funded_amnt_inv",
        "term",
        "int_rate",
        "installment",
        "grade",
        "sub_grade",
        "emp_title",
        "emp_length",
        "home_ownership",
        "annual_inc",
        "verification_status",
        "issue_d",
        "loan_status",
        "url",
        "desc",
        "purpose",
        "title",
        "zip_code",
        "addr_state",
        "dti",
        "delinq_2yrs",
        "earliest_cr_line",
        "fico_range_low",
        "fico_range_high",
        "inq_last_6mths",
        "mths_since_last_delinq",
        "mths_since_last_record",
        "open_acc",
        "pub_rec",
        "revol_bal",
        "revol_util",
        "total_acc",
        "out_prncp",
        "out_prncp_inv",
        "total_pymnt",
        "total_pymnt_inv",
        "total_rec_prncp",
        "total_rec_int",
        "total_rec_late_fee",
        "recoveries",
        "collection_recovery_fee",
        "last_pymnt_d",
        "last_pymnt_amnt",
        "next_pymnt_d",
        "last_credit_pull_d",
        "last_fico_range_high",
        "last_fico_range_low",
        "pub_rec_bankruptcies",
        "debt_settlement_flag",
        "debt_settlement_flag_date",
        "settlement_status",
        "settlement_date",
        "settlement_amount",
        "settlement_percentage",
        "settlement_term",
    }
)
# One independent random stream per draw, each consumed by exactly `n` rows per chunk: the file
# is then identical whatever chunk_rows is. (name, uniforms per row; 0 means normals, see below)
_UNIFORM_STREAMS: dict[str, int] = {
    "cat": len(CATEGORICAL_MARGINS),
    "zip": 1,
    "emp_title": 2,
    "desc": 2,
    "funded": 2,
    "history": 6,
    "default": 1,
    "status": 3,
    "months": 1,
    "recovery": 3,
    "late_fee": 2,
    "pull": 1,
    "settlement": 4,
    "na": 1,
}
_NORMAL_STREAMS: dict[str, int] = {"copula": len(COPULA_VARS), "rate": 1, "fico": 2, "noise": 1}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class DesignSettings:
    """Generator choices the 2007-2011 sample cannot provide (it has no FICO, ids or open loans)."""

    target_auc: float = 0.72  # README: honest models on the real data reach about 0.68-0.73
    unresolved_share: float = 0.02
    unresolved_mix: dict[str, float] = field(
        default_factory=lambda: {
            "Current": 0.7,
            "In Grace Period": 0.08,
            "Late (16-30 days)": 0.05,
            "Late (31-120 days)": 0.17,
        }
    )
    unresolved_max_term_frac: float = 0.9
    na_emp_length_share: float = 0.5  # of empty emp_length written as "n/a" in percent-string mode
    fico_low_min: int = 660
    fico_low_max: int = 845
    fico_step: int = 5
    fico_span: int = 4
    fico_mean_best: float = 765.0  # mean FICO of sub_grade A1
    fico_mean_worst: float = 680.0  # mean FICO of sub_grade G5
    fico_sd: float = 18.0
    last_fico_min: int = 500
    last_fico_shift_paid: float = 10.0
    last_fico_sd_paid: float = 35.0
    last_fico_shift_default: float = -110.0
    last_fico_sd_default: float = 60.0
    loan_amnt_step: int = 25
    id_start: int = 1077501
    url_template: str = "https://lendingclub.com/browse/loanDetail.action?loan_id={id}"
    footer_template: str = "Total amount funded in policy code {code}: {amount}"
    desc_templates: tuple[str, ...] = (
        "  Borrower added on {date} > I want to consolidate my debt, and pay it off sooner.<br>",
        '  Borrower added on {date} > Paying off "high interest" cards.\nThank you',
        "  Borrower added on {date} > Home repairs; stable job for years.<br>",
    )
    sim_rows: int = 100_000
    sim_seed: int = 20240601


# ----------------------------------------------------------------------------- calibration


def _month_index(values: Any) -> np.ndarray:
    """'Dec-2011' -> year*12 + month-1 (NaN when empty)."""
    import pandas as pd

    parsed = pd.to_datetime(pd.Series(values), format="%b-%Y", errors="coerce")
    return (parsed.dt.year * 12 + parsed.dt.month - 1).to_numpy(dtype=float)


def _emp_years(values: np.ndarray) -> np.ndarray:
    """'10+ years' -> 10, '< 1 year' -> 0, '3 years' -> 3, ''/'n/a' -> NaN."""
    out = np.full(len(values), np.nan)
    for label in set(values.tolist()):
        digits = "".join(ch for ch in str(label) if ch.isdigit())
        years = 0.0 if str(label).startswith("<") else (float(digits) if digits else np.nan)
        out[values == label] = years
    return out


def _quantile_margin(x: np.ndarray, points: int) -> dict[str, Any]:
    """Quantiles on an inner grid: the extreme values of single loans are never stored."""
    x = x[np.isfinite(x)]
    edge = 1.0 / (points + 1)
    probs = np.linspace(edge, 1.0 - edge, points)
    return {
        "kind": "continuous",
        "probs": _round(probs, 6),
        "quantiles": _round(np.quantile(x, probs), 4),
    }


def _discrete_margin(x: np.ndarray, min_count: int) -> dict[str, Any]:
    """Value frequencies; values rarer than `min_count` are pooled into the next lower value."""
    values, counts = np.unique(x[np.isfinite(x)], return_counts=True)
    kept_v: list[float] = []
    kept_c: list[int] = []
    carry = 0
    for v, c in zip(values[::-1], counts[::-1], strict=True):
        carry += int(c)
        if carry >= min_count:
            kept_v.append(float(v))
            kept_c.append(carry)
            carry = 0
    if carry and kept_c:
        kept_c[-1] += carry
    v_arr, c_arr = np.array(kept_v[::-1]), np.array(kept_c[::-1], dtype=float)
    return {
        "kind": "discrete",
        "values": _round(v_arr, 4),
        "cdf": _round(np.cumsum(c_arr) / c_arr.sum(), 8),
    }


def _frequencies(values: Sequence[str], min_count: int) -> dict[str, float]:
    """Category shares, dropping categories rarer than `min_count` (renormalised)."""
    uniq, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
    keep = counts >= min_count
    total = counts[keep].sum()
    return {
        str(u): round(float(c) / float(total), 8)
        for u, c in zip(uniq[keep], counts[keep], strict=True)
    }


def _round(x: np.ndarray, digits: int) -> list[float]:
    return [round(float(v), digits) for v in np.asarray(x, dtype=float)]


def _normal_scores(x: np.ndarray) -> np.ndarray:
    """Gaussian-copula scores from average ranks."""
    from scipy.stats import rankdata

    return ndtri(rankdata(x) / (len(x) + 1.0))


def _load_sample(sample_path: Path) -> Any:
    import pandas as pd

    df = pd.read_csv(sample_path, dtype=str, keep_default_na=False, low_memory=False)
    # The Kaggle layout leaves an unknown employment length empty; other exports write "n/a".
    df["emp_length"] = df["emp_length"].replace("n/a", "")
    return df[df["loan_status"].isin(DEFAULT_STATUSES | PAID_STATUSES)].reset_index(drop=True)


def _num(df: Any, col: str) -> np.ndarray:
    import pandas as pd

    return pd.to_numeric(df[col].str.rstrip("%").str.strip(), errors="coerce").to_numpy(dtype=float)


def _sample_columns(df: Any, sub_grades: list[str]) -> dict[str, np.ndarray]:
    """The sample's origination values, in the shape the generator produces them."""
    issue = _month_index(df["issue_d"])
    earliest = _month_index(df["earliest_cr_line"])
    open_acc, total_acc = _num(df, "open_acc"), _num(df, "total_acc")
    rank = {sg: i for i, sg in enumerate(sub_grades)}
    return {
        "issue_month": issue,
        "sub_grade_ordinal": df["sub_grade"].map(rank).to_numpy(dtype=float),
        "term_60": (df["term"].str.strip().str.startswith(str(_LONG_TERM))).to_numpy(dtype=float),
        "term_months": np.where(
            df["term"].str.strip().str.startswith(str(_LONG_TERM)), _LONG_TERM, _SHORT_TERM
        ).astype(float),
        "loan_amnt": _num(df, "loan_amnt"),
        "funded_amnt": _num(df, "funded_amnt"),
        "funded_amnt_inv": _num(df, "funded_amnt_inv"),
        "int_rate": _num(df, "int_rate"),
        "annual_inc": _num(df, "annual_inc"),
        "log_annual_inc": np.log(_num(df, "annual_inc")),
        "dti": _num(df, "dti"),
        "revol_util": _num(df, "revol_util"),
        "revol_bal": _num(df, "revol_bal"),
        "log_revol_bal": np.log1p(_num(df, "revol_bal")),
        "open_acc": open_acc,
        "total_acc": total_acc,
        "extra_acc": total_acc - open_acc,
        "inq_last_6mths": _num(df, "inq_last_6mths"),
        "delinq_2yrs": _num(df, "delinq_2yrs"),
        "pub_rec": _num(df, "pub_rec"),
        "credit_history_months": issue - earliest,
        "emp_length_years": _emp_years(df["emp_length"].to_numpy(dtype=str)),
        "home_ownership": df["home_ownership"].to_numpy(dtype=str),
        "verification_status": df["verification_status"].to_numpy(dtype=str),
        "purpose": df["purpose"].to_numpy(dtype=str),
    }


def _raw_features(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Numeric model inputs derived identically from sample and synthetic columns."""
    return {
        "sub_grade_ordinal": cols["sub_grade_ordinal"],
        "int_rate": cols["int_rate"],
        "term_60": cols["term_60"],
        "log_annual_inc": cols["log_annual_inc"],
        "dti": cols["dti"],
        "loan_to_income": cols["loan_amnt"] / np.exp(cols["log_annual_inc"]),
        "revol_util": cols["revol_util"],
        "log_revol_bal": cols["log_revol_bal"],
        "inq_last_6mths": cols["inq_last_6mths"],
        "delinq_2yrs": cols["delinq_2yrs"],
        "pub_rec": cols["pub_rec"],
        "open_acc": cols["open_acc"],
        "total_acc": cols["open_acc"] + cols["extra_acc"],
        "credit_history_months": cols["credit_history_months"],
        "emp_length_years": np.nan_to_num(cols["emp_length_years"], nan=0.0),
        "emp_length_missing": np.isnan(cols["emp_length_years"]).astype(float),
        "log_loan_amnt": np.log(cols["loan_amnt"]),
    }


def _design_matrix(
    cols: dict[str, np.ndarray], model: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Standardised numeric + one-hot categorical matrix, and the coefficient vector."""
    raw = _raw_features(cols)
    blocks, coefs = [], []
    for spec in model["numeric"]:
        x = np.where(np.isfinite(raw[spec["name"]]), raw[spec["name"]], spec["fill"])
        blocks.append((x - spec["mean"]) / spec["std"])
        coefs.append(spec["coef"])
    for name in MODEL_CATEGORICAL:
        for level, coef in model["categorical"][name].items():
            blocks.append((cols[name] == level).astype(float))
            coefs.append(coef)
    return np.column_stack(blocks), np.asarray(coefs)


def _fit_default_model(
    cols: dict[str, np.ndarray], y: np.ndarray, min_count: int
) -> dict[str, Any]:
    """Regularised logistic regression on origination features of the real sample."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict

    raw = _raw_features(cols)
    numeric = []
    for name in MODEL_NUMERIC:
        x = raw[name]
        fill = float(np.nanmedian(x))
        x = np.where(np.isfinite(x), x, fill)
        numeric.append(
            {"name": name, "mean": float(x.mean()), "std": float(x.std() or 1.0), "fill": fill}
        )
    levels = {n: sorted(_frequencies(cols[n], min_count)) for n in MODEL_CATEGORICAL}
    spec = {
        "numeric": [{**s, "coef": 0.0} for s in numeric],
        "categorical": {n: dict.fromkeys(lv, 0.0) for n, lv in levels.items()},
    }
    x, _ = _design_matrix(cols, spec)
    lr = LogisticRegression(C=1.0, max_iter=5000)
    cv_scores = cross_val_predict(lr, x, y, cv=5, method="decision_function")
    lr.fit(x, y)
    coef = iter(lr.coef_[0].tolist())
    for s in spec["numeric"]:
        s["coef"] = round(next(coef), 6)
        s["mean"], s["std"], s["fill"] = (
            round(s["mean"], 6),
            round(s["std"], 6),
            round(s["fill"], 6),
        )
    for name in MODEL_CATEGORICAL:
        spec["categorical"][name] = {lv: round(next(coef), 6) for lv in spec["categorical"][name]}
    spec["intercept"] = round(float(lr.intercept_[0]), 6)
    spec["real_cv_auc"] = round(float(roc_auc_score(y, cv_scores)), 4)
    return spec


def _copula(cols: dict[str, np.ndarray]) -> list[list[float]]:
    """Correlation of normal scores over complete rows, projected to positive definite."""
    data = np.column_stack([cols[v] for v in COPULA_VARS])
    data = data[np.isfinite(data).all(axis=1)]
    scores = np.column_stack([_normal_scores(data[:, j]) for j in range(data.shape[1])])
    corr = np.corrcoef(scores, rowvar=False)
    vals, vecs = np.linalg.eigh(corr)
    corr = vecs @ np.diag(np.clip(vals, 1e-4, None)) @ vecs.T
    d = np.sqrt(np.diag(corr))
    return [_round(row, 4) for row in corr / np.outer(d, d)]


def _servicing(
    df: Any, cols: dict[str, np.ndarray], y: np.ndarray, q: int, mc: int
) -> dict[str, Any]:
    """Outcome-dependent repayment ratios: how much was paid, recovered and when."""
    term = cols["term_months"]
    funded = cols["funded_amnt"]
    last_pay = _month_index(df["last_pymnt_d"])
    pull = _month_index(df["last_credit_pull_d"])
    frac = (last_pay - cols["issue_month"]) / term
    rec, fee = _num(df, "recoveries"), _num(df, "collection_recovery_fee")
    late = _num(df, "total_rec_late_fee")
    left = funded - _num(df, "total_rec_prncp")
    d = y == 1
    has_rec = d & (rec > 0) & (left > 0)
    settled = df["debt_settlement_flag"].to_numpy(dtype=str) == "Y"
    settle_pct = _num(df, "settlement_percentage")
    settle_gap = _month_index(df["settlement_date"]) - last_pay
    out: dict[str, Any] = {
        "paid_term_frac": _quantile_margin(np.clip(frac[~d], 0.0, 1.0), q),
        "default_term_frac": _quantile_margin(np.clip(frac[d], 0.0, 1.0), q),
        "default_no_payment_share": round(float(np.isnan(last_pay[d]).mean()), 6),
        "recovery_share": round(float(has_rec.sum() / d.sum()), 6),
        "recovery_frac": _quantile_margin(np.clip(rec[has_rec] / left[has_rec], 0.0, 1.0), q),
        "collection_fee_ratio": _quantile_margin(fee[has_rec] / rec[has_rec], q),
        "snapshot_month": int(np.nanmax(pull)),
    }
    for label, mask in (("paid", ~d), ("default", d)):
        out[f"late_fee_share_{label}"] = round(float((late[mask] > 0).mean()), 6)
        out[f"late_fee_{label}"] = _quantile_margin(late[mask & (late > 0)], q)
        gap = pull[mask] - last_pay[mask]
        out[f"pull_gap_{label}"] = _quantile_margin(np.clip(gap, 0.0, None), q)
    out["settlement_share_default"] = round(float(settled[d].sum() / d.sum()), 6)
    out["settlement_percentage"] = _quantile_margin(settle_pct[settled], q)
    out["settlement_gap"] = _quantile_margin(np.clip(settle_gap[settled], 0.0, None), q)
    out["settlement_status"] = _frequencies(
        df["settlement_status"].to_numpy(dtype=str)[settled], mc
    )
    out["funded_ratio"] = _quantile_margin(funded / cols["loan_amnt"], q)
    out["funded_inv_ratio"] = _quantile_margin(
        np.clip(cols["funded_amnt_inv"] / funded, 0.0, 1.0), q
    )
    return out


def _history(df: Any, cols: dict[str, np.ndarray], q: int) -> dict[str, Any]:
    """Derogatory-history columns that depend on delinq_2yrs / pub_rec."""
    delinq = _num(df, "mths_since_last_delinq")
    record = _num(df, "mths_since_last_record")
    bankr = _num(df, "pub_rec_bankruptcies")
    recent = cols["delinq_2yrs"] > 0
    has_pub = cols["pub_rec"] > 0
    return {
        "delinq_hist_share_clean": round(float(np.isfinite(delinq[~recent]).mean()), 6),
        "mths_since_delinq_recent": _quantile_margin(delinq[recent], q),
        "mths_since_delinq_old": _quantile_margin(delinq[~recent], q),
        "record_share_pub": round(float(np.isfinite(record[has_pub]).mean()), 6),
        "record_share_clean": round(float(np.isfinite(record[~has_pub]).mean()), 6),
        "mths_since_record": _quantile_margin(record, q),
        "bankruptcy_share_pub": round(float((bankr[has_pub] > 0).mean()), 6),
        "bankruptcy_missing_share": round(float(np.isnan(bankr).mean()), 6),
    }


def _texts(df: Any, min_count: int) -> dict[str, Any]:
    """Common (never individual) free-text values: employer titles, the usual title per purpose."""
    emp = df["emp_title"].to_numpy(dtype=str)
    titles = {}
    for purpose, group in df.groupby("purpose")["title"]:
        counts = group[group != ""].value_counts()
        titles[str(purpose)] = str(counts.index[0]) if len(counts) else str(purpose)
    zips: dict[str, dict[str, float]] = {}
    for state, group in df.groupby("addr_state")["zip_code"]:
        counts = group.value_counts()
        kept = counts[counts >= min_count]
        kept = kept if len(kept) else counts.iloc[:1]
        zips[str(state)] = {str(z): round(float(c) / float(kept.sum()), 8) for z, c in kept.items()}
    return {
        "emp_title_share": round(float((emp != "").mean()), 6),
        "emp_title": _frequencies(emp[emp != ""], min_count * 5),
        "title_by_purpose": titles,
        "desc_share": round(float((df["desc"].to_numpy(dtype=str) != "").mean()), 6),
        "zip_by_state": zips,
    }


def _constants(df: Any) -> dict[str, str]:
    """Columns that hold one value on (almost) every loan: repeated as such."""
    out = {}
    for col in RAW_COLUMNS:
        if col in _GENERATED:
            continue
        counts = df[col].value_counts()
        if len(counts) and counts.index[0] != "" and counts.iloc[0] >= 0.99 * len(df):
            out[col] = str(counts.index[0])
    return out


def _rate_by_sub_grade(
    cols: dict[str, np.ndarray], sub_grades: list[str]
) -> dict[str, dict[str, float]]:
    out = {}
    for i, sg in enumerate(sub_grades):
        r = cols["int_rate"][cols["sub_grade_ordinal"] == i]
        out[sg] = {
            "mean": round(float(r.mean()), 4),
            "std": round(float(r.std()), 4),
            "p01": round(float(np.quantile(r, 0.01)), 2),
            "p99": round(float(np.quantile(r, 0.99)), 2),
        }
    return out


def _describe(
    df: Any, cols: dict[str, np.ndarray], y: np.ndarray, sub_grades: list[str]
) -> dict[str, Any]:
    """Reference figures (not used to generate): default share by sub_grade and term."""
    by_sg = {
        sg: round(float(y[cols["sub_grade_ordinal"] == i].mean()), 6)
        for i, sg in enumerate(sub_grades)
    }
    by_term = {
        str(t): round(float(y[cols["term_months"] == t].mean()), 6)
        for t in (_SHORT_TERM, _LONG_TERM)
    }
    statuses = df["loan_status"].value_counts(normalize=True)
    return {
        "default_share_by_sub_grade": by_sg,
        "default_share_by_term": by_term,
        "status_shares": {str(k): round(float(v), 6) for k, v in statuses.items()},
    }


def calibrate(
    sample_path: Path,
    design: DesignSettings | None = None,
    quantile_points: int = 99,
    min_count: int = 10,
) -> dict[str, Any]:
    """Aggregate statistics of the real sample that drive the generator (no row is kept)."""
    design = design or DesignSettings()
    df = _load_sample(Path(sample_path))
    y = df["loan_status"].isin(DEFAULT_STATUSES).to_numpy(dtype=int)
    sub_grades = sorted(df["sub_grade"].unique().tolist())
    cols = _sample_columns(df, sub_grades)
    margins = {
        v: (
            _discrete_margin(cols[v], min_count)
            if v in _DISCRETE_VARS
            else _quantile_margin(cols[v], quantile_points)
        )
        for v in COPULA_VARS
    }
    dnmcp = df["loan_status"].str.startswith(_DNMCP_PREFIX).to_numpy()
    cal: dict[str, Any] = {
        "version": CALIBRATION_VERSION,
        "source": {"file": Path(sample_path).name, "loans": len(df)},
        "default_share": round(float(y.mean()), 6),
        "dnmcp_share": round(float(dnmcp.mean()), 6),
        "sub_grades": sub_grades,
        "int_rate_by_sub_grade": _rate_by_sub_grade(cols, sub_grades),
        "margins": margins,
        "integer_vars": sorted(_DISCRETE_VARS | _INTEGER_VARS),
        "copula_vars": list(COPULA_VARS),
        "copula_corr": _copula(cols),
        "categorical": {
            c: _frequencies(df[c].to_numpy(dtype=str), min_count) for c in CATEGORICAL_MARGINS
        },
        "history": _history(df, cols, quantile_points),
        "servicing": _servicing(df, cols, y, quantile_points, min_count),
        "texts": _texts(df, min_count),
        "constants": _constants(df),
        "default_model": _fit_default_model(cols, y, min_count),
        "reference": _describe(df, cols, y, sub_grades),
        "design": {**asdict(design), "desc_templates": list(design.desc_templates)},
    }
    cal["default_model"].update(_tune_latent(cal, design))
    return cal


def _expected_default(
    logit: np.ndarray, sd: float, nodes: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """E[sigmoid(logit + sd*e)], e ~ N(0, 1), by Gauss-Hermite quadrature."""
    return expit(logit[:, None] + sd * nodes[None, :]) @ weights


def _shift_for_share(
    logit: np.ndarray, sd: float, share: float, nodes: np.ndarray, weights: np.ndarray
) -> float:
    lo, hi = -10.0, 10.0
    for _ in range(50):
        mid = (lo + hi) / 2.0
        lo, hi = (
            (mid, hi)
            if _expected_default(logit + mid, sd, nodes, weights).mean() < share
            else (lo, mid)
        )
    return (lo + hi) / 2.0


def _expected_auc(logit: np.ndarray, p: np.ndarray) -> float:
    """AUC of the latent score against labels drawn with probability p (in expectation)."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.ones(len(p)), np.zeros(len(p))]
    return float(roc_auc_score(labels, np.r_[logit, logit], sample_weight=np.r_[p, 1.0 - p]))


def _tune_latent(cal: dict[str, Any], design: DesignSettings) -> dict[str, float]:
    """Noise sd and intercept shift so synthetic loans hit the real default share and target AUC.

    Solved on a simulated synthetic population, so it accounts for the generator's own marginals.
    """
    streams = _streams(design.sim_seed)
    orig = _draw_origination(cal, streams, design.sim_rows)
    logit = _latent_logit(cal, orig)
    nodes, weights = np.polynomial.hermite_e.hermegauss(16)
    weights = weights / weights.sum()
    share = cal["default_share"]

    def auc_at(sd: float) -> tuple[float, float]:
        shift = _shift_for_share(logit, sd, share, nodes, weights)
        return _expected_auc(logit, _expected_default(logit + shift, sd, nodes, weights)), shift

    auc0, shift0 = auc_at(0.0)
    sd, shift, auc = 0.0, shift0, auc0
    if auc0 > design.target_auc:
        lo, hi = 0.0, 5.0
        for _ in range(25):
            mid = (lo + hi) / 2.0
            lo, hi = (mid, hi) if auc_at(mid)[0] > design.target_auc else (lo, mid)
        sd = (lo + hi) / 2.0
        auc, shift = auc_at(sd)
    return {
        "noise_sd": round(sd, 6),
        "intercept_shift": round(shift, 6),
        "latent_auc_noise_free": round(auc0, 4),
        "latent_auc": round(auc, 4),
    }


def load_calibration(path: Path = CALIBRATION_PATH) -> dict[str, Any]:
    """The committed calibration JSON."""
    return json.loads(Path(path).read_text())


# ----------------------------------------------------------------------------- generation


def _streams(seed: int) -> dict[str, np.random.Generator]:
    names = sorted(_UNIFORM_STREAMS) + sorted(_NORMAL_STREAMS)
    seqs = np.random.SeedSequence(seed).spawn(len(names))
    return {n: np.random.Generator(np.random.PCG64(s)) for n, s in zip(names, seqs, strict=True)}


def _uniforms(streams: dict[str, np.random.Generator], name: str, n: int) -> np.ndarray:
    return streams[name].random((n, _UNIFORM_STREAMS[name]))


def _normals(streams: dict[str, np.random.Generator], name: str, n: int) -> np.ndarray:
    return streams[name].standard_normal((n, _NORMAL_STREAMS[name]))


def _inverse(margin: dict[str, Any], u: np.ndarray) -> np.ndarray:
    """Inverse CDF of a stored margin."""
    if margin["kind"] == "discrete":
        idx = np.searchsorted(np.asarray(margin["cdf"]), u, side="right")
        return np.asarray(margin["values"])[np.minimum(idx, len(margin["values"]) - 1)]
    return np.interp(u, margin["probs"], margin["quantiles"])


def _pick(freqs: dict[str, float], u: np.ndarray) -> np.ndarray:
    """Categorical draw from shares (returns the category strings)."""
    keys = np.asarray(list(freqs), dtype=object)
    cdf = np.cumsum(list(freqs.values()))
    return keys[np.minimum(np.searchsorted(cdf / cdf[-1], u, side="right"), len(keys) - 1)]


def _draw_origination(
    cal: dict[str, Any], st: dict[str, np.random.Generator], n: int
) -> dict[str, np.ndarray]:
    """What is known at issue: copula variables, rate, categories."""
    chol = np.linalg.cholesky(np.asarray(cal["copula_corr"]))
    u = ndtr(_normals(st, "copula", n) @ chol.T)
    cols: dict[str, np.ndarray] = {}
    for j, var in enumerate(cal["copula_vars"]):
        x = _inverse(cal["margins"][var], u[:, j])
        cols[var] = np.rint(x) if var in cal["integer_vars"] else x
    cols["loan_amnt"] = (
        np.maximum(np.rint(cols["loan_amnt"] / cal["design"]["loan_amnt_step"]), 1)
        * cal["design"]["loan_amnt_step"]
    )
    cols["log_annual_inc"] = np.log(np.rint(np.exp(cols["log_annual_inc"])))
    cols["log_revol_bal"] = np.log1p(np.rint(np.expm1(cols["log_revol_bal"])))
    cols["revol_util"] = np.round(cols["revol_util"], 1)
    cols["dti"] = np.round(cols["dti"], 2)
    cols["term_months"] = np.where(cols["term_60"] > 0, _LONG_TERM, _SHORT_TERM).astype(float)
    cols["int_rate"] = _draw_rate(cal, cols["sub_grade_ordinal"], _normals(st, "rate", n)[:, 0])
    cat_u = _uniforms(st, "cat", n)
    for j, name in enumerate(CATEGORICAL_MARGINS):
        cols[name] = _pick(cal["categorical"][name], cat_u[:, j])
    cols["emp_length_years"] = _emp_years(cols["emp_length"])
    return cols


def _draw_rate(cal: dict[str, Any], ordinal: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Interest rate around the sub_grade's mean, inside its observed 1-99% band."""
    stats = [cal["int_rate_by_sub_grade"][sg] for sg in cal["sub_grades"]]
    idx = ordinal.astype(int)
    mean, sd = np.array([s["mean"] for s in stats])[idx], np.array([s["std"] for s in stats])[idx]
    lo, hi = np.array([s["p01"] for s in stats])[idx], np.array([s["p99"] for s in stats])[idx]
    return np.round(np.clip(mean + sd * z, lo, hi), 2)


def _latent_logit(cal: dict[str, Any], cols: dict[str, np.ndarray]) -> np.ndarray:
    model = cal["default_model"]
    x, coef = _design_matrix(cols, model)
    return model["intercept"] + x @ coef


def _draw_outcome(
    cal: dict[str, Any], st: dict[str, np.random.Generator], cols: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Default from the calibrated latent logistic plus noise; status incl. unresolved loans."""
    n = len(cols["loan_amnt"])
    model, design = cal["default_model"], cal["design"]
    logit = (
        _latent_logit(cal, cols)
        + model["intercept_shift"]
        + model["noise_sd"] * _normals(st, "noise", n)[:, 0]
    )
    default = _uniforms(st, "default", n)[:, 0] < expit(logit)
    su = _uniforms(st, "status", n)
    base = np.where(default, _CHARGED, _PAID).astype(object)
    status = np.where(su[:, 0] < cal["dnmcp_share"], _DNMCP_PREFIX + base, base)
    unresolved = su[:, 1] < design["unresolved_share"]
    status = np.where(unresolved, _pick(design["unresolved_mix"], su[:, 2]), status)
    return {"default": default & ~unresolved, "unresolved": unresolved, "loan_status": status}


def _balance(
    principal: np.ndarray, rate: np.ndarray, payment: np.ndarray, months: np.ndarray
) -> np.ndarray:
    """Outstanding principal after `months` instalments of an amortising loan."""
    growth = (1.0 + rate) ** months
    return np.maximum(principal * growth - payment * (growth - 1.0) / rate, 0.0)


def _draw_servicing(
    cal: dict[str, Any],
    st: dict[str, np.random.Generator],
    cols: dict[str, np.ndarray],
    out: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Post-origination columns, consistent with the outcome (this is what leaks)."""
    n = len(cols["loan_amnt"])
    sv, design = cal["servicing"], cal["design"]
    fu = _uniforms(st, "funded", n)
    step = design["loan_amnt_step"]
    funded = np.minimum(
        np.rint(cols["loan_amnt"] * _inverse(sv["funded_ratio"], fu[:, 0]) / step) * step,
        cols["loan_amnt"],
    )
    funded = np.where(funded > 0, funded, cols["loan_amnt"])
    funded_inv = np.round(funded * _inverse(sv["funded_inv_ratio"], fu[:, 1]), 2)
    term, rate = cols["term_months"], cols["int_rate"] / 1200.0
    payment = np.round(funded * rate / (1.0 - (1.0 + rate) ** -term), 2)
    d, unres = out["default"], out["unresolved"]
    mu = _uniforms(st, "months", n)[:, 0]
    paid_m = np.clip(np.rint(_inverse(sv["paid_term_frac"], mu) * term), 1, term)
    dflt_m = np.clip(np.rint(_inverse(sv["default_term_frac"], mu) * term), 0, term - 1)
    open_m = np.clip(np.rint(mu * design["unresolved_max_term_frac"] * term), 1, term - 1)
    months = np.where(unres, open_m, np.where(d, dflt_m, paid_m))
    balance = _balance(funded, rate, payment, months)
    left = np.where(d | unres, balance, 0.0)
    rec_prncp = np.round(funded - left, 2)
    rec_int = np.round(np.maximum(months * payment - (funded - balance), 0.0), 2)
    ru = _uniforms(st, "recovery", n)
    recovered = d & (ru[:, 0] < sv["recovery_share"])
    recoveries = np.round(
        np.where(recovered, left * _inverse(sv["recovery_frac"], ru[:, 1]), 0.0), 2
    )
    fee = np.round(recoveries * _inverse(sv["collection_fee_ratio"], ru[:, 2]), 2)
    lu = _uniforms(st, "late_fee", n)
    late_share = np.where(d, sv["late_fee_share_default"], sv["late_fee_share_paid"])
    late_amt = np.where(
        d, _inverse(sv["late_fee_default"], lu[:, 1]), _inverse(sv["late_fee_paid"], lu[:, 1])
    )
    late = np.round(np.where(lu[:, 0] < late_share, late_amt, 0.0), 2)
    total = np.round(rec_prncp + rec_int + late + recoveries, 2)
    inv_ratio = funded_inv / funded
    issue = cols["issue_month"]
    last_pay = np.where(months > 0, issue + months, np.nan)
    no_pay = d & (mu < sv["default_no_payment_share"])
    last_pay = np.where(no_pay, np.nan, last_pay)
    pu = _uniforms(st, "pull", n)[:, 0]
    gap = np.where(d, _inverse(sv["pull_gap_default"], pu), _inverse(sv["pull_gap_paid"], pu))
    pull = np.minimum(
        np.rint(np.where(np.isnan(last_pay), issue + months, last_pay) + gap), sv["snapshot_month"]
    )
    # A loan repaid early ends with its instalment plus the whole remaining balance.
    last_amt = np.where(d | unres, payment, payment + balance)
    last_amt = np.round(np.where(np.isnan(last_pay), 0.0, last_amt), 2)
    return {
        "funded_amnt": funded,
        "funded_amnt_inv": funded_inv,
        "installment": payment,
        "out_prncp": np.round(np.where(unres, left, 0.0), 2),
        "out_prncp_inv": np.round(np.where(unres, left * inv_ratio, 0.0), 2),
        "total_pymnt": total,
        "total_pymnt_inv": np.round(total * inv_ratio, 2),
        "total_rec_prncp": rec_prncp,
        "total_rec_int": rec_int,
        "total_rec_late_fee": late,
        "recoveries": recoveries,
        "collection_recovery_fee": fee,
        "last_pymnt_d": last_pay,
        "last_pymnt_amnt": last_amt,
        "next_pymnt_d": np.where(unres, issue + months + 1, np.nan),
        "last_credit_pull_d": pull,
        "left": left,
    }


def _draw_fico(
    cal: dict[str, Any],
    st: dict[str, np.random.Generator],
    cols: dict[str, np.ndarray],
    out: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """FICO at issue follows sub_grade; the last pulled FICO collapses after a charge-off."""
    ds = cal["design"]
    z = _normals(st, "fico", len(cols["loan_amnt"]))
    top = len(cal["sub_grades"]) - 1
    mean = (
        ds["fico_mean_best"]
        + (ds["fico_mean_worst"] - ds["fico_mean_best"]) * cols["sub_grade_ordinal"] / top
    )
    step = ds["fico_step"]
    low = np.clip(
        np.floor((mean + ds["fico_sd"] * z[:, 0]) / step) * step,
        ds["fico_low_min"],
        ds["fico_low_max"],
    )
    shift = np.where(out["default"], ds["last_fico_shift_default"], ds["last_fico_shift_paid"])
    sd = np.where(out["default"], ds["last_fico_sd_default"], ds["last_fico_sd_paid"])
    last = np.clip(
        np.floor((low + shift + sd * z[:, 1]) / step) * step,
        ds["last_fico_min"],
        ds["fico_low_max"],
    )
    return {
        "fico_range_low": low,
        "fico_range_high": low + ds["fico_span"],
        "last_fico_range_low": last,
        "last_fico_range_high": last + ds["fico_span"],
    }


def _draw_history(
    cal: dict[str, Any], st: dict[str, np.random.Generator], cols: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Months since delinquency / public record and bankruptcies, coherent with the counts."""
    h = cal["history"]
    u = _uniforms(st, "history", len(cols["loan_amnt"]))
    recent = cols["delinq_2yrs"] > 0
    delinq = np.where(
        recent,
        _inverse(h["mths_since_delinq_recent"], u[:, 1]),
        _inverse(h["mths_since_delinq_old"], u[:, 1]),
    )
    delinq = np.where(recent | (u[:, 0] < h["delinq_hist_share_clean"]), np.rint(delinq), np.nan)
    pub = cols["pub_rec"] > 0
    rec_share = np.where(pub, h["record_share_pub"], h["record_share_clean"])
    record = np.where(
        u[:, 2] < rec_share, np.rint(_inverse(h["mths_since_record"], u[:, 3])), np.nan
    )
    bankr = np.where(pub & (u[:, 4] < h["bankruptcy_share_pub"]), 1.0, 0.0)
    bankr = np.where(u[:, 5] < h["bankruptcy_missing_share"], np.nan, bankr)
    return {
        "mths_since_last_delinq": delinq,
        "mths_since_last_record": record,
        "pub_rec_bankruptcies": bankr,
    }


def _draw_settlement(
    cal: dict[str, Any],
    st: dict[str, np.random.Generator],
    out: dict[str, np.ndarray],
    sv_cols: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    sv = cal["servicing"]
    u = _uniforms(st, "settlement", len(out["default"]))
    settled = out["default"] & (u[:, 0] < sv["settlement_share_default"])
    pct = np.round(_inverse(sv["settlement_percentage"], u[:, 1]), 2)
    base = np.where(
        np.isnan(sv_cols["last_pymnt_d"]), sv_cols["last_credit_pull_d"], sv_cols["last_pymnt_d"]
    )
    date = np.minimum(base + np.rint(_inverse(sv["settlement_gap"], u[:, 2])), sv["snapshot_month"])
    return {
        "settled": settled,
        "settlement_percentage": np.where(settled, pct, np.nan),
        "settlement_amount": np.where(settled, np.round(sv_cols["left"] * pct / 100.0, 2), np.nan),
        "settlement_date": np.where(settled, date, np.nan),
        "settlement_status": np.where(settled, _pick(sv["settlement_status"], u[:, 3]), ""),
    }


def _draw_texts(
    cal: dict[str, Any], st: dict[str, np.random.Generator], cols: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    t = cal["texts"]
    n = len(cols["loan_amnt"])
    eu, du = _uniforms(st, "emp_title", n), _uniforms(st, "desc", n)
    emp = np.where(eu[:, 0] < t["emp_title_share"], _pick(t["emp_title"], eu[:, 1]), "")
    templates = cal["design"]["desc_templates"]
    which = np.minimum((du[:, 1] * len(templates)).astype(int), len(templates) - 1)
    has_desc = du[:, 0] < t["desc_share"]
    title = np.array([t["title_by_purpose"].get(p, p) for p in cols["purpose"]], dtype=object)
    zu = _uniforms(st, "zip", n)[:, 0]
    zips = np.empty(n, dtype=object)
    for state in np.unique(cols["addr_state"]):
        mask = cols["addr_state"] == state
        zips[mask] = _pick(t["zip_by_state"][state], zu[mask])
    return {
        "emp_title": emp,
        "desc_template": np.where(has_desc, which, -1),
        "title": title,
        "zip_code": zips,
    }


# ----------------------------------------------------------------------------- rendering


def _csv_field(value: str) -> str:
    if any(ch in value for ch in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _month_names(first: int, last: int) -> tuple[int, np.ndarray]:
    names = [f"{_MONTHS[m % 12]}-{m // 12}" for m in range(first, last + 1)]
    return first, np.asarray(names, dtype=object)


def _fmt_months(x: np.ndarray, table: tuple[int, np.ndarray]) -> list[str]:
    first, names = table
    ok = np.isfinite(x)
    idx = np.where(ok, x, first).astype(int) - first
    return np.where(ok, names[np.clip(idx, 0, len(names) - 1)], "").tolist()


def _fmt(x: np.ndarray, pattern: str) -> list[str]:
    """Format numbers; NaN becomes an empty field."""
    ok = np.isfinite(x)
    values = np.where(ok, x, 0.0)
    uniq, inv = np.unique(values, return_inverse=True)
    # Counts, dates, FICO and mostly-zero servicing columns repeat a lot: format each value once.
    if len(uniq) * 4 < len(values):
        strs = np.asarray(list(map(pattern.__mod__, uniq.tolist())), dtype=object)[inv]
        return np.where(ok, strs, "").tolist()
    out = list(map(pattern.__mod__, values.tolist()))
    if ok.all():
        return out
    return [s if k else "" for s, k in zip(out, ok.tolist(), strict=True)]


def _strings(x: np.ndarray) -> list[str]:
    """Categorical values, CSV-escaped once per distinct value."""
    uniq, inv = np.unique(x.astype(str), return_inverse=True)
    escaped = np.asarray([_csv_field(v) for v in uniq], dtype=object)
    return escaped[inv].tolist()


def _row_parts(fields: dict[str, list[str]], constants: dict[str, str]) -> list[Iterable[str]]:
    """Per-column iterables to zip into rows; each run of constant columns becomes one item."""
    parts: list[Iterable[str]] = []
    run: list[str] = []
    for col in RAW_COLUMNS:
        if col in fields:
            if run:
                parts.append(itertools.repeat(",".join(run)))
                run = []
            parts.append(fields[col])
        else:
            run.append(_csv_field(constants.get(col, "")))
    if run:
        parts.append(itertools.repeat(",".join(run)))
    return parts


def _render_chunk(
    cal: dict[str, Any],
    st: dict[str, np.random.Generator],
    n: int,
    first_id: int,
    percent_strings: bool,
    months: tuple[int, np.ndarray],
) -> tuple[dict[str, list[str]], float]:
    """Draw `n` loans and format every generated column; also returns their funded total."""
    cols = _draw_origination(cal, st, n)
    out = _draw_outcome(cal, st, cols)
    sv = _draw_servicing(cal, st, cols, out)
    fico = _draw_fico(cal, st, cols, out)
    hist = _draw_history(cal, st, cols)
    settle = _draw_settlement(cal, st, out, sv)
    texts = _draw_texts(cal, st, cols)
    na_u = _uniforms(st, "na", n)[:, 0]
    ids = np.arange(first_id, first_id + n)
    ordinal = cols["sub_grade_ordinal"].astype(int)
    sub_grade = np.asarray(cal["sub_grades"], dtype=object)[ordinal]
    pct = "%%" if percent_strings else ""
    emp_length = cols["emp_length"]
    if percent_strings:
        emp_length = np.where(
            (emp_length == "") & (na_u < cal["design"]["na_emp_length_share"]), "n/a", emp_length
        )
    issue_names = _fmt_months(cols["issue_month"], months)
    templates = [_csv_field(t) for t in cal["design"]["desc_templates"]]
    desc = [
        templates[k].replace("{date}", d) if k >= 0 else ""
        for k, d in zip(texts["desc_template"].tolist(), issue_names, strict=True)
    ]
    url = cal["design"]["url_template"]
    fields: dict[str, list[str]] = {
        "id": list(map(str, ids.tolist())),
        "loan_amnt": _fmt(cols["loan_amnt"], "%d"),
        "funded_amnt": _fmt(sv["funded_amnt"], "%d"),
        "funded_amnt_inv": _fmt(sv["funded_amnt_inv"], "%.2f"),
        "term": [f" {int(t)} months" for t in cols["term_months"].tolist()],
        "int_rate": _fmt(cols["int_rate"], "%.2f" + pct),
        "installment": _fmt(sv["installment"], "%.2f"),
        "grade": [s[0] for s in sub_grade.tolist()],
        "sub_grade": sub_grade.tolist(),
        "emp_title": _strings(texts["emp_title"]),
        "emp_length": _strings(emp_length),
        "home_ownership": _strings(cols["home_ownership"]),
        "annual_inc": _fmt(np.exp(cols["log_annual_inc"]).round(), "%.1f"),
        "verification_status": _strings(cols["verification_status"]),
        "issue_d": issue_names,
        "loan_status": _strings(out["loan_status"]),
        "url": [url.format(id=i) for i in ids.tolist()],
        "desc": desc,
        "purpose": _strings(cols["purpose"]),
        "title": _strings(texts["title"]),
        "zip_code": _strings(texts["zip_code"]),
        "addr_state": _strings(cols["addr_state"]),
        "dti": _fmt(cols["dti"], "%.2f"),
        "delinq_2yrs": _fmt(cols["delinq_2yrs"], "%d"),
        "earliest_cr_line": _fmt_months(
            cols["issue_month"] - cols["credit_history_months"], months
        ),
        "fico_range_low": _fmt(fico["fico_range_low"], "%d"),
        "fico_range_high": _fmt(fico["fico_range_high"], "%d"),
        "inq_last_6mths": _fmt(cols["inq_last_6mths"], "%d"),
        "mths_since_last_delinq": _fmt(hist["mths_since_last_delinq"], "%d"),
        "mths_since_last_record": _fmt(hist["mths_since_last_record"], "%d"),
        "open_acc": _fmt(cols["open_acc"], "%d"),
        "pub_rec": _fmt(cols["pub_rec"], "%d"),
        "revol_bal": _fmt(np.expm1(cols["log_revol_bal"]).round(), "%d"),
        "revol_util": _fmt(cols["revol_util"], "%.1f" + pct),
        "total_acc": _fmt(cols["open_acc"] + cols["extra_acc"], "%d"),
        "last_pymnt_d": _fmt_months(sv["last_pymnt_d"], months),
        "next_pymnt_d": _fmt_months(sv["next_pymnt_d"], months),
        "last_credit_pull_d": _fmt_months(sv["last_credit_pull_d"], months),
        "last_fico_range_high": _fmt(fico["last_fico_range_high"], "%d"),
        "last_fico_range_low": _fmt(fico["last_fico_range_low"], "%d"),
        "pub_rec_bankruptcies": _fmt(hist["pub_rec_bankruptcies"], "%d"),
        "debt_settlement_flag": np.where(settle["settled"], "Y", "N").tolist(),
        "debt_settlement_flag_date": _fmt_months(settle["settlement_date"], months),
        "settlement_status": settle["settlement_status"].tolist(),
        "settlement_date": _fmt_months(settle["settlement_date"], months),
        "settlement_amount": _fmt(settle["settlement_amount"], "%.2f"),
        "settlement_percentage": _fmt(settle["settlement_percentage"], "%.2f"),
        "settlement_term": _fmt(np.where(settle["settled"], 0.0, np.nan), "%d"),
    }
    for col in (
        "out_prncp",
        "out_prncp_inv",
        "total_pymnt",
        "total_pymnt_inv",
        "total_rec_prncp",
        "total_rec_int",
        "total_rec_late_fee",
        "recoveries",
        "collection_recovery_fee",
        "last_pymnt_amnt",
    ):
        fields[col] = _fmt(sv[col], "%.2f")
    return fields, float(sv["funded_amnt"].sum())


def _month_table(cal: dict[str, Any]) -> tuple[int, np.ndarray]:
    """Every month a generated date can fall on: oldest credit line to past the snapshot."""
    issue = cal["margins"]["issue_month"]["values"]
    history = cal["margins"]["credit_history_months"]["quantiles"]
    first = int(min(issue) - max(history)) - 1
    last = int(max(max(issue) + _LONG_TERM + 1, cal["servicing"]["snapshot_month"]))
    return _month_names(first, last)


def write_synthetic_loans(
    path: Path,
    rows: int,
    seed: int,
    chunk_rows: int,
    percent_strings: bool = False,
    footer_lines: int = 2,
    calibration: dict | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Stream `rows` synthetic loans (raw Kaggle layout, gzip CSV, then footer lines) to `path`.

    Same arguments give byte-identical files, whatever `chunk_rows` is; returns the loans written.
    """
    if rows < 0 or chunk_rows < 1:
        raise ValueError(
            f"rows must be >= 0 and chunk_rows >= 1, got rows={rows} chunk_rows={chunk_rows}"
        )
    cal = calibration if calibration is not None else load_calibration()
    design = cal["design"]
    st = _streams(seed)
    months = _month_table(cal)
    funded_total = 0.0
    written = 0
    with (
        atomic_path(Path(path)) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=_GZIP_LEVEL
        ) as gz,
    ):
        gz.write((",".join(RAW_COLUMNS) + "\n").encode())
        while written < rows:
            n = min(chunk_rows, rows - written)
            fields, funded = _render_chunk(
                cal, st, n, design["id_start"] + written, percent_strings, months
            )
            # Constant runs are endless repeat() iterables: the generated columns bound the zip.
            lines = map(",".join, zip(*_row_parts(fields, cal["constants"]), strict=False))
            gz.write(("\n".join(lines) + "\n").encode())
            written += n
            funded_total += funded
            if on_progress is not None:
                on_progress(written)
        gz.write(_footer(design["footer_template"], footer_lines, funded_total).encode())
    log.info("synthetic.written", path=str(path), rows=written, footer_lines=footer_lines)
    return written


def _footer(template: str, lines: int, funded_total: float) -> str:
    """Footer lines in the id column (policy code 1 gets the funded total, later codes 0)."""
    empty = "," * (len(RAW_COLUMNS) - 1)
    out = []
    for i in range(lines):
        text = _csv_field(template.format(code=i + 1, amount=round(funded_total) if i == 0 else 0))
        out.append(text + empty + "\n")
    return "".join(out)


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """`calibrate --sample PATH --out JSON` or `generate --out PATH --rows N --seed S`."""
    parser = argparse.ArgumentParser(prog="python -m src.pipelines.acquisition.synthetic")
    sub = parser.add_subparsers(dest="command", required=True)
    cal_p = sub.add_parser("calibrate", help="derive aggregate statistics from the real sample")
    cal_p.add_argument("--sample", type=Path, required=True)
    cal_p.add_argument("--out", type=Path, default=CALIBRATION_PATH)
    gen_p = sub.add_parser("generate", help="write synthetic loans")
    gen_p.add_argument("--out", type=Path, required=True)
    gen_p.add_argument("--rows", type=int, required=True)
    gen_p.add_argument("--seed", type=int, required=True)
    gen_p.add_argument("--chunk-rows", type=int, required=True)
    gen_p.add_argument("--percent-strings", action="store_true")
    gen_p.add_argument("--footer-lines", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "calibrate":
        cal = calibrate(args.sample)
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(cal, indent=1, sort_keys=False) + "\n")
        log.info(
            "synthetic.calibrated",
            out=str(args.out),
            default_share=cal["default_share"],
            latent_auc=cal["default_model"]["latent_auc"],
        )
        return 0
    write_synthetic_loans(
        args.out, args.rows, args.seed, args.chunk_rows, args.percent_strings, args.footer_lines
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
