"""Risk segmentation: KMeans and Gaussian mixtures on standardized origination features.

The Spark pipeline (median imputation, standardization, clustering) is fitted on the training split.
Every fitted number is also exported as plain JSON, so `assign_segment` reproduces Spark's cluster
in numpy alone, without a JVM at serving time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel
from pyspark.ml import Pipeline, PipelineModel, Transformer
from pyspark.ml.clustering import GaussianMixture, GaussianMixtureModel, KMeans, KMeansModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import SQLTransformer, StandardScaler, VectorAssembler
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from src.core.segment_params import (
    SPARK_EPSILON,
    GmmParams,
    KMeansParams,
    ModelName,
    SegmentParams,
)
from src.pipelines.preparation.splitting import split_stratified
from src.pipelines.segmentation.bands import (
    ClusterRisk,
    GapRule,
    RiskGroup,
    choose_k,
    merge_clusters,
)
from src.utils.atomic import atomic_path

FILLED_PREFIX = "seg_filled_"
RAW_VECTOR = "seg_raw"
FEATURES_VECTOR = "seg_features"
# MLflow's pyfunc wrapper of a Spark model returns the column named "prediction".
PREDICTION = "prediction"
PROBABILITY = "seg_probability"


PLOT_DPI = 120


# --- preprocessing -------------------------------------------------------------------------------


def filled_name(feature: str) -> str:
    """Name of the imputed copy of `feature` inside the pipeline."""
    return f"{FILLED_PREFIX}{feature}"


def train_medians(train: DataFrame, features: Sequence[str]) -> dict[str, float]:
    """Exact median of each feature over the non-missing training values."""
    row = train.agg(*[F.median(F.col(f).cast("double")).alias(f) for f in features]).first()
    missing = [f for f in features if row is None or row[f] is None]
    if missing:
        raise ValueError(f"segment.features {missing} have no value in the training split")
    return {f: float(row[f]) for f in features}


def imputer(medians: dict[str, float]) -> SQLTransformer:
    """A SQL step adding each feature with nulls and NaNs replaced by its training median."""
    # Literal as a string cast: Spark would read a bare 0.1 as DECIMAL; repr round-trips exactly.
    columns = ", ".join(
        f"CASE WHEN `{f}` IS NULL OR isnan(CAST(`{f}` AS DOUBLE)) "
        f"THEN CAST('{m!r}' AS DOUBLE) ELSE CAST(`{f}` AS DOUBLE) END AS `{filled_name(f)}`"
        for f, m in medians.items()
    )
    return SQLTransformer(statement=f"SELECT *, {columns} FROM __THIS__")


@dataclass(frozen=True)
class Preprocessing:
    """The fitted imputation and scaling stages, and the medians they embed (for the export)."""

    model: PipelineModel
    medians: dict[str, float]


def fit_preprocessing(train: DataFrame, features: Sequence[str]) -> Preprocessing:
    """Impute with training medians, then standardize with training means and stds."""
    medians = train_medians(train, features)
    pipeline = Pipeline(
        stages=[
            imputer(medians),
            VectorAssembler(inputCols=[filled_name(f) for f in features], outputCol=RAW_VECTOR),
            StandardScaler(
                inputCol=RAW_VECTOR, outputCol=FEATURES_VECTOR, withMean=True, withStd=True
            ),
        ]
    )
    return Preprocessing(pipeline.fit(train), medians)


# Salted so the fitting sample is not the test split's or the validation slice's hash order.
FIT_SAMPLE_SALT = ":segment-fit"


@dataclass(frozen=True)
class Fitted:
    """The scaled training loans: all of them (cluster risks, bands, profiles) and the sample the
    candidates are fitted on (the same frame when the split is small)."""

    scaled: DataFrame
    fitting: DataFrame
    rows: int
    fit_rows: int


def fit_sample(scaled: DataFrame, fit_rows: int, rows: int, seed: int) -> DataFrame:
    """The loans the candidates are fitted on: all `rows` of `scaled`, or, when there are more
    than `fit_rows`, the fraction fit_rows / rows of each label class by split's seeded draw."""
    if rows <= fit_rows:
        return scaled
    _, sample = split_stratified(scaled, fit_rows / rows, seed, FIT_SAMPLE_SALT)
    return sample


# --- clustering and the choice of k --------------------------------------------------------------


@dataclass(frozen=True)
class Candidates:
    """Every k tried: its fitted model, its clustering score and other per-k figures."""

    metric: str
    higher_is_better: bool
    models: dict[int, Transformer]
    scores: dict[int, float]
    extra: dict[str, dict[int, float]]


def gmm_free_parameters(k: int, d: int) -> int:
    """Free parameters of a k-component full-covariance Gaussian mixture in d dimensions."""
    return k * d + k * d * (d + 1) // 2 + (k - 1)


def gmm_bic(log_likelihood: float, k: int, d: int, n: int) -> float:
    """Bayesian information criterion: −2·LL + p·ln n (lower is better)."""
    return -2.0 * log_likelihood + gmm_free_parameters(k, d) * math.log(n)


def fit_kmeans(scaled: DataFrame, k: int, seed: int, max_iter: int) -> KMeansModel:
    """KMeans with k clusters on the standardized features."""
    return KMeans(
        featuresCol=FEATURES_VECTOR, predictionCol=PREDICTION, k=k, seed=seed, maxIter=max_iter
    ).fit(scaled)


def fit_gmm(scaled: DataFrame, k: int, seed: int, max_iter: int) -> GaussianMixtureModel:
    """Full-covariance Gaussian mixture with k components on the standardized features."""
    return GaussianMixture(
        featuresCol=FEATURES_VECTOR,
        predictionCol=PREDICTION,
        probabilityCol=PROBABILITY,
        k=k,
        seed=seed,
        maxIter=max_iter,
    ).fit(scaled)


def kmeans_candidates(
    scaled: DataFrame, ks: Sequence[int], seed: int, max_iter: int
) -> Candidates:
    """KMeans for every k, scored by silhouette (squared Euclidean; higher is better)."""
    evaluator = ClusteringEvaluator(
        featuresCol=FEATURES_VECTOR, predictionCol=PREDICTION, metricName="silhouette"
    )
    models = {k: fit_kmeans(scaled, k, seed, max_iter) for k in ks}
    scores = {k: float(evaluator.evaluate(m.transform(scaled))) for k, m in models.items()}
    costs = {k: float(m.summary.trainingCost) for k, m in models.items()}
    return Candidates("silhouette", True, models, scores, {"training_cost": costs})


def gmm_candidates(
    scaled: DataFrame, ks: Sequence[int], seed: int, max_iter: int, rows: int
) -> Candidates:
    """A Gaussian mixture for every k, scored by BIC (lower is better)."""
    models = {k: fit_gmm(scaled, k, seed, max_iter) for k in ks}
    log_likelihoods = {k: float(m.summary.logLikelihood) for k, m in models.items()}
    scores = {k: gmm_bic(log_likelihoods[k], k, models[k].numFeatures, rows) for k in ks}
    return Candidates("bic", False, models, scores, {"log_likelihood": log_likelihoods})


def full_pipeline(preprocessing: Preprocessing, cluster_model: Transformer) -> PipelineModel:
    """One PipelineModel from raw feature columns to the cluster id in `prediction`."""
    return PipelineModel(stages=[*preprocessing.model.stages, cluster_model])


# --- risk bands and profiles ---------------------------------------------------------------------


def band_names(k: int, names: Sequence[str]) -> list[str]:
    """k of the band names, evenly spread from the first to the last (lowest risk first).

    The ends stay pinned, so the safest segment is always the first name and the riskiest the
    last, whatever k the data chose; with as many clusters as names every name is used.
    """
    if not 1 <= k <= len(names):
        raise ValueError(f"{k} clusters need at least {k} band names, got {len(names)}")
    if k == 1:
        return [names[0]]
    step = (len(names) - 1) / (k - 1)
    return [names[round(i * step)] for i in range(k)]


def cluster_risks(predictions: DataFrame, label: str) -> list[ClusterRisk]:
    """Size and observed default rate of every cluster (one small aggregate)."""
    rows = (
        predictions.groupBy(PREDICTION)
        .agg(F.count(F.lit(1)).alias("_size"), F.avg(F.col(label).cast("double")).alias("_rate"))
        .collect()
    )
    return [ClusterRisk(int(r[PREDICTION]), int(r["_size"]), float(r["_rate"])) for r in rows]


def band_of_cluster(groups: Sequence[RiskGroup], names: Sequence[str]) -> dict[int, str]:
    """Map cluster id → band name: groups in risk order, names spread with the ends pinned."""
    bands = band_names(len(groups), names)
    return {c: band for group, band in zip(groups, bands, strict=True) for c in group.clusters}


class BandStats(BaseModel):
    """Training-split statistics of one risk band."""

    band: str
    clusters: list[int]
    size: int
    default_rate: float
    feature_means: dict[str, float]


def band_stats(
    predictions: DataFrame, bands: dict[int, str], features: Sequence[str], label: str
) -> list[BandStats]:
    """Size, default rate and raw feature means (missing skipped) per band, in risk order."""
    band_column = F.create_map(*[F.lit(x) for c, b in sorted(bands.items()) for x in (c, b)])
    rows = (
        predictions.withColumn("_band", band_column[F.col(PREDICTION)])
        .groupBy("_band")
        .agg(
            F.count(F.lit(1)).alias("_size"),
            F.avg(F.col(label).cast("double")).alias("_rate"),
            *[F.avg(F.col(f).cast("double")).alias(f) for f in features],
        )
        .collect()
    )
    stats = [
        BandStats(
            band=r["_band"],
            clusters=sorted(c for c, b in bands.items() if b == r["_band"]),
            size=int(r["_size"]),
            default_rate=float(r["_rate"]),
            feature_means={f: float(r[f]) if r[f] is not None else math.nan for f in features},
        )
        for r in rows
    ]
    return sorted(stats, key=lambda s: (s.default_rate, s.band))


@dataclass(frozen=True)
class Segmentation:
    """The chosen k, its model and band of every cluster, and the bands every k tried gave."""

    candidates: Candidates
    k: int
    model: Transformer
    bands: dict[int, str]
    bands_per_k: dict[int, int]


def choose_segmentation(
    candidates: Candidates, scaled: DataFrame, label: str, rule: GapRule, names: Sequence[str]
) -> Segmentation:
    """Band every k's clusters under `rule`; keep the k with the most bands, then the best score."""
    groups = {
        k: merge_clusters(cluster_risks(m.transform(scaled), label), rule, len(names))
        for k, m in candidates.models.items()
    }
    bands_per_k = {k: len(g) for k, g in groups.items()}
    k = choose_k(candidates.scores, bands_per_k, candidates.higher_is_better)
    return Segmentation(
        candidates=candidates,
        k=k,
        model=candidates.models[k],
        bands=band_of_cluster(groups[k], names),
        bands_per_k=bands_per_k,
    )


# --- export and numpy assignment -----------------------------------------------------------------


def export_params(
    name: ModelName,
    features: Sequence[str],
    preprocessing: Preprocessing,
    cluster_model: Transformer,
    bands: dict[int, str],
) -> SegmentParams:
    """The fitted numbers of the pipeline as plain JSON-able parameters."""
    scaler = preprocessing.model.stages[-1]
    medians = preprocessing.medians
    common: dict[str, Any] = {
        "model": name,
        "features": list(features),
        "impute": [medians[f] for f in features],
        "mean": scaler.mean.toArray().tolist(),
        "std": scaler.std.toArray().tolist(),
        "bands": bands,
    }
    if isinstance(cluster_model, KMeansModel):
        centres = [c.tolist() for c in cluster_model.clusterCenters()]
        return SegmentParams(k=len(centres), kmeans=KMeansParams(centres=centres), **common)
    if isinstance(cluster_model, GaussianMixtureModel):
        gaussians = cluster_model.gaussians
        gmm = GmmParams(
            weights=list(cluster_model.weights),
            means=[g.mean.toArray().tolist() for g in gaussians],
            covariances=[g.cov.toArray().tolist() for g in gaussians],
            epsilon=SPARK_EPSILON,
        )
        return SegmentParams(k=len(gmm.weights), gmm=gmm, **common)
    raise TypeError(f"cannot export {type(cluster_model).__name__}")


# --- profile chart -------------------------------------------------------------------------------


def plot_profiles(
    profiles: dict[str, list[dict[str, Any]]],
    band_order: Sequence[str],
    serving_model: str,
    target: Path,
) -> None:
    """Bars of observed default rate per risk band, one panel per model, loan counts annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(profiles)
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    top = max(s["default_rate"] for segs in profiles.values() for s in segs)
    # One colour per band name, shared by every panel: "medium" looks the same in both models.
    palette = dict(zip(band_order, plt.get_cmap("RdYlGn_r")(np.linspace(0.1, 0.9, len(band_order))),
                       strict=True))
    for ax, name in zip(axes[0], names, strict=True):
        segments = profiles[name]
        total = sum(s["size"] for s in segments)
        overall = sum(s["size"] * s["default_rate"] for s in segments) / total
        bars = ax.bar(
            [s["band"] for s in segments],
            [100 * s["default_rate"] for s in segments],
            color=[palette[s["band"]] for s in segments],
            edgecolor="black",
        )
        for bar, seg in zip(bars, segments, strict=True):
            ax.annotate(
                f"{100 * seg['default_rate']:.1f}%\nn={seg['size']:,} ({seg['size'] / total:.0%})",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center", va="bottom", fontsize=8,
            )
        ax.axhline(100 * overall, color="grey", linestyle="--", linewidth=1,
                   label=f"all loans {100 * overall:.1f}%")
        serving = " (serving)" if name == serving_model else ""
        ax.set_title(f"{name}{serving}: k={len(segments)}")
        ax.set_xlabel("risk band (training split)")
        ax.set_ylabel("observed default rate (%)")
        # Headroom for the two-line labels above the tallest bar.
        ax.set_ylim(0, 100 * top * 1.3)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle("Risk segments: default rate and size per band")
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=PLOT_DPI, format="png")
    plt.close(fig)
