"""Serving parity: for every loan of a real test split, the API answers as the Spark pipeline.

The requests are built from the raw strings of the real sample (the `raw_<name>` columns that
`classify_rows` keeps), posted through the FastAPI app, and compared with what the bundle's Spark
PipelineModel and the Spark segmentation pipeline give on the processed test split: probability
to 1e-6 and the same risk segment, loan by loan, for each kind of model.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from src.core.raw_schema import KEY_COLUMN
from src.pipelines.evaluation.spark_metrics import positive_probability
from src.pipelines.preparation.cleaning import ROW_CLASS, classify_rows, read_raw
from src.serving.app import create_app
from tests.serving_fixtures import (  # noqa: F401  (fixtures register by name)
    SERVED_MODELS,
    ServingBundles,
    serving_bundles_fixture,
)

TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def test_split(spark: Any, serving_bundles: ServingBundles) -> DataFrame:
    return spark.read.parquet(str(serving_bundles.test_path)).cache()


@pytest.fixture(scope="module")
def raw_requests(spark: Any, serving_bundles: ServingBundles, test_split: DataFrame) -> list[dict]:
    """One request per test loan, from the raw strings of the file, keyed by `id` = loan_key."""
    cfg = serving_bundles.cfg
    prep = cfg.prep
    fields = [*prep.numeric, *prep.categorical, *prep.dates, "issue_d"]
    raw = read_raw(spark, cfg.path(cfg.data.raw_path), prep.multiline_csv)
    # Persisted before filtering, as prep does: a filter over classify_rows' plan sends
    # Catalyst's constraint propagation into a very long search.
    classified = classify_rows(
        raw, prep.numeric, prep.categorical, prep.dates, prep.required
    ).persist(StorageLevel.MEMORY_AND_DISK)
    kept = classified.filter(F.col(ROW_CLASS) == "kept").select(
        KEY_COLUMN, *[F.col(f"raw_{name}").alias(name) for name in fields]
    )
    raw_by_key = {row[KEY_COLUMN]: row.asDict() for row in kept.collect()}
    classified.unpersist()
    keys = [row[KEY_COLUMN] for row in test_split.select(KEY_COLUMN).collect()]
    requests = []
    for key in keys:
        values = raw_by_key[key]
        values.pop(KEY_COLUMN)
        requests.append({"id": key, **{k: v for k, v in values.items() if v is not None}})
    assert len(requests) == len(set(keys)) > 0
    return requests


def _api_answers(serving_bundles: ServingBundles, model: str, requests: list[dict]) -> dict:
    bundle = serving_bundles.bundles[model]
    app = create_app(serving_bundles.cfg, bundle_path=bundle, poll=False)
    batch = serving_bundles.cfg.serving.max_batch
    answers: dict[str, dict] = {}
    with TestClient(app) as client:
        for start in range(0, len(requests), batch):
            chunk = requests[start:start + batch]
            response = client.post("/predict/batch", json={"applications": chunk})
            assert response.status_code == 200, response.text[:2000]
            for prediction in response.json()["predictions"]:
                answers[prediction["id"]] = prediction
    return answers


def _spark_answers(
    serving_bundles: ServingBundles, model: str, test_split: DataFrame
) -> tuple[dict[str, float], dict[str, str]]:
    bundle = serving_bundles.bundles[model]
    pipeline = PipelineModel.load(str(bundle / "spark_model"))
    probabilities = {
        r[KEY_COLUMN]: r["p"]
        for r in pipeline.transform(test_split)
        .select(KEY_COLUMN, positive_probability("probability").alias("p"))
        .collect()
    }
    bands = json.loads((bundle / "segmentation.json").read_text())["bands"]
    segmentation = PipelineModel.load(str(serving_bundles.segmentation_model_path))
    segments = {
        r[KEY_COLUMN]: bands[str(r["prediction"])]
        for r in segmentation.transform(test_split).select(KEY_COLUMN, "prediction").collect()
    }
    return probabilities, segments


@pytest.mark.slow
@pytest.mark.parametrize("model", SERVED_MODELS)
def test_api_equals_spark_on_every_test_loan(
    serving_bundles: ServingBundles, test_split: DataFrame, raw_requests: list[dict], model: str
) -> None:
    answers = _api_answers(serving_bundles, model, raw_requests)
    spark_p, spark_segment = _spark_answers(serving_bundles, model, test_split)
    assert set(answers) == set(spark_p) == set(spark_segment)
    keys = sorted(answers)
    api = np.array([answers[k]["probability_of_default"] for k in keys])
    reference = np.array([spark_p[k] for k in keys])
    diff = np.abs(api - reference)
    worst = keys[int(diff.argmax())]
    assert diff.max() <= TOLERANCE, (model, len(keys), float(diff.max()), worst)
    mismatched = [k for k in keys if answers[k]["risk_segment"] != spark_segment[k]]
    assert mismatched == [], (model, len(mismatched), mismatched[:5])
    # The decisions follow from the probabilities and the bundle's threshold.
    threshold = answers[keys[0]]["threshold"]
    assert all(
        answers[k]["decision"] == ("decline" if answers[k]["probability_of_default"] >= threshold
                                   else "approve")
        for k in keys
    )
