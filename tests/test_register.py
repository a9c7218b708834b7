"""register on the real 8000-loan subsample: real Spark models, real ONNX, real MLflow stores.

The small models of the session's `trained_project` are registered into its embedded SQLite store
and into a real `mlflow server` started by the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from src.agents.registry_agent import RegistryAgent
from src.contracts import (
    EvaluateResult,
    FetchResult,
    RegisterRequest,
    RegisterResult,
    SplitResult,
    TrainSupResult,
    TrainUnsupResult,
)
from src.core.bundle import (
    CALIBRATION_FILE,
    CARD_FILE,
    MODEL_FILE,
    SEGMENTATION_FILE,
    SERVING_FILE,
    SPEC_FILE,
    load_bundle,
    read_bundle,
)
from src.core.raw_schema import KEY_COLUMN
from src.pipelines.registry.client import Registry
from src.pipelines.registry.decision import CHALLENGER, CHAMPION, Floor, decide
from src.pipelines.training.references import SUB_GRADE_REFERENCE
from src.utils.config import RetryConfig
from src.utils.errors import PermanentError, TransientError
from src.utils.tracking import TRACKING_URI_ENV
from tests.mlflow_server import MlflowServer, free_port

pytestmark = pytest.mark.slow

# This module's registered models and bundles, inside the session's trained project. The
# sub_grade floor is off for the plumbing tests (small models may not beat the lender's grade);
# test_below_the_floor_is_challenger_only turns it on.
REGISTER: dict[str, Any] = {
    "model_name": "register-test-embedded",
    "bundle_dir": "models/register_test/bundle",
    "floor_reference": None,
}
ONNX_PARITY = 1e-5
# A server that is up at once: a handful of quick tries; one that comes up late: ~60 s of tries
# (a cold `mlflow server` start takes ~30 s on two cores).
FAST_FAIL_RETRY = {"attempts": 3, "backoff_initial_s": 0.1, "backoff_max_s": 0.2}
LATE_SERVER_RETRY = {"attempts": 40, "backoff_initial_s": 0.5, "backoff_max_s": 2.0}
LATE_START_S = 3.0


@dataclass(frozen=True)
class Upstream:
    """A project where split, train_sup, train_unsup and evaluate ran (small models)."""

    cfg: Any
    split: SplitResult
    train_sup: TrainSupResult
    train_unsup: TrainUnsupResult
    evaluate: EvaluateResult
    fetch: FetchResult

    def config(self, retry: dict[str, float] | None = None, **register: Any) -> Any:
        """This project's config with other `register` settings and `supervisor.retry`."""
        update: dict[str, Any] = {"registry": self.cfg.registry.model_copy(update=register)}
        if retry is not None:
            update["supervisor"] = self.cfg.supervisor.model_copy(
                update={"retry": RetryConfig(**retry)}
            )
        return self.cfg.model_copy(update=update)

    def request(self, best_model: str | None = None) -> RegisterRequest:
        """The register request, optionally with another model forced as the best."""
        evaluate = self.evaluate
        if best_model is not None:
            evaluate = evaluate.model_copy(update={"best_model": best_model})
        return RegisterRequest(
            test=self.split.test, train_sup=self.train_sup, train_unsup=self.train_unsup,
            evaluate=evaluate, split=self.split, fetch=self.fetch,
        )

    def worst_model(self) -> str:
        metric = self.evaluate.primary_metric
        models = [e for e in self.evaluate.evaluations.values() if e.kind == "model"]
        return min(models, key=lambda e: getattr(e.test, metric)).name


def upstream_of(trained_project: Any, **register: Any) -> Upstream:
    """The session's trained project (conftest `trained_project`) as this module's Upstream."""
    from src.supervisor import load_result

    results = {s: load_result(trained_project, s)
               for s in ("split", "train_sup", "train_unsup", "evaluate", "fetch")}
    assert isinstance(results["split"], SplitResult)
    assert isinstance(results["train_sup"], TrainSupResult)
    assert isinstance(results["train_unsup"], TrainUnsupResult)
    assert isinstance(results["evaluate"], EvaluateResult)
    base = Upstream(trained_project, *list(results.values()))
    return Upstream(base.config(**{**REGISTER, **register}), *list(results.values()))


@pytest.fixture(scope="module")
def upstream(trained_project: Any, spark: Any) -> Upstream:
    return upstream_of(trained_project)


@pytest.fixture
def embedded() -> Iterator[None]:
    """The project's own SQLite store, whatever the developer's shell points at."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(TRACKING_URI_ENV, raising=False)
        yield


def register(cfg: Any, request: RegisterRequest) -> RegisterResult:
    result = RegistryAgent(cfg).handle("register", request)
    assert isinstance(result, RegisterResult)
    return result


def register_with_retries(cfg: Any, request: RegisterRequest) -> RegisterResult:
    """The register stage as the supervisor runs it: `supervisor.retry` is the only retry."""
    from src.supervisor import run_agent

    result = run_agent(cfg, "register", RegistryAgent(cfg), request, "register-test")
    assert isinstance(result, RegisterResult)
    return result


def _versions(cfg: Any) -> list[str]:
    registry = Registry(cfg)
    return sorted((str(v.version) for v in registry.versions(cfg.registry.model_name)), key=int)


def _alias(cfg: Any, alias: str) -> str | None:
    version = Registry(cfg).alias_version(cfg.registry.model_name, alias)
    return None if version is None else str(version.version)


def _spark_probabilities(spark: Any, model_dir: Path, test_path: Path) -> Any:
    from pyspark.ml import PipelineModel

    from src.pipelines.evaluation.spark_metrics import positive_probability

    model = PipelineModel.load(str(model_dir))
    frame = model.transform(spark.read.parquet(str(test_path))).select(
        "*", positive_probability("probability").alias("_p")
    )
    return frame.toPandas().sort_values(KEY_COLUMN).reset_index(drop=True)


def test_onnx_export_matches_spark_for_every_model_type(spark: Any, upstream: Upstream) -> None:
    from pyspark.ml import PipelineModel

    from src.core.feature_spec import FeatureSpec
    from src.pipelines.export.onnx_export import (
        check_parity,
        export_classifier,
        score_test_with_spark,
    )

    cfg = upstream.cfg
    test = spark.read.parquet(str(cfg.path(upstream.split.test.path)))
    for name, trained in upstream.train_sup.models.items():
        pipeline = PipelineModel.load(str(cfg.path(trained.path.path)))
        spec = FeatureSpec.model_validate_json(cfg.path(trained.feature_spec.path).read_text())
        scored = score_test_with_spark(pipeline, spec, test, [])
        started = time.perf_counter()
        model = export_classifier(spark, pipeline, len(spec.features), name)
        seconds = time.perf_counter() - started
        parity = check_parity(model, spec, scored)
        print(f"{name}: ONNX export {seconds:.1f} s, max |ONNX − Spark| {parity.max_abs_diff:.2e} "
              f"on {parity.rows} test loans")
        assert parity.rows == upstream.split.test_side.rows
        assert parity.max_abs_diff <= ONNX_PARITY, name


# --- embedded SQLite store -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def first(upstream: Upstream) -> RegisterResult:
    """The first registration into the embedded store: the evaluate stage's best model."""
    saved = os.environ.pop(TRACKING_URI_ENV, None)
    try:
        started = time.perf_counter()
        result = register(upstream.cfg, upstream.request())
        print(f"first registration ({upstream.evaluate.best_model}): "
              f"{time.perf_counter() - started:.1f} s, "
              f"ONNX max diff {result.onnx_max_abs_diff:.2e}")
        return result
    finally:
        if saved is not None:
            os.environ[TRACKING_URI_ENV] = saved


def test_first_version_is_champion_and_its_bundle_scores_like_spark(
    spark: Any, upstream: Upstream, first: RegisterResult, embedded: None
) -> None:
    cfg = upstream.cfg
    best = upstream.evaluate.best_model
    trained = upstream.train_sup.models[best]
    assert (first.version, first.alias, first.previous_champion_version) == ("1", CHAMPION, None)
    assert first.champion_score is None and "first champion" in first.decision
    assert first.onnx_max_abs_diff <= ONNX_PARITY
    evaluation = upstream.evaluate.evaluations[best]
    # The registry's score is the evaluation's validation metric, recomputed on the calibrated
    # ONNX scores of the same validation loans; test never enters the comparison.
    assert first.scored_on == "validation" and evaluation.validation is not None
    assert first.score == pytest.approx(
        getattr(evaluation.validation, upstream.evaluate.primary_metric), abs=1e-3)
    # The slice is smaller than register.parity_sample_rows: parity and the score saw all of it.
    validation_rows = upstream.train_sup.validation.rows
    assert validation_rows < cfg.registry.parity_sample_rows
    assert first.scored_rows == validation_rows

    Registry(cfg).connect()
    bundle = load_bundle(f"models:/{cfg.registry.model_name}@{CHAMPION}")
    for name in (MODEL_FILE, SPEC_FILE, SEGMENTATION_FILE, SERVING_FILE, CARD_FILE,
                 CALIBRATION_FILE):
        assert (bundle.path / name).is_file(), name
    assert (bundle.spark_model_path / "stages").is_dir()
    # Unchanged copies of the trainer's spec and the serving segmentation's parameters.
    seg = upstream.train_unsup.models[upstream.train_unsup.serving_model]
    spec_source = cfg.path(trained.feature_spec.path)
    assert (bundle.path / SPEC_FILE).read_bytes() == spec_source.read_bytes()
    segments_source = cfg.path(seg.params_file.path)
    assert (bundle.path / SEGMENTATION_FILE).read_bytes() == segments_source.read_bytes()
    serving = json.loads((bundle.path / SERVING_FILE).read_text())
    assert serving["registered_model"] == cfg.registry.model_name and serving["version"] == "1"
    assert serving["source_model"] == best and serving["training_run_id"] == trained.run_id
    assert serving["threshold"]["value"] == evaluation.threshold.value
    assert serving["threshold"]["rule"] == evaluation.threshold.rule
    assert serving["metrics"]["test"]["auc_roc"] == evaluation.test.auc_roc
    assert serving["train_data_sha256"] == upstream.train_sup.train_data_sha256
    assert serving["feature_spec_sha256"] == bundle.feature_spec().sha256()
    assert serving["onnx_output"] == "probability"
    assert bundle.features == bundle.feature_spec().features
    # The trainer's calibration table, unchanged (identity when train_sup fitted none).
    calibration = getattr(trained, "calibration", None)
    assert bundle.calibration.method == ("identity" if calibration is None else
                                         json.loads(cfg.path(calibration.path).read_text())["method"])
    assert serving["calibration_sha256"] is not None

    # The downloaded ONNX + the spec in numpy + the calibration table score every test loan as
    # the Spark model and the same table do.
    frame = _spark_probabilities(spark, bundle.spark_model_path, cfg.path(upstream.split.test.path))
    inputs = bundle.spec_inputs()
    onnx_p = bundle.score_records(frame[inputs].to_dict("records"))
    diff = np.abs(onnx_p - bundle.calibration.apply(frame["_p"].to_numpy()))
    print(f"{best}: ONNX vs Spark on {len(diff)} test loans, max |diff| {diff.max():.2e}")
    assert diff.max() <= ONNX_PARITY

    # Version tags and the local DVC copy.
    version = Registry(cfg).client.get_model_version(cfg.registry.model_name, "1")
    for tag in ("train_data_sha256", "feature_spec_sha256", "git_commit", "metric.auc_pr",
                "decision", "score", "source_model", "training_run_id"):
        assert tag in version.tags, tag
    assert any(t.startswith("param.") for t in version.tags)
    assert version.tags["feature_spec_sha256"] == serving["feature_spec_sha256"]
    assert "model_card.md" in (version.description or "")
    local = read_bundle(cfg.path(cfg.registry.bundle_dir))
    assert local.serving == bundle.serving
    assert (local.path / MODEL_FILE).read_bytes() == (bundle.path / MODEL_FILE).read_bytes()

    card = (bundle.path / CARD_FILE).read_text()
    train_side = upstream.split.train_side
    assert f"v1 — {best}" in card
    assert str(train_side.first_issue_d) in card and str(train_side.last_issue_d) in card
    for segment in seg.segments:
        assert f"| {segment.band} |" in card
    assert "Known limits" in card and "Synthetic data" not in card
    # Every figure says its data: a validation row and a test row per model and reference.
    for name in upstream.evaluate.evaluations:
        assert card.count(f"| {name}") >= 2, name
    assert "| validation |" in card and "| test |" in card


def test_bundle_loads_and_predicts_without_pyspark(
    first: RegisterResult, upstream: Upstream
) -> None:
    folder = upstream.cfg.path(upstream.cfg.registry.bundle_dir)
    code = (
        "import sys, numpy as np\n"
        "from src.core.bundle import read_bundle\n"
        f"b = read_bundle({str(folder)!r})\n"
        "p = b.predict_proba(np.zeros((3, len(b.features))))\n"
        "assert p.shape == (3,) and ((p >= 0) & (p <= 1)).all(), p\n"
        "assert not any(m == 'pyspark' or m.startswith('pyspark.') for m in sys.modules)\n"
        "print('ok', p[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")


def test_model_card_warns_about_synthetic_data(upstream: Upstream) -> None:
    from datetime import UTC, datetime

    from src.contracts import Artifact, FetchResult
    from src.pipelines.registry.model_card import ModelCardInput, render_model_card

    best = upstream.evaluate.best_model
    fetch = FetchResult(source="synthetic", origin="synthetic(rows=40000, seed=42)",
                        raw=Artifact(path="data/raw/loans.csv.gz", sha256="0" * 64), bytes=1)
    card = render_model_card(ModelCardInput(
        model_name="m", version="7", alias=CHAMPION, decision="first champion",
        primary_metric="auc_pr", score=0.3, champion_score=None, previous_champion_version=None,
        trained=upstream.train_sup.models[best], evaluation=upstream.evaluate.evaluations[best],
        evaluations=upstream.evaluate.evaluations, features=["x:scaled"], dropped_features=[],
        segmentation=upstream.train_unsup.models[upstream.train_unsup.serving_model],
        test_segments=upstream.evaluate.segments, split=upstream.split, fetch=fetch,
        balance=True, train_data_sha256="a", feature_spec_sha256="b", git_commit=None,
        onnx_max_abs_diff=1e-7, onnx_rows=10, onnx_tolerance=1e-5, trained_at=None,
        registered_at=datetime.now(UTC),
    ))
    assert "**Synthetic data.**" in card and "synthetic(rows=40000, seed=42)" in card
    assert "2007–2011 only" in card


def test_worse_model_becomes_challenger_and_champion_stays(
    upstream: Upstream, first: RegisterResult, embedded: None
) -> None:
    cfg = upstream.cfg
    worst = upstream.worst_model()
    result = register(cfg, upstream.request(best_model=worst))
    print(f"second registration ({worst}): {result.decision}")
    assert result.alias == CHALLENGER
    assert result.previous_champion_version == first.version
    assert result.champion_score == pytest.approx(first.score, abs=1e-12)
    assert result.score - result.champion_score < cfg.registry.min_delta
    assert f"{result.score:.4f}" in result.decision and f"{first.score:.4f}" in result.decision
    assert _alias(cfg, CHAMPION) == first.version
    assert _alias(cfg, CHALLENGER) == result.version
    tags = Registry(cfg).client.get_model_version(cfg.registry.model_name, result.version).tags
    assert tags["alias_at_registration"] == CHALLENGER and tags["decision"] == result.decision
    assert float(tags["champion_score"]) == result.champion_score


def test_onnx_mismatch_stops_registration(
    upstream: Upstream, first: RegisterResult, embedded: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The exports match Spark to rounding, so a broken one is simulated: every ONNX row off by 1e-3.
    import src.pipelines.registry.prepare as prepare

    real_check = prepare.check_parity

    def broken(*args: Any, **kwargs: Any) -> Any:
        parity = real_check(*args, **kwargs)
        return replace(parity, onnx_probability=parity.onnx_probability + 1e-3)

    monkeypatch.setattr(prepare, "check_parity", broken)
    cfg = upstream.cfg
    before = _versions(cfg)
    with pytest.raises(PermanentError, match=r"ONNX export of \w+ differs from Spark by .*"
                                             r"nothing was registered"):
        register(cfg, upstream.request(best_model="mlp"))
    assert _versions(cfg) == before
    assert _alias(cfg, CHAMPION) == first.version


def test_failure_after_version_created_deletes_it(
    upstream: Upstream, first: RegisterResult, embedded: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = upstream.cfg
    before = _versions(cfg)

    def refuse(self: Registry, name: str, alias: str, version: str) -> None:
        raise PermanentError(f"simulated: cannot set {name}@{alias} to v{version}")

    monkeypatch.setattr(Registry, "set_alias", refuse)
    with pytest.raises(PermanentError, match="simulated"):
        register(cfg, upstream.request(best_model="mlp"))
    monkeypatch.undo()
    assert _versions(cfg) == before
    assert _alias(cfg, CHAMPION) == first.version


def test_below_the_floor_is_challenger_only(
    upstream: Upstream, first: RegisterResult, embedded: None
) -> None:
    # A min_delta no model can clear: the floor decides, and says so in tags and card.
    cfg = upstream.config(floor_reference=SUB_GRADE_REFERENCE, min_delta=1.0)
    best = upstream.evaluate.best_model
    result = register(cfg, upstream.request())
    floor = upstream.evaluate.evaluations[SUB_GRADE_REFERENCE].validation
    assert floor is not None
    assert result.alias == CHALLENGER
    assert result.floor_score == pytest.approx(getattr(floor, upstream.evaluate.primary_metric))
    # Set against the candidate's own figure from evaluate, on the same whole slice.
    own = upstream.evaluate.evaluations[best].validation
    assert own is not None
    assert result.floor_candidate_score == pytest.approx(
        getattr(own, upstream.evaluate.primary_metric))
    assert "sub_grade reference" in result.decision and "never champion" in result.decision
    assert _alias(cfg, CHAMPION) == first.version
    version = Registry(cfg).client.get_model_version(cfg.registry.model_name, result.version)
    assert version.tags["floor_reference"] == SUB_GRADE_REFERENCE
    assert version.tags["floor_passed"] == "false"
    assert float(version.tags["floor_score"]) == result.floor_score
    card = cfg.path(result.model_card).read_text()
    assert result.decision in card and f"v{result.version} — {best}" in card


@pytest.mark.parametrize(
    ("champion", "floor", "alias", "says"),
    [
        (None, None, CHAMPION, "first champion"),
        (None, 0.29, CHAMPION, "first champion"),
        (None, 0.299, CHALLENGER, "never champion"),
        (0.20, 0.31, CHALLENGER, "never champion; v3 stays champion"),
        (0.20, 0.25, CHAMPION, "beats v3"),
        (0.299, 0.25, CHALLENGER, "v3 stays champion"),
    ],
)
def test_decide_needs_the_floor_and_the_champion(
    champion: float | None, floor: float | None, alias: str, says: str
) -> None:
    # Score 0.30, min_delta 0.002: 0.299 is within min_delta, 0.29 and 0.25 are not.
    version = None if champion is None else "3"
    got, reason = decide("auc_pr", 0.30, version, champion, 0.002,
                         None if floor is None else Floor(SUB_GRADE_REFERENCE, floor, 0.30))
    assert got == alias and says in reason, reason
    assert "validation auc_pr" in reason


def test_registry_outage_after_export_reuses_the_export(
    upstream: Upstream, embedded: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11: a transient registry fault after the export retries the stage, and the retry
    takes the exported, parity-checked bundle from the scratch folder instead of exporting again.
    The sample bound is below the slice: parity is checked on exactly that many loans."""
    import src.pipelines.registry.prepare as prepare

    bound = upstream.train_sup.validation.rows // 2
    cfg = upstream.config(model_name="register-test-retry", parity_sample_rows=bound,
                          bundle_dir="models/register_test/retry_bundle", retry=FAST_FAIL_RETRY)
    exports: list[str] = []
    real_export = prepare.export_classifier

    def counted(*args: Any, **kwargs: Any) -> Any:
        exports.append(args[-1])
        return real_export(*args, **kwargs)

    uploads: list[str] = []
    real_upload = Registry.log_artifacts
    scratch = cfg.path(cfg.registry.scratch_dir)
    tamper_at = {3}

    def outage_once(self: Registry, run_id: str, local_dir: Path, artifact_path: str) -> None:
        uploads.append(run_id)
        if len(uploads) in tamper_at:  # the scratch copy is damaged while the registry is away
            (entry,) = scratch.iterdir()
            with (entry / "bundle" / MODEL_FILE).open("ab") as onnx_file:
                onnx_file.write(b"\0")
        if len(uploads) in (1, 3):  # the registry goes away mid-upload, after the export
            raise TransientError(f"simulated: MLflow at {self.uri} unreachable during upload")
        real_upload(self, run_id, local_dir, artifact_path)

    monkeypatch.setattr(prepare, "export_classifier", counted)
    monkeypatch.setattr(Registry, "log_artifacts", outage_once)
    result = register_with_retries(cfg, upstream.request(best_model="mlp"))
    assert len(uploads) == 2, "the fault did not hit, or the retry did not run"
    assert len(exports) == 1, exports
    assert (result.version, result.alias) == ("1", CHAMPION)
    assert _versions(cfg) == ["1"] and _alias(cfg, CHAMPION) == "1"
    assert result.scored_rows == bound
    card = cfg.path(result.model_card).read_text()
    assert f"on {bound:,} validation loans" in card
    # Nothing is left in the scratch folder once the registration is done.
    assert not any(scratch.iterdir())

    # A scratch copy that no longer holds what was checked is exported again, never reused:
    # one export for the first attempt, one more for the retry that found the copy damaged.
    second = register_with_retries(cfg, upstream.request(best_model="mlp"))
    assert len(uploads) == 4 and len(exports) == 3, (uploads, exports)
    assert second.version == "2" and second.champion_score == pytest.approx(result.score)
    assert not any(scratch.iterdir())


# --- a real `mlflow server` ----------------------------------------------------------------------


def test_real_server_late_up_then_down(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = MlflowServer(tmp_path / "server", port=free_port(), start_delay_s=LATE_START_S)
    monkeypatch.setenv(TRACKING_URI_ENV, server.uri)
    name = "register-test-server"
    try:
        # 1. Registration starts while nothing listens; the server comes up a few seconds later.
        server.start_later()
        late_cfg = upstream.config(model_name=name, retry=LATE_SERVER_RETRY,
                                   bundle_dir="models/register_test/server_bundle")
        started = time.perf_counter()
        first_result = register_with_retries(late_cfg, upstream.request(best_model="mlp"))
        waited = time.perf_counter() - started
        print(f"late server: registered after {waited:.1f} s")
        assert server.healthy() and waited > LATE_START_S
        assert (first_result.version, first_result.alias) == ("1", CHAMPION)

        # 2. The server is up: a second registration goes through at once, with both scores.
        cfg = upstream.config(model_name=name, retry=FAST_FAIL_RETRY,
                              bundle_dir="models/register_test/server_bundle")
        second = register(cfg, upstream.request(best_model="mlp"))
        assert second.alias == CHALLENGER and second.champion_score is not None
        bundle = load_bundle(f"models:/{name}@{CHAMPION}", dst=tmp_path / "download")
        assert bundle.version == "1"
        assert (bundle.path / MODEL_FILE).stat().st_size > 0

        # 3. The server goes away: registration fails clearly, the champion stays.
        server.stop()
        started = time.perf_counter()
        with pytest.raises(TransientError, match=rf"MLflow at {server.uri}.*unreachable"):
            register_with_retries(cfg, upstream.request(best_model="mlp"))
        print(f"down server: gave up after {time.perf_counter() - started:.1f} s")
    finally:
        server.stop()
    # The server's own store, read directly: still v1 champion, v2 challenger, nothing more.
    from mlflow import MlflowClient

    db = f"sqlite:///{(tmp_path / 'server' / 'mlflow.db').resolve()}"
    store = MlflowClient(tracking_uri=db, registry_uri=db)
    assert store.get_model_version_by_alias(name, CHAMPION).version in (1, "1")
    assert sorted(int(v.version) for v in store.search_model_versions(f"name='{name}'")) == [1, 2]


def test_server_dies_between_version_and_alias_leaves_no_orphan(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The version a dead server kept is tagged pending/none; the next registration deletes it
    and ends its run FAILED: no orphan version, no RUNNING run."""
    from mlflow import MlflowClient

    from src.pipelines.registry.client import ALIAS_TAG, PENDING, STATE_TAG

    server = MlflowServer(tmp_path / "server", port=free_port())
    monkeypatch.setenv(TRACKING_URI_ENV, server.uri)
    name = "register-test-orphan"
    cfg = upstream.config(model_name=name, bundle_dir="models/register_test/orphan_bundle")
    db = f"sqlite:///{(tmp_path / 'server' / 'mlflow.db').resolve()}"
    original = Registry.set_alias

    def die_first(self: Registry, model: str, alias: str, version: str) -> None:
        server.stop()  # the server goes away after the version exists, before the alias
        original(self, model, alias, version)

    try:
        server.start()
        monkeypatch.setattr(Registry, "set_alias", die_first)
        with pytest.raises(TransientError, match="unreachable"):
            register(cfg, upstream.request(best_model="mlp"))
        monkeypatch.setattr(Registry, "set_alias", original)
        # Read the dead server's store directly: the version it kept says it has no alias.
        store = MlflowClient(tracking_uri=db, registry_uri=db)
        (orphan,) = store.search_model_versions(f"name='{name}'")
        assert orphan.tags[ALIAS_TAG] == "none" and orphan.tags[STATE_TAG] == PENDING
        assert not orphan.aliases
        assert store.get_run(orphan.run_id).info.status == "RUNNING"

        server.start()
        result = register(cfg, upstream.request(best_model="mlp"))
        assert result.alias == CHAMPION
    finally:
        server.stop()
    store = MlflowClient(tracking_uri=db, registry_uri=db)
    versions = store.search_model_versions(f"name='{name}'")
    assert [str(v.version) for v in versions] == [result.version] != [str(orphan.version)]
    assert versions[0].tags[ALIAS_TAG] == CHAMPION and versions[0].tags[STATE_TAG] == "complete"
    assert store.get_run(orphan.run_id).info.status == "FAILED"
    experiment = store.get_experiment_by_name(cfg.mlflow.experiment)
    statuses = [r.info.status for r in store.search_runs([experiment.experiment_id])]
    assert "RUNNING" not in statuses and statuses.count("FAILED") >= 1
