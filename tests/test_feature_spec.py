"""The feature specification: fitted on training rows only, same numbers in Spark and in numpy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from pyspark.ml.feature import SQLTransformer
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from src.contracts import Artifact, TrainSupRequest
from src.core.feature_spec import (
    CategoricalFeature,
    FeatureSpec,
    NumericFeature,
    spec_sql,
    transform_records,
)
from src.core.raw_schema import KEY_COLUMN, is_leaky
from src.pipelines.training.spec_fitting import fit_feature_spec, spec_columns
from src.utils.errors import ConfigError, DataError
from src.utils.hashing import content_hash

# Agreement asked of the Spark and the pure-Python paths (they run the same IEEE operations).
TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def splits(spark: Any, split_project: Any) -> tuple[Any, DataFrame, DataFrame]:
    from src.supervisor import load_result

    result = load_result(split_project, "split")
    train = spark.read.parquet(str(split_project.path(result.train.path))).cache()
    test = spark.read.parquet(str(split_project.path(result.test.path))).cache()
    return split_project, train, test


@pytest.fixture(scope="module")
def spec(splits: tuple[Any, DataFrame, DataFrame]) -> FeatureSpec:
    cfg, train, _ = splits
    return fit_feature_spec(train, cfg.train.numeric, cfg.train.categorical, cfg.train.spec)


def _records(df: DataFrame, spec: FeatureSpec) -> list[dict[str, Any]]:
    names = [f.name for f in spec.numeric] + [c.name for c in spec.categorical]
    return [row.asDict() for row in df.select(KEY_COLUMN, *names).orderBy(KEY_COLUMN).collect()]


def test_spec_depends_on_training_rows_only(
    spark: Any, splits: tuple[Any, DataFrame, DataFrame], tmp_path: Path
) -> None:
    from src.pipelines.training.data import load_training_data
    from src.supervisor import load_result

    cfg, _, test = splits
    result = load_result(cfg, "split")
    before = load_training_data(spark, cfg, TrainSupRequest(train=result.train, test=result.test))
    # The same test loans with every value changed: a spec that looked at them would change too.
    altered = test.select(
        KEY_COLUMN, "issue_d", "default",
        *[(F.col(n) * 10 + 1).alias(n) for n in cfg.train.numeric],
        *[F.lit("changed").alias(n) for n in cfg.train.categorical],
    )
    path = tmp_path / "altered_test.parquet"
    altered.write.parquet(str(path))
    changed = Artifact(path=str(path), sha256=content_hash(path), rows=result.test.rows)
    after = load_training_data(spark, cfg, TrainSupRequest(train=result.train, test=changed))
    assert after.spec == before.spec
    assert after.spec.sha256() == before.spec.sha256()
    on_test = fit_feature_spec(altered, cfg.train.numeric, cfg.train.categorical, cfg.train.spec)
    assert on_test.sha256() != before.spec.sha256()


def test_statistics_are_exact_training_statistics(
    splits: tuple[Any, DataFrame, DataFrame], spec: FeatureSpec
) -> None:
    cfg, train, _ = splits
    frame = train.toPandas()
    low_q, high_q = cfg.train.spec.clip_quantiles
    for feature in spec.numeric:
        values = frame[feature.name].dropna().to_numpy(dtype=float)
        # F.percentile interpolates linearly between order statistics, as numpy does by default.
        assert feature.impute == pytest.approx(np.percentile(values, 50), rel=1e-12)
        assert feature.lower == pytest.approx(np.percentile(values, low_q * 100), rel=1e-12)
        assert feature.upper == pytest.approx(np.percentile(values, high_q * 100), rel=1e-12)
        seen = frame[feature.name].fillna(feature.impute).clip(feature.lower, feature.upper)
        assert feature.mean == pytest.approx(seen.mean(), rel=1e-9, abs=1e-12)
        expected_std = seen.std(ddof=0)
        assert feature.std == pytest.approx(expected_std if expected_std > 0 else 1.0, rel=1e-9)
    for cat in spec.categorical:
        counts = frame[cat.name].value_counts()
        kept = sorted(k for k, n in counts.items() if n >= cfg.train.spec.min_category_count)
        assert cat.levels == kept


def test_spark_and_numpy_transforms_agree_on_every_test_row(
    splits: tuple[Any, DataFrame, DataFrame], spec: FeatureSpec
) -> None:
    _, _, test = splits
    transformed = SQLTransformer(statement=spec_sql(spec)).transform(test)
    spark_rows = transformed.select(KEY_COLUMN, *spec_columns(spec)).orderBy(KEY_COLUMN).collect()
    from_spark = np.array([list(row)[1:] for row in spark_rows], dtype=np.float64)
    records = _records(test, spec)
    assert [r[KEY_COLUMN] for r in records] == [r[KEY_COLUMN] for r in spark_rows]
    from_numpy = transform_records(spec, records)
    assert from_numpy.shape == (test.count(), len(spec.features))
    np.testing.assert_allclose(from_numpy, from_spark, rtol=0, atol=TOLERANCE)
    assert transformed.columns[-len(spec.features):] == spec.features


def test_missing_nan_and_unseen_values(spec: FeatureSpec) -> None:
    first = spec.numeric[0]
    cat = next(c for c in spec.categorical if c.levels)
    rows = transform_records(
        spec,
        [
            {first.name: None, cat.name: "no such level"},
            {first.name: math.nan, cat.name: None},
            {first.name: 1e300},
            {},
        ],
    )
    column = spec.features.index(first.output)
    imputed = (first.impute - first.mean) / first.std
    assert rows[0, column] == rows[1, column] == rows[3, column] == imputed
    assert rows[2, column] == (first.upper - first.mean) / first.std
    one_hot = [spec.features.index(o) for o in cat.outputs]
    assert not rows[:, one_hot].any()


def test_leaky_and_identifying_columns_cannot_enter(
    splits: tuple[Any, DataFrame, DataFrame], spec: FeatureSpec
) -> None:
    cfg, train, _ = splits
    assert not [n for n in [f.name for f in spec.numeric] if is_leaky(n)]
    leaky = train.withColumn("total_pymnt", F.col("loan_amnt"))
    with pytest.raises(ConfigError, match="total_pymnt"):
        fit_feature_spec(leaky, [*cfg.train.numeric, "total_pymnt"], [], cfg.train.spec)
    with pytest.raises(ConfigError, match="default"):
        fit_feature_spec(train, ["default"], [], cfg.train.spec)
    numeric = NumericFeature(name="recoveries", impute=0, lower=0, upper=1, mean=0, std=1)
    with pytest.raises(ValidationError, match="leak"):
        FeatureSpec(features=[numeric.output], numeric=[numeric], categorical=[])


def test_all_null_columns_are_dropped_not_fatal(
    splits: tuple[Any, DataFrame, DataFrame], spec: FeatureSpec
) -> None:
    cfg, train, test = splits
    with_empty = train.withColumns(
        {
            "mths_since_last_record": F.lit(None).cast("double"),
            "application_type": F.lit(None).cast("string"),
            "policy_code": F.lit(1.0),
        }
    )
    numeric = [*cfg.train.numeric, "mths_since_last_record", "policy_code"]
    categorical = [*cfg.train.categorical, "application_type"]
    fitted = fit_feature_spec(with_empty, numeric, categorical, cfg.train.spec)
    assert {"mths_since_last_record", "application_type"} <= set(fitted.dropped)
    inputs = {f.name for f in fitted.numeric} | {c.name for c in fitted.categorical}
    assert not inputs & set(fitted.dropped)
    # The real sample has no FICO scores: fico_mid is empty and dropped the same way.
    if train.filter(F.col("fico_mid").isNotNull()).isEmpty():
        assert "fico_mid" in fitted.dropped and "fico_mid" in spec.dropped
    constant = next(f for f in fitted.numeric if f.name == "policy_code")
    assert constant.std == 1.0
    with_constant = test.withColumn("policy_code", F.lit(1.0))
    out = SQLTransformer(statement=spec_sql(fitted)).transform(with_constant)
    assert out.filter(F.col("`policy_code:scaled`") != 0).isEmpty()
    with pytest.raises(DataError, match="empty"):
        fit_feature_spec(
            with_empty, ["mths_since_last_record"], ["application_type"], cfg.train.spec
        )


def test_names_with_quotes_and_spaces_round_trip(spark: Any) -> None:
    odd = CategoricalFeature(name="purpose", levels=["it's `odd`", "small business", "a=b\\c"])
    spec = FeatureSpec(features=odd.outputs, numeric=[], categorical=[odd])
    values = [*odd.levels, None, "other"]
    df = spark.createDataFrame([(v,) for v in values], "purpose string")
    transformed = SQLTransformer(statement=spec_sql(spec)).transform(df)
    got = np.array([list(r) for r in transformed.select(*spec_columns(spec)).collect()])
    expected = transform_records(spec, [{"purpose": r["purpose"]} for r in df.collect()])
    np.testing.assert_array_equal(got, expected)
    assert got[:3].tolist() == np.eye(3).tolist()
