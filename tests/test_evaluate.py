"""evaluate on the real 8000-loan subsample: small models trained once, evaluated twice.

The second evaluation sees the same test loans with every label flipped: test metrics must change,
and every threshold, every validation figure and the chosen model must not, which proves that
selection and thresholds come from training data alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pyspark.sql import functions as F

from src.agents.evaluator_agent import EvaluatorAgent
from src.contracts import (
    Artifact,
    EvaluateRequest,
    EvaluateResult,
    SplitResult,
    TrainSupResult,
    TrainUnsupResult,
)
from src.core.raw_schema import LABEL_COLUMN
from src.core.thresholds import choose_threshold
from src.pipelines.training.references import LOGISTIC_REFERENCE, SUB_GRADE_REFERENCE
from src.utils.errors import DataError
from src.utils.hashing import content_hash
from src.utils.tracking import TRACKING_URI_ENV
from tests.conftest import SMALL_TRAINING
from tests.stats import auc_lower_bound

pytestmark = pytest.mark.slow

MODELS = tuple(SMALL_TRAINING["train"]["models"])
FLIPPED: dict[str, Any] = {
    "evaluate": {
        "plots_dir": "reports/evaluate_flipped/plots",
        "metrics_path": "reports/evaluate_flipped/metrics.json",
    }
}
# Honest small models on these loans reach ~0.66 on test; the bound sits 4 standard errors below.
EXPECTED_MODEL_AUC = 0.66
MIN_PLOT_BYTES = 5_000


def _config(split_project: Any, extra: dict[str, Any] | None = None) -> Any:
    from src.utils.config import deep_merge, load_config

    return load_config(
        split_project.root / "params.yaml", overrides=deep_merge(SMALL_TRAINING, extra or {})
    )


@pytest.fixture(scope="module")
def no_tracking_server() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(TRACKING_URI_ENV, raising=False)
        yield


@pytest.fixture(scope="module")
def upstream(
    trained_project: Any, no_tracking_server: None
) -> tuple[Any, SplitResult, TrainSupResult, TrainUnsupResult]:
    """The session's trained project: split, train_sup and train_unsup results."""
    from src.supervisor import load_result

    cfg = trained_project
    split, sup, unsup = (load_result(cfg, s) for s in ("split", "train_sup", "train_unsup"))
    assert isinstance(split, SplitResult)
    assert isinstance(sup, TrainSupResult) and isinstance(unsup, TrainUnsupResult)
    return cfg, split, sup, unsup


@pytest.fixture(scope="module")
def evaluated(upstream: Any) -> tuple[Any, EvaluateResult]:
    """The evaluate stage as the supervisor ran it for the session."""
    from src.supervisor import load_result

    cfg = upstream[0]
    result = load_result(cfg, "evaluate")
    assert isinstance(result, EvaluateResult)
    return cfg, result


@pytest.fixture(scope="module")
def flipped(spark: Any, upstream: Any) -> tuple[Any, EvaluateResult, int]:
    """The stage on the test loans with every label flipped (and its own output paths)."""
    cfg, split, sup, unsup = upstream
    test = spark.read.parquet(str(cfg.path(split.test.path)))
    label_type = test.schema[LABEL_COLUMN].dataType
    flipped_test = test.withColumn(LABEL_COLUMN, (1 - F.col(LABEL_COLUMN)).cast(label_type))
    target = cfg.path("data/split/test_flipped.parquet")
    flipped_test.write.mode("overwrite").parquet(str(target))
    artifact = Artifact(
        path="data/split/test_flipped.parquet", sha256=content_hash(target), rows=split.test.rows
    )
    request = EvaluateRequest(test=artifact, train_sup=sup, train_unsup=unsup)
    result = EvaluatorAgent(_config(cfg, FLIPPED)).handle("evaluate", request)
    assert isinstance(result, EvaluateResult)
    return cfg, result, split.test_side.rows


def test_models_and_references_are_evaluated_and_beat_chance(
    evaluated: Any, upstream: Any
) -> None:
    _, result = evaluated
    test_side = upstream[1].test_side
    bound = auc_lower_bound(
        EXPECTED_MODEL_AUC, test_side.defaults, test_side.rows - test_side.defaults
    )
    assert set(result.evaluations) == {*MODELS, SUB_GRADE_REFERENCE, LOGISTIC_REFERENCE}
    for name, e in result.evaluations.items():
        assert e.kind == ("model" if name in MODELS else "reference")
        v = e.validation
        assert v is not None and v.data == "validation"
        t = e.test
        print(f"{name:15s} validation AUC {v.auc_roc:.3f} [{v.auc_roc_ci.low:.3f}, "
              f"{v.auc_roc_ci.high:.3f}] ECE {v.calibration_error:.3f} | test AUC {t.auc_roc:.3f} "
              f"[{t.auc_roc_ci.low:.3f}, {t.auc_roc_ci.high:.3f}] AP {t.auc_pr:.3f} KS {t.ks:.3f} "
              f"Brier {t.brier:.3f} ECE {t.calibration_error:.3f} threshold "
              f"{e.threshold.value:.3f}")
    for name in MODELS:
        assert result.evaluations[name].test.auc_roc >= bound, (bound, result.evaluations[name])
    # sub_grade alone already ranks loans; a reference below chance would mean a broken join.
    assert result.evaluations[SUB_GRADE_REFERENCE].test.auc_roc > 0.5


def test_train_sup_reports_the_figures_evaluate_reports(evaluated: Any, upstream: Any) -> None:
    # One definition of each metric: the trainer's MLflow figures are evaluate's, on every loan.
    _, result = evaluated
    sup = upstream[2]
    for name in MODELS:
        trained, judged = sup.models[name], result.evaluations[name]
        assert judged.validation is not None
        for mine, theirs in ((trained.validation, judged.validation), (trained.test, judged.test)):
            assert mine.auc_roc == pytest.approx(theirs.auc_roc, abs=1e-12), name
            assert mine.auc_pr == pytest.approx(theirs.auc_pr, abs=1e-12), name
            assert mine.log_loss == pytest.approx(theirs.log_loss, abs=1e-12), name
        assert trained.calibration_check.test_ece == pytest.approx(
            judged.test.calibration_error, abs=1e-12
        ), name


def test_every_metric_is_in_range(evaluated: Any, upstream: Any) -> None:
    _, result = evaluated
    _, split, _, _ = upstream
    validation_rows = {e.validation.rows for e in result.evaluations.values() if e.validation}
    # Every model and reference is judged on the same validation loans, none of them test loans.
    assert len(validation_rows) == 1
    assert 0 < validation_rows.pop() < split.train_side.rows
    for e in result.evaluations.values():
        for value in (e.precision, e.recall, e.f1, e.threshold.value):
            assert 0.0 <= value <= 1.0, e
        assert e.validation is not None
        for m in (e.validation, e.test):
            for value in (m.auc_roc, m.auc_pr, m.ks, m.brier, m.calibration_error):
                assert 0.0 <= value <= 1.0, m
            assert m.auc_roc_ci.low <= m.auc_roc <= m.auc_roc_ci.high
            assert m.auc_pr_ci.low <= m.auc_pr <= m.auc_pr_ci.high
            assert m.gini == pytest.approx(2 * m.auc_roc - 1)
            assert m.log_loss > 0
        c = e.confusion
        assert c.tn + c.fp + c.fn + c.tp == split.test_side.rows
        assert c.fn + c.tp == split.test_side.defaults
        if c.tp + c.fp:
            assert e.precision == pytest.approx(c.tp / (c.tp + c.fp))


def test_thresholds_come_from_the_validation_slice(
    spark: Any, evaluated: Any, flipped: Any, upstream: Any
) -> None:
    cfg, result = evaluated
    _, flipped_result, _ = flipped
    _, _, sup, _ = upstream
    for name, e in result.evaluations.items():
        other = flipped_result.evaluations[name]
        assert "validation slice" in e.threshold.chosen_on
        assert other.threshold == e.threshold, name
        # Validation figures do not see the test labels at all.
        assert other.validation == e.validation, name
        # Flipping the test labels mirrors the ranking metrics: the test data did reach them.
        assert other.test.auc_roc == pytest.approx(1 - e.test.auc_roc, abs=1e-9)
    # Mirrored test metrics would pick the worst model if selection looked at test.
    assert flipped_result.best_model == result.best_model
    assert flipped_result.selected_on == result.selected_on == "validation"
    # And the models' thresholds are exactly the rule's optimum on the trainer's validation rows.
    for name, model in sup.models.items():
        rows = spark.read.parquet(str(cfg.path(model.validation_predictions.path))).toPandas()
        expected, _ = choose_threshold(rows[LABEL_COLUMN].to_numpy(float),
                                       rows["probability"].to_numpy(float),
                                       cfg.evaluate.threshold)
        assert result.evaluations[name].threshold.value == expected


def test_best_model_is_the_argmax_of_the_primary_metric_on_validation(evaluated: Any) -> None:
    cfg, result = evaluated
    metric = cfg.evaluate.primary_metric
    assert result.primary_metric == metric
    scores = {n: getattr(result.evaluations[n].validation, metric) for n in MODELS}
    assert result.best_model == max(scores, key=scores.__getitem__)


def test_metrics_file_matches_the_result(evaluated: Any) -> None:
    cfg, result = evaluated
    path = cfg.path(result.metrics_file.path)
    assert result.metrics_file.sha256 == content_hash(path)
    metrics = json.loads(path.read_text())
    assert metrics["best_model"] == result.best_model
    assert metrics["selected_on"] == "validation"
    for name, e in result.evaluations.items():
        assert set(metrics[name]) == {"validation", "test"}
        for data, m in (("validation", e.validation), ("test", e.test)):
            flat = metrics[name][data]
            assert m is not None and m.data == data
            assert all(isinstance(v, int | float) for v in flat.values()), flat
            assert flat["rows"] == m.rows
            assert flat["auc_roc"] == pytest.approx(m.auc_roc)
            assert flat["auc_roc_low"] == pytest.approx(m.auc_roc_ci.low)
            assert flat["auc_pr_high"] == pytest.approx(m.auc_pr_ci.high)
            assert flat["calibration_error"] == pytest.approx(m.calibration_error)
            assert flat["threshold"] == pytest.approx(e.threshold.value)
        assert metrics[name]["test"]["tp"] == e.confusion.tp
    assert set(metrics["segments"]) == {s.band for s in result.segments}
    saved = EvaluateResult.model_validate_json(cfg.report_path("evaluate").read_text())
    assert saved.evaluations == result.evaluations


def test_plots_are_written_and_not_trivial(evaluated: Any) -> None:
    cfg, result = evaluated
    names = {p.rsplit("/", 1)[-1] for p in result.plots}
    assert names == {"roc.png", "pr.png", "calibration.png", "ks.png", "confusion.png",
                     "threshold.png", "feature_importance.png", "segment_risk.png"}
    for plot in result.plots:
        assert not plot.startswith("/")
        path = cfg.path(plot)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > MIN_PLOT_BYTES, plot


def test_segments_cover_the_test_split_in_risk_order(evaluated: Any, upstream: Any) -> None:
    _, result = evaluated
    _, split, _, unsup = upstream
    serving = unsup.models[unsup.serving_model]
    order = [s.band for s in serving.segments]
    assert [s.band for s in result.segments] == [b for b in order if b in
                                                  {s.band for s in result.segments}]
    assert sum(s.size for s in result.segments) == split.test_side.rows
    weighted = sum(s.size * s.default_rate for s in result.segments) / split.test_side.rows
    assert weighted == pytest.approx(split.test_side.default_share, abs=1e-6)
    for s in result.segments:
        assert 0 <= s.default_rate <= 1 and 0 < s.mean_predicted < 1
    # Bands were ordered by training default rate; the riskiest stays riskier on test loans.
    assert result.segments[-1].default_rate > result.segments[0].default_rate


def test_metrics_are_in_mlflow(evaluated: Any, upstream: Any) -> None:
    from mlflow.tracking import MlflowClient

    from src.utils.tracking import configure_mlflow

    cfg, result = evaluated
    _, _, sup, _ = upstream
    experiment_id = configure_mlflow(cfg)
    client = MlflowClient()
    runs = client.search_runs([experiment_id], "tags.stage = 'evaluate'")
    assert runs, "no evaluation run"
    run = min(runs, key=lambda r: r.info.start_time)  # the flipped run may have come after
    for name, e in result.evaluations.items():
        assert run.data.metrics[f"{name}.test.auc_roc"] == pytest.approx(e.test.auc_roc)
        assert e.validation is not None
        assert run.data.metrics[f"{name}.validation.auc_roc"] == pytest.approx(
            e.validation.auc_roc)
    assert run.data.tags["best_model"] == result.best_model
    logged = {f.path for f in client.list_artifacts(run.info.run_id, "plots")}
    assert {f"plots/{p.rsplit('/', 1)[-1]}" for p in result.plots} == logged
    for name, model in sup.models.items():
        history = client.get_metric_history(model.run_id, "test_auc_roc")
        assert any(m.value == pytest.approx(result.evaluations[name].test.auc_roc)
                   for m in history)
        # The trainer's Spark AUC and this numpy AUC are the same number on the same loans (the
        # trainer's is of raw probabilities: a calibration table ties some scores).
        if not result.evaluations[name].calibrated:
            assert model.test.auc_roc == pytest.approx(result.evaluations[name].test.auc_roc,
                                                       abs=1e-9)


def test_a_missing_input_is_a_clear_data_error(upstream: Any) -> None:
    cfg, split, sup, unsup = upstream
    gone = split.test.model_copy(update={"path": "data/split/nowhere.parquet"})
    request = EvaluateRequest(test=gone, train_sup=sup, train_unsup=unsup)
    with pytest.raises(DataError, match="test split"):
        EvaluatorAgent(cfg).handle("evaluate", request)
    missing = {
        name: model.model_copy(
            update={"validation_predictions": Artifact(path="models/none.parquet", sha256="0")}
        )
        for name, model in sup.models.items()
    }
    request = EvaluateRequest(
        test=split.test, train_sup=sup.model_copy(update={"models": missing}), train_unsup=unsup
    )
    with pytest.raises(DataError, match="rerun 'train_sup'"):
        EvaluatorAgent(cfg).handle("evaluate", request)
