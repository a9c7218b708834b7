"""The current champion scored by its own bundle on the candidate's validation sample."""

from __future__ import annotations

from pathlib import Path

from src.core.bundle import read_bundle
from src.core.feature_spec import FeatureSpec, transform_records
from src.core.metrics import ranking_metric
from src.pipelines.export.onnx_export import ScoredTest
from src.pipelines.registry.client import Registry, short_error
from src.utils.errors import DataError
from src.utils.logging import get_logger

log = get_logger(component="registry")


def champion_score(
    registry: Registry, name: str, version: str, metric: str, rows: ScoredTest, work: Path
) -> float | None:
    """The champion's own bundle (its spec, ONNX) on `rows`, ranked on raw probabilities as the
    candidate is; None when its bundle cannot be read."""
    try:
        local = registry.download(f"models:/{name}/{version}", work / "champion")
        bundle = read_bundle(local)
    except DataError as exc:
        log.warning("register.champion_unreadable", version=version, error=short_error(exc))
        return None
    available = set(rows.records[0]) if rows.records else set()
    absent = [c for c in bundle.spec_inputs() if c not in available]
    if absent:
        log.warning("register.champion_inputs_absent", version=version, columns=absent,
                    effect="scored with these inputs imputed, as serving would")
    champion_spec = FeatureSpec.model_validate(bundle.spec_json)
    # Raw, as the challenger is ranked: a ranking metric needs no calibration.
    probabilities = bundle.raw_proba(transform_records(champion_spec, rows.records))
    score = ranking_metric(metric, rows.labels, probabilities)
    log.info("register.champion_scored", version=version, metric=metric, score=score,
             rows=len(rows.keys), source_model=bundle.serving.source_model)
    return score
