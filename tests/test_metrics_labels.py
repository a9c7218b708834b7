"""/metrics label sets stay bounded whatever methods and paths clients send (issue 11, item 7)."""

from __future__ import annotations

import random
import string

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from src.serving.app import (
    METRIC_METHODS,
    OTHER_METHOD,
    UNMATCHED,
    Metrics,
    ServingMiddleware,
)

ROUTES = ("/health", "/predict", "/items/{item_id}")
REQUESTS = "credit_risk_http_requests"


def _app(metrics: Metrics) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict() -> dict[str, str]:
        return {"decision": "approve"}

    @app.get("/items/{item_id}")
    def item(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    app.add_middleware(ServingMiddleware, max_body_bytes=1024, metrics=metrics)
    return app


def _series(metrics: Metrics) -> list[dict[str, str]]:
    text = generate_latest(metrics.registry).decode()
    return [
        sample.labels
        for family in text_string_to_metric_families(text)
        if family.name == REQUESTS
        for sample in family.samples
        if sample.name == f"{REQUESTS}_total"
    ]


def _random_request(rng: random.Random) -> tuple[str, str]:
    token = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 12)))
    method = rng.choice([token, token, "GET", "POST", "DELETE"])
    segment = "".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(1, 16)))
    path = rng.choice([f"/{segment}", f"/items/{segment}", f"/{segment}/{segment}", "/health"])
    return method, path


def test_random_methods_and_paths_map_onto_a_bounded_label_set() -> None:
    metrics = Metrics()
    rng = random.Random(11)
    counts = []
    with TestClient(_app(metrics)) as client:
        for _ in range(3):
            for _ in range(200):
                method, path = _random_request(rng)
                client.request(method, path)
            counts.append(len(_series(metrics)))
    series = _series(metrics)
    methods = {s["method"] for s in series}
    endpoints = {s["endpoint"] for s in series}
    statuses = {s["status"] for s in series}
    assert methods <= METRIC_METHODS | {OTHER_METHOD} and OTHER_METHOD in methods
    assert endpoints <= {*ROUTES, UNMATCHED} and UNMATCHED in endpoints
    # Every series is one (endpoint, method, status) triple of those bounded sets.
    bound = (len(ROUTES) + 1) * (len(METRIC_METHODS) + 1) * len(statuses)
    print(f"series after 200/400/600 random requests: {counts}; bound {bound}")
    assert counts[-1] <= bound
    assert len(statuses) <= 4  # 200, 404, 405 and perhaps 422: not one per request


def test_known_methods_keep_their_label() -> None:
    metrics = Metrics()
    with TestClient(_app(metrics)) as client:
        client.get("/health")
        client.post("/predict")
        client.request("PURGE", "/health")
    labels = {(s["endpoint"], s["method"], s["status"]) for s in _series(metrics)}
    assert ("/health", "GET", "200") in labels
    assert ("/predict", "POST", "200") in labels
    assert ("/health", OTHER_METHOD, "405") in labels
