"""The REST API on a real bundle: endpoints, raw formats, refusals with reasons, limits, reload."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from src.core.loan import DERIVED, LOAN_COLUMNS
from src.core.raw_schema import RAW_COLUMNS
from src.serving.app import create_app
from src.serving.schemas import EXAMPLE_APPLICATION, LEAKY_MESSAGE
from src.utils.config import load_config
from tests.serving_fixtures import (  # noqa: F401  (fixtures register by name)
    ServingBundles,
    serving_bundles_fixture,
)

REPO = Path(__file__).resolve().parents[1]
TOKEN_ENV = "CREDIT_RISK_RELOAD_TOKEN"
AUTH = {"Authorization": "Bearer s3cret"}
MAX_BATCH = 5
MAX_BODY = 64 * 1024
# Hot reload under load: how long the request threads run and how many threads.
LOAD_SECONDS = 3.0
LOAD_THREADS = 4
SCORE_ROWS = 200


def _config(bundles: ServingBundles, **serving: Any) -> Any:
    overrides = {"serving": {"max_batch": MAX_BATCH, "max_body_bytes": MAX_BODY, **serving}}
    return load_config(bundles.cfg.root / "params.yaml", overrides=overrides)


@pytest.fixture(scope="module")
def client(serving_bundles: ServingBundles) -> Iterator[TestClient]:
    app = create_app(_config(serving_bundles), bundle_path=serving_bundles.api_bundle, poll=False)
    with TestClient(app) as test_client:
        yield test_client


def _errors(response: httpx.Response) -> list[dict[str, Any]]:
    detail = response.json()["detail"]
    assert isinstance(detail, list), detail
    return detail


# --- operations endpoints ------------------------------------------------------------------------


def test_health_ready_and_model(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "version": "1",
                                                         "detail": None}
    info = client.get("/model").json()
    assert info["registered_model"] == "credit-risk-default" and info["version"] == "1"
    assert info["source_model"] == "random_forest" and info["backend"] == "onnx"
    assert info["threshold"]["value"] == 0.5 and info["threshold"]["rule"] == "f1"
    assert info["features"] and all(":" in f or "=" in f for f in info["features"])
    assert info["metrics"]["test"]["auc_roc"] == 0.5 and info["trained_at"].startswith("2024-01-01")


def test_not_ready_without_a_bundle(serving_bundles: ServingBundles, tmp_path: Path) -> None:
    app = create_app(_config(serving_bundles), bundle_path=tmp_path / "nothing", poll=False)
    with TestClient(app) as test_client:
        assert test_client.get("/health").status_code == 200
        ready = test_client.get("/ready")
        assert ready.status_code == 503 and "serving.json" in ready.json()["detail"]
        response = test_client.post("/predict", json=EXAMPLE_APPLICATION)
        assert response.status_code == 503 and "no model loaded" in response.json()["detail"]


def test_docs_carry_the_real_example(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["examples"]["real"]["value"] == EXAMPLE_APPLICATION
    assert "Top factors" in schema["info"]["description"]
    assert client.get("/docs").status_code == 200


def test_docs_explain_the_calibrated_probability_and_the_score(
    client: TestClient, serving_bundles: ServingBundles
) -> None:
    schema = client.get("/openapi.json").json()
    fields = schema["components"]["schemas"]["Prediction"]["properties"]
    assert "calibrat" in fields["probability_of_default"]["description"]
    assert "points" in fields["score"]["description"] and "double" in fields["score"]["description"]
    scaling = serving_bundles.cfg.scorecard
    # The description states the configured scaling, not a copy of the defaults.
    assert (f"{scaling.base_points:g} points at {scaling.base_odds:g}:1 odds, and every "
            f"{scaling.pdo:g} points") in " ".join(schema["info"]["description"].split())


# --- /predict ------------------------------------------------------------------------------------


def test_predict_the_real_application(client: TestClient) -> None:
    response = client.post("/predict", json={**EXAMPLE_APPLICATION, "id": 1077501})
    assert response.status_code == 200, response.text
    out = response.json()
    p = out["probability_of_default"]
    assert 0 < p < 1 and out["id"] == "1077501"
    assert out["decision"] == ("decline" if p >= out["threshold"] else "approve")
    # Points of the same probability, as the scorecard module computes them.
    from src.core.scorecard import score_points

    assert out["score"] == float(score_points(np.array([p]), load_config(REPO / "params.yaml")
                                              .scorecard)[0])
    assert out["model"] == {"name": "credit-risk-default", "version": "1"}
    assert out["risk_segment"] in {"very_low", "low", "medium", "high", "very_high", "extreme"}
    factors = out["top_factors"]
    assert 1 <= len(factors) <= 3
    effects = [abs(f["effect"]) for f in factors]
    assert effects == sorted(effects, reverse=True)
    for f in factors:
        assert f["direction"] == ("raises_risk" if f["effect"] > 0 else "lowers_risk")


def test_top_factors_are_occlusion_effects(serving_bundles: ServingBundles) -> None:
    """Replacing a factor's input by its reference moves the probability by exactly the effect.

    Only numeric inputs that are one feature and nothing else: replacing `installment` also moves
    `installment_to_income`, which the factor holds fixed, and `emp_length`'s reference is in
    years, not the text the field takes. Every served model's factors count.
    """
    feeds_derived = {name for derived in DERIVED.values() for name in derived.inputs}
    numbers = {name for name, col in LOAN_COLUMNS.items() if col.kind in ("number", "percent")}
    checked = []
    for bundle in serving_bundles.bundles.values():
        app = create_app(_config(serving_bundles), bundle_path=bundle, poll=False)
        with TestClient(app) as model_client:
            out = model_client.post("/predict", json=EXAMPLE_APPLICATION).json()
            for factor in out["top_factors"]:
                name = factor["feature"]
                plain = name in numbers and name not in feeds_derived
                if not (plain and isinstance(factor["reference"], float)):
                    continue
                occluded = {**EXAMPLE_APPLICATION, name: factor["reference"]}
                answer = model_client.post("/predict", json=occluded)
                assert answer.status_code == 200, (bundle.name, name, answer.text)
                p = answer.json()["probability_of_default"]
                assert out["probability_of_default"] - p == pytest.approx(
                    factor["effect"], abs=1e-7
                ), (bundle.name, name)
                checked.append((bundle.name, name))
    assert checked, "no served model's top factor is a plain numeric input: nothing was checked"


def test_raw_formats_give_the_same_answer(client: TestClient) -> None:
    base = client.post("/predict", json=EXAMPLE_APPLICATION).json()["probability_of_default"]
    variants = [
        {"term": 36},
        {"term": "36 months"},
        {"int_rate": "17.27%"},
        {"int_rate": "17.27"},
        {"revol_util": "38.2%"},
        {"loan_amnt": "20000"},
        {"emp_length": " 10+ years "},
        {"earliest_cr_line": "sep-1993"},
        {"grade": " D "},
    ]
    for change in variants:
        response = client.post("/predict", json={**EXAMPLE_APPLICATION, **change})
        assert response.status_code == 200, (change, response.text)
        assert response.json()["probability_of_default"] == base, change


def test_optional_fields_may_be_absent(client: TestClient) -> None:
    minimal = {"loan_amnt": 5000, "term": " 60 months", "int_rate": "16.77%", "grade": "D",
               "sub_grade": "D2"}
    response = client.post("/predict", json=minimal)
    assert response.status_code == 200, response.text
    blanks = {**EXAMPLE_APPLICATION, "emp_length": "n/a", "revol_util": "", "dti": None}
    assert client.post("/predict", json=blanks).status_code == 200


@pytest.mark.parametrize(
    "field", ["total_pymnt", "recoveries", "last_pymnt_d", "loan_status", "out_prncp",
              "hardship_flag", "debt_settlement_flag", "pymnt_plan"],
)
def test_post_origination_fields_are_refused_with_why(client: TestClient, field: str) -> None:
    response = client.post("/predict", json={**EXAMPLE_APPLICATION, field: "1"})
    assert response.status_code == 422
    (error,) = _errors(response)
    assert error["field"] == field and error["type"] == "leaky_field"
    assert error["msg"] == f"{field}: {LEAKY_MESSAGE}"


def test_unknown_and_unused_fields_are_refused(client: TestClient) -> None:
    unknown = client.post("/predict", json={**EXAMPLE_APPLICATION, "favourite_colour": "red"})
    assert unknown.status_code == 422
    assert _errors(unknown)[0]["field"] == "favourite_colour"
    assert "unknown field" in _errors(unknown)[0]["msg"]
    unused = client.post("/predict", json={**EXAMPLE_APPLICATION, "emp_title": "nurse"})
    assert unused.status_code == 422
    assert _errors(unused)[0]["type"] == "unused_field"
    assert "does not use" in _errors(unused)[0]["msg"]


@pytest.mark.parametrize(
    ("change", "field", "why"),
    [
        ({"annual_inc": -1}, "annual_inc", "cannot be negative"),
        ({"fico_range_low": 200, "fico_range_high": 204}, "fico_range_low", "FICO scale"),
        ({"fico_range_low": 700, "fico_range_high": 900}, "fico_range_high", "FICO scale"),
        ({"fico_range_low": 720, "fico_range_high": 700}, "fico_range_low", "above"),
        ({"grade": "H"}, "grade", "not a LendingClub grade"),
        ({"sub_grade": "D7"}, "sub_grade", "not a LendingClub sub-grade"),
        ({"sub_grade": "B3"}, "sub_grade", "not within grade"),
        ({"loan_amnt": 0}, "loan_amnt", "must be positive"),
        ({"loan_amnt": -500}, "loan_amnt", "must be positive"),
        ({"term": 48}, "term", "36 or 60"),
        ({"term": " 48 months"}, "term", "36 or 60"),
        ({"int_rate": 120}, "int_rate", "between 0 and 100"),
        ({"int_rate": "-3%"}, "int_rate", "between 0 and 100"),
        ({"int_rate": "high"}, "int_rate", "cannot parse"),
        ({"emp_length": "a decade"}, "emp_length", "cannot parse"),
        ({"earliest_cr_line": "Smarch-1993"}, "earliest_cr_line", "cannot parse"),
        ({"earliest_cr_line": "Jan-2012"}, "earliest_cr_line", "after the issue month"),
        ({"open_acc": -2}, "open_acc", "cannot be negative"),
        ({"dti": True}, "dti", "expected a number"),
        ({"purpose": 7}, "purpose", "expected text"),
        # Only the formats of the files: what batch scoring refuses, the API refuses too.
        ({"emp_length": 10}, "emp_length", "expected text"),
        ({"issue_d": "2011-12"}, "issue_d", "cannot parse"),
        ({"earliest_cr_line": "1993-09"}, "earliest_cr_line", "cannot parse"),
        ({"loan_amnt": None}, "loan_amnt", "required"),
        ({"int_rate": "n/a"}, "int_rate", "required"),
        ({"grade": ""}, "grade", "required"),
        ({"loan_amnt": "1e400"}, "loan_amnt", "finite"),
    ],
)
def test_impossible_values_are_a_422_naming_the_field(
    client: TestClient, change: dict[str, Any], field: str, why: str
) -> None:
    response = client.post("/predict", json={**EXAMPLE_APPLICATION, **change})
    assert response.status_code == 422, response.text
    errors = _errors(response)
    assert any(e["field"] == field and why in e["msg"] and e["msg"].startswith(field)
               for e in errors), errors


def test_required_fields(client: TestClient) -> None:
    body = {k: v for k, v in EXAMPLE_APPLICATION.items() if k not in ("loan_amnt", "sub_grade")}
    response = client.post("/predict", json=body)
    assert response.status_code == 422
    assert {(e["field"], e["msg"]) for e in _errors(response)} == {
        ("loan_amnt", "loan_amnt: required"), ("sub_grade", "sub_grade: required")
    }


# --- /predict/batch ------------------------------------------------------------------------------


def test_batch_matches_single_predictions(client: TestClient) -> None:
    apps = [
        {**EXAMPLE_APPLICATION, "id": "a"},
        {**EXAMPLE_APPLICATION, "id": "b", "int_rate": "7.5%", "grade": "A", "sub_grade": "A3"},
        {**EXAMPLE_APPLICATION, "id": "c", "annual_inc": 250000},
    ]
    response = client.post("/predict/batch", json={"applications": apps})
    assert response.status_code == 200, response.text
    batch = response.json()["predictions"]
    assert [p["id"] for p in batch] == ["a", "b", "c"]
    for app_in, out in zip(apps, batch, strict=True):
        assert client.post("/predict", json=app_in).json() == out


def test_batch_limits(client: TestClient) -> None:
    too_many = client.post("/predict/batch", json={"applications": [EXAMPLE_APPLICATION] * 6})
    assert too_many.status_code == 422
    assert _errors(too_many)[0]["field"] == "applications"
    assert "at most 5" in _errors(too_many)[0]["msg"]
    empty = client.post("/predict/batch", json={"applications": []})
    assert empty.status_code == 422
    one_bad = [EXAMPLE_APPLICATION, {**EXAMPLE_APPLICATION, "total_rec_int": 10}]
    refused = client.post("/predict/batch", json={"applications": one_bad})
    assert refused.status_code == 422
    (error,) = _errors(refused)
    assert error["loc"] == ["body", "applications", 1, "total_rec_int"]
    assert error["type"] == "leaky_field"


# --- bad bodies ----------------------------------------------------------------------------------


def test_bad_bodies_get_a_4xx_never_a_5xx(client: TestClient) -> None:
    json_headers = {"content-type": "application/json"}
    cases: list[tuple[str, bytes, dict[str, str], int | None]] = [
        ("/predict", b"", json_headers, 422),
        ("/predict", b"{", json_headers, 422),
        ("/predict", b"{'loan_amnt': 1}", json_headers, 422),
        ("/predict", b"[]", json_headers, 422),
        ("/predict", b"null", json_headers, 422),
        ("/predict", b'"loan"', json_headers, 422),
        ("/predict", b"12", json_headers, 422),
        ("/predict", b'{"loan_amnt": NaN}', json_headers, 422),
        ("/predict", b'{"loan_amnt": 1e999}', json_headers, 422),
        ("/predict", json.dumps({**EXAMPLE_APPLICATION, "loan_amnt": [1]}).encode(),
         json_headers, 422),
        ("/predict", json.dumps({**EXAMPLE_APPLICATION, "grade": {"a": 1}}).encode(),
         json_headers, 422),
        ("/predict", json.dumps({**EXAMPLE_APPLICATION, "id": "x" * 100}).encode(),
         json_headers, 422),
        ("/predict", b"\xff\xfe\x00garbage", json_headers, 422),
        ("/predict", json.dumps({**EXAMPLE_APPLICATION, "id": "\ud800"}).encode(),
         json_headers, 422),
        ("/predict", json.dumps({**EXAMPLE_APPLICATION, "purpose": "\ud800"}).encode(),
         json_headers, 422),
        ("/predict", json.dumps({**EXAMPLE_APPLICATION, "loan_amnt": 10**400}).encode(),
         json_headers, 422),
        ("/predict", b'{"loan_amnt": 1' + b"0" * 5000 + b"}", json_headers, None),
        ("/predict", json.dumps({**EXAMPLE_APPLICATION, "emp_length": 10**400}).encode(),
         json_headers, 422),
        ("/predict", json.dumps(EXAMPLE_APPLICATION).encode(), {"content-type": "text/plain"},
         None),
        ("/predict", b"x" * (10 * 1024 * 1024), json_headers, 413),
        ("/predict/batch", b"", json_headers, 422),
        ("/predict/batch", b'{"applications": {}}', json_headers, 422),
        ("/predict/batch", b"[" * 5000 + b"]" * 5000, json_headers, None),
    ]
    for path, body, headers, expected in cases:
        response = client.post(path, content=body, headers=headers)
        assert 400 <= response.status_code < 500, (path, body[:40], response.status_code)
        if expected is not None:
            assert response.status_code == expected, (body[:40], response.text[:300])


def test_body_limit_without_content_length(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 4096

    response = client.post(
        "/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and "max_body_bytes" in response.json()["detail"]


# --- metrics -------------------------------------------------------------------------------------


def test_metrics_count_requests_latency_version_and_reloads(client: TestClient) -> None:
    client.post("/predict", json=EXAMPLE_APPLICATION)
    client.post("/predict", json={})
    text = client.get("/metrics").text
    assert 'credit_risk_http_requests_total{endpoint="/predict",method="POST",status="200"}' in text
    assert 'credit_risk_http_requests_total{endpoint="/predict",method="POST",status="422"}' in text
    assert 'credit_risk_http_request_duration_seconds_bucket{endpoint="/predict",le="0.01"}' in text
    assert "credit_risk_model_version 1.0" in text
    assert 'credit_risk_model_reloads_total{outcome="loaded"} 1.0' in text
    assert 'credit_risk_model_info{backend="onnx",model="credit-risk-default",version="1"}' in text


# --- reload --------------------------------------------------------------------------------------


def test_reload_endpoint_is_disabled_without_a_token(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert os.environ.get(TOKEN_ENV) is None
    response = client.post("/admin/reload", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 404 and TOKEN_ENV in response.json()["detail"]


def _copy_bundle(source: Path, target: Path, version: str) -> None:
    """An atomic replacement of bundle folder `target` by `source`, with serving.json's version."""
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("spark_model"))
    info = json.loads((staging / "serving.json").read_text())
    (staging / "serving.json").write_text(json.dumps({**info, "version": version}))
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


class ServerThread:
    """A real uvicorn server on 127.0.0.1 in a thread, for requests in flight during a swap."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _hammer(url: str, stop: threading.Event, seen: list[str], failures: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        while not stop.is_set():
            try:
                response = http.post("/predict", json=EXAMPLE_APPLICATION)
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
                else:
                    seen.append(response.json()["model"]["version"])
            except httpx.HTTPError as exc:
                failures.append(repr(exc))


def test_hot_reload_under_load_has_no_failed_request(
    serving_bundles: ServingBundles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Swap the bundle back and forth while requests run: zero errors, both versions served."""
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    live = tmp_path / "registered"
    _copy_bundle(serving_bundles.bundles["random_forest"], live, "1")
    cfg = _config(serving_bundles, poll_interval_s=0.05)
    app = create_app(cfg, bundle_path=live)
    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()
    with ServerThread(app) as url:
        threads = [threading.Thread(target=_hammer, args=(url, stop, seen, failures), daemon=True)
                   for _ in range(LOAD_THREADS)]
        for t in threads:
            t.start()
        swaps = 0
        deadline = time.monotonic() + LOAD_SECONDS
        try:
            with httpx.Client(base_url=url, timeout=30) as admin:
                assert admin.post("/admin/reload").status_code == 401
                wrong = admin.post("/admin/reload", headers={"Authorization": "Bearer nope"})
                assert wrong.status_code == 401
                while time.monotonic() < deadline:
                    swaps += 1
                    name, version = ("gbt", "2") if swaps % 2 else ("random_forest", "1")
                    _copy_bundle(serving_bundles.bundles[name], live, version)
                    if swaps % 3 == 0:  # the admin endpoint, the poller otherwise
                        reload = admin.post("/admin/reload", headers=AUTH)
                        assert reload.status_code == 200, reload.text
                    time.sleep(0.2)
                _copy_bundle(serving_bundles.bundles["gbt"], live, "7")
                reload = admin.post("/admin/reload", headers=AUTH)
                # The poller may have been first: either way version 7 is live now.
                assert reload.status_code == 200 and reload.json()["version"] == "7"
                assert admin.post("/admin/reload", headers=AUTH).json()["reloaded"] is False
                assert admin.get("/model").json()["source_model"] == "gbt"
                reloads = admin.get("/metrics").text
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
    assert failures == [], failures[:5]
    assert len(seen) > LOAD_THREADS * 10 and {"1", "2"} <= set(seen), (len(seen), set(seen))
    assert swaps >= 4
    assert 'credit_risk_model_reloads_total{outcome="loaded"}' in reloads


def test_champion_alias_move_is_served_without_restart(
    serving_bundles: ServingBundles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real MLflow registry (SQLite): moving @champion from v1 to v2 is picked up by polling."""
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "mlflow.db"
    cfg = load_config(
        serving_bundles.cfg.root / "params.yaml",
        overrides={
            "mlflow": {"tracking_uri": f"sqlite:///{db}"},
            "serving": {"poll_interval_s": 0.2, "bundle_path": None,
                        "model_uri": "models:/credit-risk-default@champion"},
        },
    )
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    registry = MlflowClient()
    registry.create_registered_model("credit-risk-default")
    for version, name in (("1", "random_forest"), ("2", "gbt")):
        folder = tmp_path / f"v{version}"
        _copy_bundle(serving_bundles.bundles[name], folder, version)
        registry.create_model_version("credit-risk-default", source=str(folder))
    registry.set_registered_model_alias("credit-risk-default", "champion", "1")
    app = create_app(cfg)
    with TestClient(app) as test_client:
        info = test_client.get("/model").json()
        assert (info["version"], info["alias"], info["source_model"]) == ("1", "champion",
                                                                           "random_forest")
        registry.set_registered_model_alias("credit-risk-default", "champion", "2")
        deadline = time.monotonic() + 30
        while test_client.get("/model").json()["version"] != "2":
            assert time.monotonic() < deadline, "the alias move was not picked up"
            time.sleep(0.1)
        out = test_client.post("/predict", json=EXAMPLE_APPLICATION).json()
        assert out["model"]["version"] == "2"
        assert test_client.get("/model").json()["source_model"] == "gbt"


# --- no Spark in ONNX mode -----------------------------------------------------------------------


def test_onnx_mode_imports_no_pyspark(serving_bundles: ServingBundles) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from fastapi.testclient import TestClient
        from src.serving.app import create_app
        from src.serving.schemas import EXAMPLE_APPLICATION
        from src.utils.config import load_config

        cfg = load_config({str(serving_bundles.cfg.root / "params.yaml")!r})
        app = create_app(cfg, bundle_path={str(serving_bundles.api_bundle)!r}, poll=False)
        with TestClient(app) as client:
            response = client.post("/predict", json=EXAMPLE_APPLICATION)
            assert response.status_code == 200, response.text
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("pyspark", "py4j"))
        print("HEAVY", heavy)
        assert not heavy, heavy
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


# --- calibration and points ----------------------------------------------------------------------


def _calibrated_copy(source: Path, target: Path, table: Any) -> Path:
    """The bundle at `source` with a calibration table, recorded in serving.json."""
    from src.core.bundle import CALIBRATION_FILE, calibration_sha256

    shutil.copytree(source, target)
    (target / CALIBRATION_FILE).write_text(table.model_dump_json(indent=2))
    serving = json.loads((target / "serving.json").read_text())
    serving["calibration_sha256"] = calibration_sha256(table)
    (target / "serving.json").write_text(json.dumps(serving, indent=2))
    return target


def test_a_calibrated_bundle_serves_calibrated_probabilities_and_points(
    serving_bundles: ServingBundles, tmp_path: Path
) -> None:
    from src.core.calibration import Calibration
    from src.core.scorecard import score_points

    # A steep table, far from the identity: any path that skipped it would show.
    table = Calibration(boundaries=[0.0, 0.3, 0.5, 0.7, 1.0],
                        predictions=[0.01, 0.04, 0.12, 0.3, 0.6], fitted_on="test", rows=5)
    folder = _calibrated_copy(serving_bundles.api_bundle, tmp_path / "calibrated", table)
    cfg = _config(serving_bundles, top_factors=3)
    applications = [EXAMPLE_APPLICATION,
                    {**EXAMPLE_APPLICATION, "int_rate": "7.5%", "sub_grade": "A2", "grade": "A"},
                    {**EXAMPLE_APPLICATION, "annual_inc": 12000, "dti": 29.0}]
    answers = {}
    for name, bundle in (("raw", serving_bundles.api_bundle), ("calibrated", folder)):
        with TestClient(create_app(cfg, bundle_path=bundle, poll=False)) as test_client:
            response = test_client.post("/predict/batch", json={"applications": applications})
            assert response.status_code == 200, response.text
            answers[name] = response.json()["predictions"]
    raw = np.array([a["probability_of_default"] for a in answers["raw"]])
    expected = table.apply(raw)
    got = np.array([a["probability_of_default"] for a in answers["calibrated"]])
    print(f"raw {raw.round(4)} → calibrated {got.round(4)}")
    assert np.abs(got - expected).max() <= 1e-12
    assert [a["score"] for a in answers["calibrated"]] == score_points(expected,
                                                                       cfg.scorecard).tolist()
    for a in answers["calibrated"]:
        assert a["decision"] == ("decline" if a["probability_of_default"] >= a["threshold"]
                                 else "approve")


def test_a_calibration_table_that_does_not_match_serving_json_is_refused(
    serving_bundles: ServingBundles, tmp_path: Path
) -> None:
    from src.core.bundle import CALIBRATION_FILE, read_bundle
    from src.core.calibration import Calibration
    from src.utils.errors import DataError

    table = Calibration(boundaries=[0.0, 1.0], predictions=[0.1, 0.2])
    folder = _calibrated_copy(serving_bundles.api_bundle, tmp_path / "tampered", table)
    other = Calibration(boundaries=[0.0, 1.0], predictions=[0.1, 0.3])
    (folder / CALIBRATION_FILE).write_text(other.model_dump_json())
    with pytest.raises(DataError, match=r"calibration\.json does not match"):
        read_bundle(folder)


# --- the score command ---------------------------------------------------------------------------


def test_score_command_runs_the_agent_and_writes_the_report(
    spark: Any, serving_bundles: ServingBundles, sample_path: Path, tmp_path: Path
) -> None:
    """`credit-risk score`: ScoreRequest → ServingAgent → reports/score.json, events logged."""
    import csv
    import gzip

    from src.contracts import ScoreResult
    from src.supervisor import main
    from src.utils.stage_reports import read_stage_report

    # Records, not lines: free-text fields may hold quoted newlines.
    with gzip.open(sample_path, "rt", newline="") as handle:
        records = [row for _, row in zip(range(SCORE_ROWS + 1), csv.reader(handle), strict=False)]
    raw = tmp_path / "new_loans.csv"
    with raw.open("w", newline="") as out:
        csv.writer(out).writerows(records)
    params = serving_bundles.cfg.root / "params.yaml"
    output = tmp_path / "predictions"
    code = main(["--params", str(params), "score", "--input", str(raw), "--output", str(output),
                 "--model", str(serving_bundles.api_bundle), "--run-id", "score-test",
                 "--format", "csv"])
    assert code == 0
    report = serving_bundles.cfg.report_path("score")
    result = read_stage_report(report, ScoreResult)
    assert result.run_id == "score-test" and result.scored_rows + result.unscored_rows == SCORE_ROWS
    assert result.format == "csv" and result.output == str(output)
    # Records, not lines: a quoted reason may span lines.
    parts = sorted(output.glob("part-*.csv"))
    assert len(parts) == result.output_files >= 1
    assert sum(len(pd.read_csv(p, dtype={"id": str})) for p in parts) == SCORE_ROWS
    log = (serving_bundles.cfg.path("logs") / "pipeline.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in log if '"score-test"' in line]
    assert {"stage.start", "stage.done"} <= {e["event"] for e in events}
    assert all(e["stage"] == "score" and e["agent"] == "ServingAgent" for e in events
               if e["event"].startswith("stage."))


def test_score_command_bad_input_exits_2_naming_the_file(
    spark: Any, serving_bundles: ServingBundles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing input, a file that is no loan export, an output that is a file: exit 2."""
    from src.supervisor import main

    params = serving_bundles.cfg.root / "params.yaml"
    not_loans = tmp_path / "not_loans.csv"
    not_loans.write_text("a,b\n1,2\n")
    good = tmp_path / "loans.csv"
    good.write_text(",".join(RAW_COLUMNS) + "\n")
    taken = tmp_path / "taken.parquet"
    taken.write_text("a file, not a folder")
    cases = [
        (tmp_path / "absent.csv.gz", tmp_path / "out1", "does not exist"),
        (not_loans, tmp_path / "out2", "header lacks"),
        (good, taken, "is a file"),
    ]
    for source, output, message in cases:
        code = main(["--params", str(params), "score", "--input", str(source),
                     "--output", str(output), "--model", str(serving_bundles.api_bundle)])
        err = capsys.readouterr().err
        assert code == 2, (source, err)
        # Logs go to stderr too; the error is its one last line.
        line = err.strip().splitlines()[-1]
        assert line.startswith("error:") and message in line
        assert str(source if message != "is a file" else output) in line
        assert not output.is_dir()
