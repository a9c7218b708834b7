"""The REST API: `create_app(cfg)` builds a FastAPI app that scores loan applications.

ONNX mode imports neither pyspark nor a JVM: parsing is pure Python (`application.py`), the
probability comes from onnxruntime and the segment from numpy. Run it with `make serve`,
`python -m src.supervisor serve` or `python -m src.serving`.
"""

# No `from __future__ import annotations`: the endpoints are annotated with the request model
# built from params.yaml at run time, which FastAPI must see as a class, not as a string.

import gc
import hmac
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Body, Depends, FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field

from src.core.bundle import Bundle
from src.core.raw_schema import RAW_COLUMNS, is_leaky
from src.core.scorecard import score_points
from src.serving.model_store import (
    Backend,
    LoadedModel,
    ModelStore,
    ScorerFactory,
    make_source,
    onnx_factory,
)
from src.serving.schemas import (
    EXAMPLE_APPLICATION,
    LEAKY_MESSAGE,
    ApplicationBase,
    BatchPrediction,
    Health,
    ModelInfo,
    ModelRef,
    Prediction,
    Ready,
    ReloadResult,
    ThresholdInfo,
    application_model,
    to_parsed,
)
from src.utils.config import Config
from src.utils.logging import get_logger

log = get_logger(component="serving.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Request latency buckets, seconds: the API aims at milliseconds, the Spark backend at seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UNMATCHED = "unmatched"
JSON = "application/json"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# The method label takes these values or OTHER: a client choosing method names must not be able to
# add series to /metrics.
METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"

DESCRIPTION = """
Scores one LendingClub loan application (or a batch) with the registered **champion** model.

**Input.** The origination fields of a LendingClub file, under their LendingClub names and in the
formats the files use: `term` `" 36 months"` or `36`, `int_rate` `13.49` or `"13.49%"`,
`emp_length` `"10+ years"`, months `"Dec-2011"`. Optional fields may be left out (the model
imputes the training median). Unknown fields are refused, and so are the columns LendingClub fills
after the loan is issued (payments, recoveries, `last_*`, …): they would leak the outcome.
Impossible values (negative income, FICO outside 300–850, an unknown grade, …) are a 422.

**Output.** `probability_of_default`, calibrated: the classifier's output mapped through the
model's calibration table (centered isotonic, fitted on held-out training loans), so that among
loans given 0.2 about one in five defaults; `score`, scorecard points of that probability (see
below); `decision` — `decline` when the probability is at or above the model's registered
threshold, else `approve`; `risk_segment`, the risk band of the applicant's segment; the model
name and version.

**Score.** points = base_points + PDO / ln 2 · ln(odds / base_odds), where odds = (1 − p) / p are
the good:bad odds: {base_points:g} points at {base_odds:g}:1 odds, and every {pdo:g} points (PDO)
double the odds. Higher is safer. Configured in `scorecard` of params.yaml.

**Top factors** are occlusion effects: for each model input, the probability of default minus the
probability when that input alone is replaced by its training reference (the training median for a
number, "no level" for a category), all else unchanged. A field that also feeds a derived input is
replaced alone: the `installment` factor holds `installment_to_income` fixed, while a request with
another installment moves both. A positive effect means this applicant's value raises the estimated
risk compared with a typical value. The effects are exact for this model and this application,
computed in one batched model call, but they are not additive, and an input correlated with others
(e.g. `grade`, `sub_grade_ordinal`, `int_rate`) may show a small effect because the others still
carry its information. They explain the model, not the world.
"""


class BatchRequestBase(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- metrics -------------------------------------------------------------------------------------


class Metrics:
    """The app's Prometheus collectors, in a registry of its own (several apps per process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "credit_risk_http_requests_total", "HTTP requests by endpoint, method and status",
            ["endpoint", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "credit_risk_http_request_duration_seconds", "HTTP request latency by endpoint",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.predictions = Counter(
            "credit_risk_predictions_total", "Scored applications by decision", ["decision"],
            registry=self.registry,
        )
        self.model_version = Gauge(
            "credit_risk_model_version", "Version of the served model (0: none loaded)",
            registry=self.registry,
        )
        self.model_loaded = Gauge(
            "credit_risk_model_info", "1 for the served model", ["model", "version", "backend"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "credit_risk_model_reloads_total", "Model reloads by outcome", ["outcome"],
            registry=self.registry,
        )

    def on_reload(self, outcome: str, model: LoadedModel | None) -> None:
        """Store listener: count the reload, point the gauges at the model now served."""
        self.reloads.labels(outcome=outcome).inc()
        if outcome != "loaded" or model is None:
            return
        self.model_loaded.clear()
        self.model_loaded.labels(
            model=model.info.registered_model, version=model.version, backend=model.backend
        ).set(1)
        try:
            self.model_version.set(float(model.version))
        except ValueError:  # a local bundle may carry a non-numeric version
            self.model_version.set(0)


class ServingMiddleware:
    """Body-size limit and request metrics, as plain ASGI (cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if scope["method"] in BODY_METHODS:
                body, refusal = await self._read_body(scope, receive)
                if refusal is not None:
                    await refusal(scope, receive, send_status)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", UNMATCHED)
            method = scope["method"] if scope["method"] in METRIC_METHODS else OTHER_METHOD
            self.metrics.requests.labels(endpoint, method, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, Response | None]:
        limit = self.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return b"", JSONResponse({"detail": "invalid Content-Length header"}, 400)
            if int(declared) > limit:
                return b"", _too_large(int(declared), limit)
        # Without a trustworthy length (chunked upload), count while reading; stop at the limit.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", _too_large(size, limit)
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks), None


def _too_large(size: int, limit: int) -> JSONResponse:
    return JSONResponse(
        {"detail": f"request body of {size} bytes or more is over the limit of {limit} bytes "
                   "(serving.max_body_bytes)"},
        status_code=413,
    )


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# --- validation errors that say why --------------------------------------------------------------


def _field_of(error: dict[str, Any]) -> str:
    ctx = error.get("ctx") or {}
    if "field" in ctx:
        return str(ctx["field"])
    names = [str(p) for p in error.get("loc", ()) if isinstance(p, str) and p != "body"]
    return names[-1] if names else "body"


def explain(error: dict[str, Any]) -> dict[str, Any]:
    """One pydantic error as the API reports it: where, which field, why (no echo of the input)."""
    kind = error.get("type", "")
    field = _field_of(error)
    message = str(error.get("msg", ""))
    if kind == "extra_forbidden":
        if is_leaky(field):
            kind, message = "leaky_field", LEAKY_MESSAGE
        elif field in RAW_COLUMNS:
            kind, message = "unused_field", "a LendingClub column the model does not use; not " \
                                            "allowed as input"
        else:
            message = "unknown field; the accepted fields are listed in /docs"
    elif kind == "missing":
        message = (
            "required; send one application as a JSON object" if field == "body" else "required"
        )
    elif kind == "json_invalid":
        message = f"the body is not valid JSON: {message}"
    explained: dict[str, Any] = {
        "loc": list(error.get("loc", ())),
        "field": field,
        "type": kind,
        "msg": f"{field}: {message}",
    }
    if error.get("ctx") and kind not in ("leaky_field", "unused_field"):
        explained["ctx"] = jsonable_encoder(error["ctx"], custom_encoder={Exception: str})
    return explained


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": [explain(e) for e in exc.errors()]}, status_code=422)


# --- the app -------------------------------------------------------------------------------------


def _lazy_spark_factory(cfg: Config) -> ScorerFactory:
    factory: ScorerFactory | None = None

    def create(bundle: Bundle) -> Any:
        nonlocal factory
        if factory is None:
            # Only here does the Spark backend (and the JVM) get imported.
            from src.serving.spark_backend import spark_factory

            factory = spark_factory(cfg.spark)
        return factory(bundle)

    return create


def build_store(
    cfg: Config, bundle_path: Path | None, backend: Backend, metrics: Metrics
) -> ModelStore:
    """The model store the config names, reporting reloads to `metrics`."""
    factory = (
        onnx_factory(cfg.serving.onnx_threads) if backend == "onnx" else _lazy_spark_factory(cfg)
    )
    return ModelStore(
        make_source(cfg, bundle_path), backend, factory, cfg.serving.poll_interval_s,
        listener=metrics.on_reload,
    )


def create_app(
    cfg: Config,
    *,
    bundle_path: Path | None = None,
    backend: Backend | None = None,
    store: ModelStore | None = None,
    poll: bool = True,
) -> FastAPI:
    """The API for `cfg.serving`; `bundle_path`/`backend` override the config, `store` replaces it.

    The model is loaded when the app starts (lifespan); a failed load leaves the app up but not
    ready, and the poller keeps trying every `serving.poll_interval_s`.
    """
    serving = cfg.serving
    metrics = Metrics()
    chosen: Backend = backend or serving.backend
    model_store = store or build_store(cfg, bundle_path, chosen, metrics)
    if store is not None:
        store.listener = metrics.on_reload
    application = application_model(cfg.prep)
    derived = list(cfg.prep.derived)
    reload_token = os.environ.get(serving.reload_token_env) or None

    class BatchRequest(BatchRequestBase):
        applications: list[application] = Field(  # type: ignore[valid-type]
            min_length=1, max_length=serving.max_batch,
            description=f"1 to {serving.max_batch} applications (serving.max_batch)",
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(model_store.refresh)
        # What is alive now (modules, the model) lives as long as the process: frozen, the cyclic
        # collector stops re-scanning it, which shortens its pauses in the request path.
        gc.collect()
        gc.freeze()
        if poll:
            model_store.start()
        log.info("api.started", backend=chosen, source=model_store.source.uri,
                 ready=model_store.current is not None, reload_enabled=reload_token is not None)
        try:
            yield
        finally:
            model_store.close()

    app = FastAPI(
        title="credit-risk",
        summary="Probability of default and risk segment of a LendingClub loan application",
        description=DESCRIPTION.format(**cfg.scorecard.model_dump()),
        version="1",
        lifespan=lifespan,
    )
    app.add_middleware(ServingMiddleware, max_body_bytes=serving.max_body_bytes, metrics=metrics)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.state.store = model_store
    app.state.metrics = metrics

    def current_model() -> LoadedModel:
        model = model_store.current
        if model is None:
            raise HTTPException(
                status_code=503,
                detail=f"no model loaded yet from {model_store.source.uri}: "
                       f"{model_store.last_error or 'loading'}",
            )
        return model

    def predictions(model: LoadedModel, apps: Sequence[ApplicationBase]) -> list[Prediction]:
        parsed = [to_parsed(a, derived) for a in apps]
        scored = model.scorer.score(parsed, serving.top_factors)
        threshold = model.info.threshold.value
        ref = ModelRef(name=model.info.registered_model, version=model.version)
        points = score_points(np.array([r.probability for r in scored]), cfg.scorecard)
        out = []
        for app_in, result, score_i in zip(parsed, scored, points, strict=True):
            decision: Literal["approve", "decline"] = (
                "decline" if result.probability >= threshold else "approve"
            )
            metrics.predictions.labels(decision).inc()
            out.append(
                Prediction(
                    id=app_in.id,
                    probability_of_default=result.probability,
                    score=float(score_i),
                    decision=decision,
                    threshold=threshold,
                    risk_segment=result.segment,
                    model=ref,
                    top_factors=result.factors,
                )
            )
        return out

    async def score(model: LoadedModel, apps: Sequence[ApplicationBase]) -> list[Prediction]:
        # ONNX answers in well under a millisecond: a thread hand-off would cost more than it
        # saves. The Spark backend blocks for a Spark job, so it runs in the thread pool.
        if model.scorer.blocking:
            return await run_in_threadpool(predictions, model, apps)
        return predictions(model, apps)

    examples = {
        "real": {
            "summary": "A real application (LendingClub 2007–2011 sample)",
            "value": EXAMPLE_APPLICATION,
        },
        "raw_formats": {
            "summary": "Raw formats of the 2007–2020Q3 export, optional fields left out",
            "value": {
                "loan_amnt": "12000", "term": " 60 months", "int_rate": "13.49%",
                "installment": 276.05, "annual_inc": 65000, "grade": "C", "sub_grade": "C1",
                "emp_length": "< 1 year", "revol_util": "29.7%", "home_ownership": "RENT",
                "purpose": "credit_card", "earliest_cr_line": "Dec-2004",
            },
        },
        "leaky": {
            "summary": "Refused: total_pymnt is only known after the loan is issued",
            "value": {**EXAMPLE_APPLICATION, "total_pymnt": 1234.5},
        },
    }

    # The endpoints return JSON they serialized themselves: FastAPI would otherwise validate the
    # response models a second time. `response_model` still documents them.
    @app.post("/predict", tags=["scoring"], summary="Score one loan application",
              response_model=Prediction)
    async def predict(
        body: Annotated[application, Body(openapi_examples=examples)],  # type: ignore[valid-type]
    ) -> Response:
        """Probability of default, decision, risk segment and top factors of one application."""
        model = current_model()  # taken once: a reload during this request does not affect it
        (prediction,) = await score(model, [body])
        return Response(prediction.model_dump_json(), media_type=JSON)

    @app.post(
        "/predict/batch", tags=["scoring"], summary="Score up to serving.max_batch applications",
        response_model=BatchPrediction,
    )
    async def predict_batch(body: BatchRequest) -> Response:
        """One prediction per application, in order; one invalid application refuses the batch."""
        model = current_model()
        batch = BatchPrediction(predictions=await score(model, body.applications))
        return Response(batch.model_dump_json(), media_type=JSON)

    @app.get("/health", tags=["operations"], summary="The process is alive")
    async def health() -> Health:
        """Always ok while the process serves HTTP."""
        return Health(status="ok")

    @app.get(
        "/ready", tags=["operations"], summary="A model is loaded",
        responses={503: {"model": Ready, "description": "no model loaded yet"}},
    )
    async def ready() -> Any:
        """200 with the version when a model is loaded; 503 otherwise."""
        model = model_store.current
        if model is None:
            return JSONResponse(
                Ready(ready=False, detail=model_store.last_error or "loading").model_dump(),
                status_code=503,
            )
        return Ready(ready=True, version=model.version)

    @app.get("/model", tags=["operations"], summary="The model being served")
    async def model_info() -> ModelInfo:
        """Registered name, version, alias, metrics, threshold, features and training time."""
        model = current_model()
        m = model.info
        return ModelInfo(
            registered_model=m.registered_model,
            version=model.version,
            alias=model.alias,
            source=model.source,
            source_model=m.source_model,
            backend=model.backend,
            metrics=m.metrics.model_dump(mode="json"),
            threshold=ThresholdInfo(
                value=m.threshold.value, rule=m.threshold.rule, chosen_on=m.threshold.chosen_on
            ),
            features=m.features,
            trained_at=m.trained_at.isoformat() if m.trained_at else None,
            training_run_id=m.training_run_id,
            loaded_at=model.loaded_at.isoformat(),
        )

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        """Request counts and latency per endpoint, predictions, model version, reloads."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    bearer = HTTPBearer(auto_error=False, description=f"the token in ${serving.reload_token_env}")

    @app.post(
        "/admin/reload", tags=["operations"], summary="Reload the champion now",
        responses={401: {"description": "wrong or missing token"},
                   404: {"description": "disabled: no token configured"}},
    )
    async def reload(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> ReloadResult:
        """Check the registry (or bundle folder) now instead of at the next poll."""
        if reload_token is None:
            raise HTTPException(
                status_code=404,
                detail=f"reload endpoint disabled: ${serving.reload_token_env} is not set",
            )
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), reload_token.encode()):
            raise HTTPException(
                status_code=401, detail="bad or missing bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        reloaded = await run_in_threadpool(model_store.refresh)
        model = model_store.current
        detail = (
            "new model loaded" if reloaded
            else model_store.last_error or "already serving the source's current model"
        )
        log.info("api.reload", reloaded=reloaded, version=model.version if model else None)
        return ReloadResult(reloaded=reloaded, version=model.version if model else None,
                            detail=detail)

    return app


def app_from_env() -> FastAPI:
    """App factory for `uvicorn --factory`: params from $CREDIT_RISK_PARAMS (else params.yaml),
    bundle folder from $CREDIT_RISK_BUNDLE and backend from $CREDIT_RISK_BACKEND when set."""
    from src.utils.config import load_config

    bundle = os.environ.get("CREDIT_RISK_BUNDLE")
    backend = os.environ.get("CREDIT_RISK_BACKEND")
    return create_app(
        load_config(),
        bundle_path=Path(bundle) if bundle else None,
        backend=backend if backend in ("onnx", "spark") else None,  # type: ignore[arg-type]
    )


def serve(
    cfg: Config,
    host: str | None = None,
    port: int | None = None,
    backend: Backend | None = None,
    bundle_path: Path | None = None,
    log_level: str = "info",
) -> None:
    """Run the API with uvicorn (one worker) until interrupted."""
    import uvicorn

    from src.utils.logging import configure_logging

    configure_logging()
    app = create_app(cfg, bundle_path=bundle_path, backend=backend)
    # Access logs off: /metrics counts every request, and a log line each costs latency.
    uvicorn.run(
        app, host=host or cfg.serving.host, port=port if port is not None else cfg.serving.port,
        log_level=log_level, access_log=False,
    )
