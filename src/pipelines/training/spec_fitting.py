"""Fitting the feature specification on the training split with Spark (exact, deterministic)."""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from src.core.feature_spec import (
    CategoricalFeature,
    FeatureSpec,
    NumericFeature,
    capped_sql,
    quote_identifier,
)
from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN, is_leaky
from src.utils.config import FeatureSpecConfig
from src.utils.errors import ConfigError, DataError
from src.utils.logging import get_logger

log = get_logger(component="feature_spec")

# Means and deviations are sums merged in shuffle order, so their last bits may differ between runs;
# rounding to this many significant digits keeps the spec (and its sha256) reproducible.
STAT_SIGNIFICANT_DIGITS = 12
_MEDIAN = 0.5


def _stable(value: float) -> float:
    return float(f"{value:.{STAT_SIGNIFICANT_DIGITS}g}")


def _check_inputs(df: DataFrame, numeric: Sequence[str], categorical: Sequence[str]) -> None:
    names = [*numeric, *categorical]
    forbidden = [n for n in names if is_leaky(n) or n in (KEY_COLUMN, LABEL_COLUMN)]
    if forbidden:
        raise ConfigError(f"feature spec: {forbidden} leak the label or identify the loan")
    missing = [n for n in names if n not in df.columns]
    if missing:
        raise DataError(f"feature spec: columns {missing} are not in the training data")


def _present(name: str) -> Column:
    """The column as double with NaN turned to null: both count as missing."""
    value = F.col(quote_identifier(name)).cast("double")
    return F.when(~F.isnan(value), value)


def _fit_numeric(
    df: DataFrame, names: Sequence[str], quantiles: tuple[float, float]
) -> list[NumericFeature]:
    """Numeric features of the non-empty columns among `names` (two Spark jobs for all of them)."""
    if not names:
        return []
    lower_q, upper_q = quantiles
    # Exact percentiles (no approximation), so the same rows always give the same caps and medians;
    # an empty column gives null.
    row = df.agg(
        *[F.percentile(_present(n), [_MEDIAN, lower_q, upper_q]).alias(n) for n in names]
    ).first()
    partial = [
        NumericFeature(name=n, impute=row[n][0], lower=row[n][1], upper=row[n][2], mean=0, std=1)
        for n in names
        if row[n] is not None
    ]
    if not partial:
        return []
    # Mean and std of the values as the model sees them: after imputation and caps.
    capped = {f.name: F.expr(capped_sql(f)) for f in partial}
    stats = df.agg(
        *[F.avg(c).alias(f"{n}__mean") for n, c in capped.items()],
        *[F.stddev_pop(c).alias(f"{n}__std") for n, c in capped.items()],
    ).first()
    fitted = []
    for feature in partial:
        std = _stable(stats[f"{feature.name}__std"])
        update = {"mean": _stable(stats[f"{feature.name}__mean"]), "std": std if std > 0 else 1.0}
        fitted.append(feature.model_copy(update=update))
    return fitted


def _fit_categorical(
    df: DataFrame, names: Sequence[str], min_count: int
) -> list[CategoricalFeature]:
    """Categorical features of the non-empty columns among `names` (one Spark job for all)."""
    if not names:
        return []
    pairs = F.explode(
        F.array(
            *[
                F.struct(
                    F.lit(n).alias("name"),
                    F.col(quote_identifier(n)).cast("string").alias("level"),
                )
                for n in names
            ]
        )
    )
    counts = (
        df.select(pairs.alias("pair"))
        .select("pair.name", "pair.level")
        .filter(F.col("level").isNotNull())
        .groupBy("name", "level")
        .count()
        .collect()
    )
    seen = {r["name"] for r in counts}
    return [
        CategoricalFeature(
            name=n,
            levels=sorted(r["level"] for r in counts if r["name"] == n and r["count"] >= min_count),
        )
        for n in names
        if n in seen
    ]


def fit_feature_spec(
    train_df: DataFrame, numeric: Sequence[str], categorical: Sequence[str], cfg: FeatureSpecConfig
) -> FeatureSpec:
    """Fit imputation, caps, scaling and encodings on `train_df` only; empty columns are dropped."""
    _check_inputs(train_df, numeric, categorical)
    num = _fit_numeric(train_df, numeric, cfg.clip_quantiles)
    cat = _fit_categorical(train_df, categorical, cfg.min_category_count)
    kept = {f.name for f in num} | {c.name for c in cat}
    dropped = [n for n in [*numeric, *categorical] if n not in kept]
    if dropped:
        log.warning("feature_spec.empty_columns_dropped", columns=dropped)
    features = [f.output for f in num] + [o for c in cat for o in c.outputs]
    if not features:
        raise DataError("feature spec: every feature column is empty in the training data")
    spec = FeatureSpec(features=features, numeric=num, categorical=cat, dropped=dropped)
    log.info("feature_spec.fitted", features=len(features), numeric=len(num), categorical=len(cat),
             dropped=dropped, sha256=spec.sha256())
    return spec


def spec_columns(spec: FeatureSpec) -> list[Column]:
    """The spec features as Spark columns, for callers that select instead of SQLTransformer."""
    return [F.col(quote_identifier(name)) for name in spec.features]
