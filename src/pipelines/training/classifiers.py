"""Spark ML classifier pipelines over the feature spec: random forest, gradient-boosted trees, MLP,
logistic regression and XGBoost (xgboost.spark, monotone constraints from params.yaml).

Every pipeline is [SQLTransformer(spec), VectorAssembler, classifier]: the model's input vector is
plain numeric columns without categorical metadata, which is what exports to ONNX exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pyspark.ml import Estimator, Pipeline, PipelineModel
from pyspark.ml.classification import (
    GBTClassifier,
    LogisticRegression,
    MultilayerPerceptronClassifier,
    RandomForestClassifier,
)
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import SQLTransformer, VectorAssembler
from pyspark.ml.tuning import ParamGridBuilder, TrainValidationSplit
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from src.core.feature_spec import FeatureSpec, spec_sql
from src.core.raw_schema import LABEL_COLUMN
from src.utils.errors import ConfigError, DataError

ModelName = Literal["random_forest", "gbt", "mlp", "logistic", "xgboost"]
FEATURES_COLUMN = "features"
WEIGHT_COLUMN = "class_weight"
PROBABILITY_COLUMN = "probability"
# Model settings of params.yaml that are not Spark params: the MLP's hidden layer sizes.
HIDDEN_LAYERS = "hidden_layers"
# XGBoost's monotone constraints by input column: +1 = risk never falls as the feature rises.
MONOTONE_CONSTRAINTS = "monotone_constraints"
N_CLASSES = 2
_ESTIMATORS: dict[str, type[Estimator]] = {
    "random_forest": RandomForestClassifier,
    "gbt": GBTClassifier,
    "mlp": MultilayerPerceptronClassifier,
    "logistic": LogisticRegression,
}
# Estimators that take a weight column; the others are balanced by resampling the fit data.
_WEIGHTED = frozenset({"random_forest", "gbt", "logistic", "xgboost"})


def class_counts(df: DataFrame) -> dict[int, int]:
    """Rows of each label class of `df` (both classes must be present)."""
    rows = df.groupBy(LABEL_COLUMN).count().collect()
    counts = {int(r[LABEL_COLUMN]): int(r["count"]) for r in rows}
    if set(counts) != {0, 1} or min(counts.values()) == 0:
        raise DataError(f"training data needs both label classes, found {counts}")
    return counts


def class_weights(counts: Mapping[int, int]) -> dict[int, float]:
    """n / (2 · n_class) per class: each class then carries half of the total weight."""
    total = sum(counts.values())
    return {label: total / (N_CLASSES * n) for label, n in counts.items()}


def with_class_weight(df: DataFrame, weights: Mapping[int, float]) -> DataFrame:
    """`df` with the `class_weight` column of its label."""
    return df.withColumn(
        WEIGHT_COLUMN,
        F.when(F.col(LABEL_COLUMN) == 1, F.lit(weights[1])).otherwise(F.lit(weights[0])),
    )


def oversample_minority(df: DataFrame, counts: Mapping[int, int], seed: int) -> DataFrame:
    """`df` plus a seeded with-replacement sample of its minority class, to about equal classes."""
    minority = min(counts, key=lambda label: counts[label])
    majority = max(counts, key=lambda label: counts[label])
    extra = counts[majority] / counts[minority] - 1.0
    if extra <= 0:
        return df
    sample = df.filter(F.col(LABEL_COLUMN) == minority).sample(
        withReplacement=True, fraction=extra, seed=seed
    )
    return df.unionByName(sample)


def uses_weights(name: ModelName) -> bool:
    """True when the estimator balances classes through a weight column (else by resampling)."""
    return name in _WEIGHTED


def monotone_vector(constraints: Mapping[str, int], spec: FeatureSpec) -> str:
    """XGBoost's "(c1,c2,...)" over the spec's feature vector from constraints by input column."""
    outputs = {f.name: f.output for f in spec.numeric}
    unknown = sorted(set(constraints) - set(outputs) - set(spec.dropped))
    if unknown:
        raise ConfigError(
            f"train.models.xgboost.{MONOTONE_CONSTRAINTS}: {unknown} are not numeric features"
        )
    bad = {k: v for k, v in constraints.items() if v not in (-1, 0, 1)}
    if bad:
        raise ConfigError(f"train.models.xgboost.{MONOTONE_CONSTRAINTS}: {bad} must be -1, 0 or 1")
    # Scaling (x - mean) / std with std > 0 keeps each feature's direction.
    by_output = {outputs[k]: v for k, v in constraints.items() if k in outputs}
    return "(" + ",".join(str(by_output.get(f, 0)) for f in spec.features) + ")"


def _spark_params(
    name: ModelName, params: Mapping[str, Any], spec: FeatureSpec
) -> dict[str, Any]:
    spark_params = {k: v for k, v in params.items() if k != HIDDEN_LAYERS}
    if name == "mlp":
        spark_params["layers"] = [len(spec.features), *params.get(HIDDEN_LAYERS, []), N_CLASSES]
    if name == "xgboost" and MONOTONE_CONSTRAINTS in params:
        spark_params[MONOTONE_CONSTRAINTS] = monotone_vector(params[MONOTONE_CONSTRAINTS], spec)
    return spark_params


def _xgboost(params: Mapping[str, Any], seed: int, weighted: bool) -> Estimator:
    # Imported here: xgboost is only needed by the runs that train it.
    from xgboost.spark import SparkXGBClassifier

    return SparkXGBClassifier(
        features_col=FEATURES_COLUMN,
        label_col=LABEL_COLUMN,
        probability_col=PROBABILITY_COLUMN,
        weight_col=WEIGHT_COLUMN if weighted else None,
        random_state=seed,
        **params,
    )


def build_classifier(
    name: ModelName, params: Mapping[str, Any], spec: FeatureSpec, seed: int, weighted: bool
) -> Estimator:
    """The Spark estimator `name` with `params` from params.yaml; weighted when asked and able."""
    spark_params = _spark_params(name, params, spec)
    if name == "xgboost":
        return _xgboost(spark_params, seed, weighted)
    estimator_class = _ESTIMATORS[name]
    if estimator_class().hasParam("seed"):  # logistic regression is deterministic: no seed
        spark_params["seed"] = seed
    estimator = estimator_class(featuresCol=FEATURES_COLUMN, labelCol=LABEL_COLUMN, **spark_params)
    if weighted and uses_weights(name):
        estimator.setWeightCol(WEIGHT_COLUMN)
    return estimator


def build_pipeline(spec: FeatureSpec, classifier: Estimator) -> Pipeline:
    """[SQLTransformer(spec), VectorAssembler(spec.features), classifier]."""
    return Pipeline(
        stages=[
            SQLTransformer(statement=spec_sql(spec)),
            VectorAssembler(
                inputCols=list(spec.features), outputCol=FEATURES_COLUMN, handleInvalid="error"
            ),
            classifier,
        ]
    )


def _grid(
    name: ModelName, classifier: Estimator, grid: Mapping[str, list[Any]], n_features: int
) -> list[dict[Any, Any]]:
    builder = ParamGridBuilder()
    for key, values in grid.items():
        if name == "mlp" and key == HIDDEN_LAYERS:
            builder.addGrid(
                classifier.getParam("layers"), [[n_features, *v, N_CLASSES] for v in values]
            )
        else:
            builder.addGrid(classifier.getParam(key), list(values))
    return builder.build()


def fit_pipeline(
    name: ModelName,
    fit_df: DataFrame,
    spec: FeatureSpec,
    params: Mapping[str, Any],
    seed: int,
    balance: bool,
    grid: Mapping[str, list[Any]] | None = None,
    search_train_ratio: float | None = None,
) -> PipelineModel:
    """Fit the pipeline of `name` on `fit_df`, balanced and (with a grid) searched on it alone."""
    counts = class_counts(fit_df)
    data = fit_df
    if balance and uses_weights(name):
        data = with_class_weight(fit_df, class_weights(counts))
    elif balance:
        data = oversample_minority(fit_df, counts, seed)
    classifier = build_classifier(name, params, spec, seed, weighted=balance)
    pipeline = build_pipeline(spec, classifier)
    if not grid:
        return pipeline.fit(data)
    if search_train_ratio is None:
        raise ValueError("fit_pipeline: a grid search needs search_train_ratio")
    search = TrainValidationSplit(
        estimator=pipeline,
        estimatorParamMaps=_grid(name, classifier, grid, len(spec.features)),
        evaluator=BinaryClassificationEvaluator(
            labelCol=LABEL_COLUMN, rawPredictionCol=PROBABILITY_COLUMN, metricName="areaUnderPR"
        ),
        trainRatio=search_train_ratio,
        seed=seed,
    )
    best: PipelineModel = search.fit(data).bestModel
    return best


def classifier_params(model: PipelineModel, keys: list[str]) -> dict[str, Any]:
    """Values of the classifier's params `keys` in a fitted pipeline (hidden_layers from layers)."""
    classifier = model.stages[-1]
    values: dict[str, Any] = {}
    for key in keys:
        if key == HIDDEN_LAYERS:
            values[key] = list(classifier.getOrDefault("layers"))[1:-1]
        else:
            values[key] = classifier.getOrDefault(key)
    return values
