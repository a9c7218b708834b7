"""params.yaml model settings as estimators: XGBoost monotone constraints, logistic."""

from __future__ import annotations

from typing import Any

import pytest

from src.core.feature_spec import CategoricalFeature, FeatureSpec, NumericFeature
from src.pipelines.training.classifiers import build_classifier, monotone_vector
from src.utils.errors import ConfigError


def _numeric(name: str) -> NumericFeature:
    return NumericFeature(name=name, impute=0.0, lower=-1.0, upper=1.0, mean=0.0, std=1.0)


SPEC = FeatureSpec(
    features=["int_rate:scaled", "annual_inc:scaled", "dti:scaled", "grade=A", "grade=B"],
    numeric=[_numeric("int_rate"), _numeric("annual_inc"), _numeric("dti")],
    categorical=[CategoricalFeature(name="grade", levels=["A", "B"])],
    dropped=["revol_util"],
)


def test_constraints_follow_the_feature_vector_order() -> None:
    vector = monotone_vector({"annual_inc": -1, "int_rate": 1, "revol_util": 1}, SPEC)
    # revol_util was empty in training and dropped: nothing to constrain; grades stay free.
    assert vector == "(1,-1,0,0,0)"


def test_unknown_or_invalid_constraints_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="fico_typo"):
        monotone_vector({"fico_typo": 1}, SPEC)
    with pytest.raises(ConfigError, match="grade"):
        monotone_vector({"grade": 1}, SPEC)  # categorical: no single direction
    with pytest.raises(ConfigError, match="-1, 0 or 1"):
        monotone_vector({"dti": 2}, SPEC)


def test_estimators_take_their_settings(spark: Any) -> None:
    xgb = build_classifier(
        "xgboost", {"n_estimators": 7, "monotone_constraints": {"dti": 1}}, SPEC, 3, True
    )
    assert xgb.getOrDefault("monotone_constraints") == "(0,0,1,0,0)"
    assert xgb.getOrDefault("n_estimators") == 7 and xgb.getOrDefault("random_state") == 3
    assert xgb.getOrDefault("weightCol") == "class_weight"
    logistic = build_classifier("logistic", {"regParam": 0.1}, SPEC, 3, False)
    assert logistic.getRegParam() == 0.1 and not logistic.isSet("weightCol")
