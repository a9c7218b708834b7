"""`serving.backend: spark`: the champion scored by its Spark PipelineModel, for comparison only.

Imported only when that backend is chosen: it starts a JVM. The application is parsed exactly as
for ONNX; only the model runs differently (a Spark job per request), so the benchmark compares
the two engines on identical inputs. Top factors are not computed here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pyspark.ml import PipelineModel
from pyspark.sql import SparkSession
from pyspark.sql.types import DoubleType, StringType, StructField, StructType

from src.core.bundle import Bundle
from src.core.feature_spec import FeatureSpec
from src.core.loan import ParsedApplication
from src.serving.model_store import POSITIVE_CLASS, Scored, ScorerFactory, Segmenter
from src.utils.config import SparkConfig
from src.utils.errors import DataError
from src.utils.spark import get_spark

PROBABILITY_COLUMN = "probability"


class SparkScorer:
    """Probability from the bundle's Spark PipelineModel in a live SparkSession."""

    blocking = True

    def __init__(self, spark: SparkSession, bundle: Bundle) -> None:
        model_dir = bundle.spark_model_path
        if not model_dir.is_dir():
            raise DataError(f"{bundle.path}: no {model_dir.name}/ for the Spark backend")
        self.spark = spark
        self.spec = FeatureSpec.model_validate(bundle.spec_json)
        self.model = PipelineModel.load(str(model_dir))
        self.calibration = bundle.calibration
        self.segmenter = Segmenter.load(bundle)
        self.numeric = [f.name for f in self.spec.numeric]
        self.categorical = [c.name for c in self.spec.categorical]
        self.schema = StructType(
            [StructField(n, DoubleType(), True) for n in self.numeric]
            + [StructField(n, StringType(), True) for n in self.categorical]
        )

    def _row(self, app: ParsedApplication) -> tuple[object, ...]:
        v = app.values
        numbers = [v.get(n) for n in self.numeric]
        texts = [v.get(n) for n in self.categorical]
        return (
            *[float(x) if isinstance(x, int | float) else None for x in numbers],
            *[x if isinstance(x, str) else None for x in texts],
        )

    def score(self, apps: Sequence[ParsedApplication], top_factors: int) -> list[Scored]:
        df = self.spark.createDataFrame([self._row(a) for a in apps], self.schema)
        rows = self.model.transform(df).select(PROBABILITY_COLUMN).collect()
        raw = [float(r[PROBABILITY_COLUMN][POSITIVE_CLASS]) for r in rows]
        # The same calibration table as the ONNX backend: both serve calibrated probabilities.
        calibrated = self.calibration.apply(np.asarray(raw, dtype=np.float64))
        bands = self.segmenter.bands(apps)
        return [
            Scored(float(p), band, []) for p, band in zip(calibrated, bands, strict=True)
        ]


def spark_factory(spark_cfg: SparkConfig) -> ScorerFactory:
    """Scorers that run the bundle's Spark model; the SparkSession starts here."""
    spark = get_spark(spark_cfg)
    return lambda bundle: SparkScorer(spark, bundle)
