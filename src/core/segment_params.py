"""Segment assignment without Spark: the exported KMeans / GMM parameters and their numpy scoring.

`segments.json` (one per segmentation model) holds a `SegmentParams`; serving and batch scoring
assign segments with `assign_segment`, which reproduces Spark's arithmetic exactly.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

ModelName = Literal["kmeans", "gmm"]
MODEL_NAMES: tuple[ModelName, ...] = ("kmeans", "gmm")

# Spark's ml.impl.Utils.EPSILON: the floor Spark adds to each weighted component density, so a
# point far from every component gets equal posteriors and lands in component 0, as in Spark.
SPARK_EPSILON = float(np.finfo(np.float64).eps)


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KMeansParams(_Params):
    centres: list[list[float]] = Field(description="cluster centres in standardized space")


class GmmParams(_Params):
    weights: list[float]
    means: list[list[float]] = Field(description="component means in standardized space")
    covariances: list[list[list[float]]] = Field(description="full d×d covariance per component")
    epsilon: float = Field(description="floor added to each weighted density (Spark's EPSILON)")


class SegmentParams(_Params):
    """Everything needed to assign a segment without Spark; written as `segments.json`."""

    model: ModelName
    k: int
    features: list[str] = Field(description="order of the columns in `assign_segment` rows")
    impute: list[float] = Field(description="training medians, used where a value is missing")
    mean: list[float] = Field(description="training means of the imputed features")
    std: list[float] = Field(description="training sample standard deviations (0: constant)")
    kmeans: KMeansParams | None = None
    gmm: GmmParams | None = None
    bands: dict[int, str] = Field(description="cluster id → risk band name")

    @model_validator(mode="after")
    def _consistent(self) -> SegmentParams:
        d = len(self.features)
        if not len(self.impute) == len(self.mean) == len(self.std) == d:
            raise ValueError("impute, mean and std need one value per feature")
        if (self.model == "kmeans") != (self.kmeans is not None) or (
            (self.model == "gmm") != (self.gmm is not None)
        ):
            raise ValueError(f"model '{self.model}' needs exactly its own parameter block")
        if sorted(self.bands) != list(range(self.k)):
            raise ValueError("bands must name every cluster 0..k-1")
        return self


# --- assignment ---------------------------------------------------------------------------------


def standardize(params: SegmentParams, rows: np.ndarray) -> np.ndarray:
    """Impute missing values with the medians, then scale as Spark's StandardScaler does."""
    x = np.asarray(rows, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(params.features):
        raise ValueError(f"rows must be (n, {len(params.features)}) in order {params.features}")
    x = np.where(np.isnan(x), np.asarray(params.impute), x)
    std = np.asarray(params.std)
    # Spark multiplies by 1/std (0 for a constant feature) rather than dividing: same bits.
    scale = np.divide(1.0, std, out=np.zeros_like(std), where=std != 0)
    return (x - np.asarray(params.mean)) * scale


def _nearest_centre(kmeans: KMeansParams, z: np.ndarray) -> np.ndarray:
    centres = np.asarray(kmeans.centres)
    distances = ((z[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    return distances.argmin(axis=1)


def _gaussian_logpdf(mean: np.ndarray, cov: np.ndarray, z: np.ndarray) -> np.ndarray:
    # As Spark's MultivariateGaussian: eigen-decomposition, pseudo-inverse and pseudo-determinant,
    # so a near-singular component scores points exactly as it does in Spark.
    eigenvalues, vectors = np.linalg.eigh(cov)
    tol = SPARK_EPSILON * eigenvalues.max() * len(eigenvalues)
    kept = eigenvalues > tol
    log_pdet = float(np.log(eigenvalues[kept]).sum())
    inv_root = np.where(kept, 1.0 / np.sqrt(np.where(kept, eigenvalues, 1.0)), 0.0)
    root_sigma_inv = inv_root[:, None] * vectors.T
    u = -0.5 * (len(mean) * math.log(2.0 * math.pi) + log_pdet)
    v = root_sigma_inv @ mean - z @ root_sigma_inv.T
    return u - 0.5 * (v * v).sum(axis=1)


def _most_probable_component(gmm: GmmParams, z: np.ndarray) -> np.ndarray:
    weighted = np.column_stack(
        [
            gmm.epsilon + w * np.exp(_gaussian_logpdf(np.asarray(m), np.asarray(c), z))
            for w, m, c in zip(gmm.weights, gmm.means, gmm.covariances, strict=True)
        ]
    )
    posterior = weighted / weighted.sum(axis=1, keepdims=True)
    return posterior.argmax(axis=1)


def assign_segment(params: dict[str, Any] | SegmentParams, rows: np.ndarray) -> list[int]:
    """Cluster id of each row of raw feature values (NaN = missing), as Spark assigns it."""
    p = params if isinstance(params, SegmentParams) else SegmentParams.model_validate(params)
    z = standardize(p, rows)
    if p.kmeans is not None:
        return [int(c) for c in _nearest_centre(p.kmeans, z)]
    if p.gmm is not None:
        return [int(c) for c in _most_probable_component(p.gmm, z)]
    raise ValueError("segment params carry neither kmeans nor gmm parameters")
