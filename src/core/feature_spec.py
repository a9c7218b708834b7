"""The feature specification: how a loan becomes the model's numeric vector, fitted on training.

One JSON document (ordered feature names, imputation values, caps, scaling, category encodings)
is the single source of truth: Spark applies it through `spec_sql` inside the saved PipelineModel,
and the serving layer applies it through `transform_records` without Spark. Both give the same
numbers. This module imports no pyspark (serving runs without a JVM); fitting lives in
`spec_fitting.py`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, model_validator

from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN, is_leaky

SPEC_VERSION = 1
# Output names carry a separator no raw column has, so they never clash with the input columns
# that SQLTransformer's `SELECT *` keeps.
SCALED_SUFFIX = ":scaled"
LEVEL_SEPARATOR = "="


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NumericFeature(_Frozen):
    """A numeric input: nulls → `impute`, then capped to [lower, upper], then (x − mean) / std."""

    name: str
    impute: FiniteFloat = Field(description="training median")
    lower: FiniteFloat = Field(description="training lower quantile cap")
    upper: FiniteFloat = Field(description="training upper quantile cap")
    mean: FiniteFloat = Field(description="training mean after impute and caps")
    std: FiniteFloat = Field(gt=0, description="training std after impute and caps; 1 if constant")

    @property
    def output(self) -> str:
        return f"{self.name}{SCALED_SUFFIX}"


class CategoricalFeature(_Frozen):
    """A categorical input: one 0/1 column per kept level; null or unseen levels are all zeros."""

    name: str
    levels: list[str] = Field(description="training levels with enough loans, sorted")

    @property
    def outputs(self) -> list[str]:
        return [f"{self.name}{LEVEL_SEPARATOR}{level}" for level in self.levels]


class FeatureSpec(_Frozen):
    """Ordered output features and every statistic needed to compute them."""

    version: int = SPEC_VERSION
    features: list[str]
    numeric: list[NumericFeature]
    categorical: list[CategoricalFeature]
    dropped: list[str] = Field(default_factory=list, description="inputs empty in training data")

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        inputs = [f.name for f in self.numeric] + [c.name for c in self.categorical]
        forbidden = [n for n in inputs if is_leaky(n) or n in (KEY_COLUMN, LABEL_COLUMN)]
        if forbidden:
            raise ValueError(f"feature spec: {forbidden} leak the label or identify the loan")
        expected = [f.output for f in self.numeric]
        expected += [o for c in self.categorical for o in c.outputs]
        if self.features != expected:
            raise ValueError("feature spec: `features` must list numeric then categorical outputs")
        if len(set(expected)) != len(expected):
            raise ValueError("feature spec: duplicate output feature names")
        if not expected:
            raise ValueError("feature spec: no features")
        return self

    def canonical_json(self) -> str:
        """Sorted-key compact JSON: the bytes the sha256 is taken of."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        """SHA-256 of the canonical JSON, to tell two specs apart."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


# --- Spark transformation ------------------------------------------------------------------------


def quote_identifier(name: str) -> str:
    """Backquote a column name for Spark SQL (names hold `=`, `:` and spaces)."""
    return "`" + name.replace("`", "``") + "`"


def _double_literal(value: float) -> str:
    # repr round-trips exactly and the D suffix makes Spark parse a double, not a decimal.
    return f"{value!r}D"


def _string_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def capped_sql(f: NumericFeature) -> str:
    """SQL of a numeric feature after imputation and caps, before scaling."""
    col = quote_identifier(f.name)
    # NaN counts as missing, as in transform_records.
    imputed = (
        f"CASE WHEN {col} IS NULL OR isnan(CAST({col} AS DOUBLE)) "
        f"THEN {_double_literal(f.impute)} ELSE CAST({col} AS DOUBLE) END"
    )
    return f"least(greatest({imputed}, {_double_literal(f.lower)}), {_double_literal(f.upper)})"


def _numeric_sql(f: NumericFeature) -> str:
    return f"(({capped_sql(f)}) - {_double_literal(f.mean)}) / {_double_literal(f.std)}"


def _level_sql(c: CategoricalFeature, level: str) -> str:
    return (
        f"CASE WHEN CAST({quote_identifier(c.name)} AS STRING) = {_string_literal(level)} "
        "THEN 1.0D ELSE 0.0D END"
    )


def spec_sql(spec: FeatureSpec) -> str:
    """The SQLTransformer statement adding every spec feature as a double column, in spec order."""
    exprs = [f"{_numeric_sql(f)} AS {quote_identifier(f.output)}" for f in spec.numeric]
    exprs += [
        f"{_level_sql(c, level)} AS {quote_identifier(out)}"
        for c in spec.categorical
        for level, out in zip(c.levels, c.outputs, strict=True)
    ]
    return "SELECT *, " + ", ".join(exprs) + " FROM __THIS__"


# --- Pure-Python transformation (serving) --------------------------------------------------------


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _numeric_value(f: NumericFeature, value: object) -> float:
    x = f.impute if _is_missing(value) else float(value)  # type: ignore[arg-type]
    x = min(max(x, f.lower), f.upper)
    return (x - f.mean) / f.std


def transform_records(spec: FeatureSpec, records: Sequence[Mapping[str, object]]) -> np.ndarray:
    """Feature matrix (rows × spec.features) of parsed records, no Spark; absent keys are null."""
    matrix = np.zeros((len(records), len(spec.features)), dtype=np.float64)
    for i, record in enumerate(records):
        values = [_numeric_value(f, record.get(f.name)) for f in spec.numeric]
        for c in spec.categorical:
            raw = record.get(c.name)
            level = None if raw is None else str(raw)
            values.extend(1.0 if level == kept else 0.0 for kept in c.levels)
        matrix[i] = values
    return matrix
