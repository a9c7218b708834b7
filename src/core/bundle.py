"""The serving bundle: one folder with everything needed to score a loan, without Spark or a JVM.

    model.onnx          the champion classifier (input `features`, double [None, n_features])
    calibration.json    the calibration table applied after the classifier (src/core/calibration)
    feature_spec.json   the trainer's FeatureSpec, unchanged
    segmentation.json   the serving segmentation's segments.json, unchanged (its `model` says
                        kmeans or gmm)
    serving.json        ServingInfo: version, threshold, metrics, hashes, how to read the output
    model_card.md       the model card of the registered version
    spark_model/        the Spark PipelineModel (batch scoring, `serving.backend: spark`)

The same folder is the registered MLflow model (plus MLflow's MLmodel, requirements and env files)
and the local copy under `register.bundle_dir`. This module imports neither pyspark nor Spark.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from src.contracts import Evaluation, ThresholdChoice
from src.core.calibration import CALIBRATION_FILE, Calibration
from src.utils.errors import DataError

MODEL_FILE = "model.onnx"
SPEC_FILE = "feature_spec.json"
SEGMENTATION_FILE = "segmentation.json"
SERVING_FILE = "serving.json"
CARD_FILE = "model_card.md"
SPARK_DIR = "spark_model"
REQUIRED_FILES = (MODEL_FILE, SPEC_FILE, SEGMENTATION_FILE, SERVING_FILE, CARD_FILE)

ONNX_INPUT = "features"
ONNX_PROBABILITY_OUTPUT = "probability"
# Column of the probability output holding class 1 (default); column 0 is P(repaid).
DEFAULT_CLASS_INDEX = 1

HOW_TO_READ = (
    f"input '{ONNX_INPUT}': float64 [n, len(features)], columns in "
    "`features` order (the feature spec applied to the loan); P(default) = "
    f"outputs['{ONNX_PROBABILITY_OUTPUT}'][:, {DEFAULT_CLASS_INDEX}] (column 0 is P(repaid)), "
    f"then {CALIBRATION_FILE} (numpy.interp over its boundaries) gives the calibrated P(default)"
)
IDENTITY = Calibration(method="identity")
_URI_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/", "http://", "https://", "file://")


class ServingInfo(BaseModel):
    """`serving.json`: what the bundle is and how to use it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    registered_model: str
    version: str
    source_model: Literal["random_forest", "gbt", "mlp", "logistic", "xgboost"]
    threshold: ThresholdChoice
    metrics: Evaluation = Field(
        description="the source model's evaluation: test figures, and `validation` (selection)"
    )
    features: list[str] = Field(description="spec.features: the ONNX input's column order")
    trained_at: datetime | None
    train_data_sha256: str
    feature_spec_sha256: str
    training_run_id: str
    onnx_output: str = Field(
        default=ONNX_PROBABILITY_OUTPUT, description="name of the [n, 2] probability output"
    )
    onnx_output_how_to_read: str = HOW_TO_READ
    calibration_sha256: str | None = Field(
        default=None,
        description=f"sha256 of {CALIBRATION_FILE}; none for bundles registered before it existed",
    )



def canonical_sha256(document: Mapping[str, Any]) -> str:
    """SHA-256 of a JSON document in sorted-key compact form: FeatureSpec.sha256, no pydantic."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def calibration_sha256(calibration: Calibration) -> str:
    """SHA-256 of a calibration table's canonical JSON (what serving.json records)."""
    return canonical_sha256(calibration.model_dump(mode="json"))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"bundle: cannot read {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise DataError(f"bundle: {path} is not a JSON object")
    return document


@dataclass
class Bundle:
    """A loaded bundle: its files, parsed JSON, and a lazily created ONNX Runtime session."""

    path: Path
    serving: ServingInfo
    spec_json: dict[str, Any]
    segmentation_json: dict[str, Any]
    calibration: Calibration = IDENTITY
    _session: Any = field(default=None, init=False, repr=False)

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def spark_model_path(self) -> Path:
        return self.path / SPARK_DIR

    @property
    def version(self) -> str:
        return self.serving.version

    @property
    def threshold(self) -> float:
        return self.serving.threshold.value

    @property
    def features(self) -> list[str]:
        return self.serving.features

    def feature_spec(self) -> Any:
        """The FeatureSpec model (imports src.core.feature_spec)."""
        from src.core.feature_spec import FeatureSpec

        return FeatureSpec.model_validate(self.spec_json)

    def spec_inputs(self) -> list[str]:
        """Raw input columns the spec reads: numeric then categorical."""
        return [f["name"] for f in self.spec_json["numeric"]] + [
            c["name"] for c in self.spec_json["categorical"]
        ]

    def session(self) -> Any:
        """The ONNX Runtime session of model.onnx, created on first use."""
        if self._session is None:
            import onnxruntime as ort

            self._session = ort.InferenceSession(
                str(self.onnx_path), providers=["CPUExecutionProvider"]
            )
        return self._session

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        """Calibrated P(default) of each row of a spec feature matrix, as float64 (n,).

        One value per row, not sklearn's two columns: the class-0 column is 1 − this.
        """
        return self.calibration.apply(self.raw_proba(matrix))

    def raw_proba(self, matrix: np.ndarray) -> np.ndarray:
        """The classifier's own P(default) of each row, before calibration, as float64 (n,)."""
        x = np.asarray(matrix, dtype=input_dtype(self.session()))
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(
                f"predict_proba needs a (n, {len(self.features)}) matrix, got {x.shape}"
            )
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        (probabilities,) = self.session().run([self.serving.onnx_output], {ONNX_INPUT: x})
        return np.asarray(probabilities, dtype=np.float64)[:, DEFAULT_CLASS_INDEX]

    def transform(self, records: Sequence[Mapping[str, object]]) -> np.ndarray:
        """The spec feature matrix of parsed loan records (imports src.core.feature_spec)."""
        from src.core.feature_spec import transform_records

        return transform_records(self.feature_spec(), records)

    def score_records(self, records: Sequence[Mapping[str, object]]) -> np.ndarray:
        """P(default) of parsed loan records: spec transform in numpy, then ONNX Runtime."""
        return self.predict_proba(self.transform(records))

    def segment_bands(self, rows: np.ndarray) -> list[str]:
        """Risk band of each row of segmentation feature values (NaN = missing)."""
        from src.core.segment_params import assign_segment

        bands = {int(k): v for k, v in self.segmentation_json["bands"].items()}
        return [bands[c] for c in assign_segment(self.segmentation_json, rows)]

    @property
    def segment_features(self) -> list[str]:
        return list(self.segmentation_json["features"])


def input_dtype(session: Any) -> type[np.floating[Any]]:
    """The numpy type an ONNX Runtime session's input takes: float64 (every current export), or
    float32 for bundles exported before the float64 graphs."""
    return np.float64 if "double" in session.get_inputs()[0].type else np.float32


def check_bundle(path: Path) -> None:
    """Raise DataError unless `path` holds every bundle file."""
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise DataError(f"bundle {path}: missing {missing}")


def read_bundle(path: Path) -> Bundle:
    """Load a local bundle folder, checking the files agree with each other."""
    path = Path(path)
    check_bundle(path)
    serving = ServingInfo.model_validate(_read_json(path / SERVING_FILE))
    spec_json = _read_json(path / SPEC_FILE)
    if spec_json.get("features") != serving.features:
        raise DataError(f"bundle {path}: serving.json features differ from feature_spec.json")
    if canonical_sha256(spec_json) != serving.feature_spec_sha256:
        raise DataError(
            f"bundle {path}: feature_spec.json does not match its sha256 in serving.json"
        )
    return Bundle(
        path=path,
        serving=serving,
        spec_json=spec_json,
        segmentation_json=_read_json(path / SEGMENTATION_FILE),
        calibration=_read_calibration(path, serving),
    )


def _read_calibration(path: Path, serving: ServingInfo) -> Calibration:
    """The bundle's calibration table; identity only for bundles that never had one."""
    if serving.calibration_sha256 is None:
        return IDENTITY
    try:
        calibration = Calibration.model_validate(_read_json(path / CALIBRATION_FILE))
    except ValueError as exc:
        raise DataError(f"bundle {path}: {CALIBRATION_FILE} is invalid: {exc}") from exc
    if calibration_sha256(calibration) != serving.calibration_sha256:
        raise DataError(
            f"bundle {path}: {CALIBRATION_FILE} does not match its sha256 in serving.json"
        )
    return calibration


def is_model_uri(value: str) -> bool:
    """True when `value` is an MLflow URI rather than a local folder."""
    return value.startswith(_URI_SCHEMES)


def load_bundle(path_or_model_uri: str | Path, dst: Path | None = None) -> Bundle:
    """A bundle from a local folder or an MLflow URI (`models:/name@champion`, downloaded to `dst`).

    Downloads go to `dst`, or to a fresh temporary folder the caller may delete.
    """
    value = str(path_or_model_uri)
    if not is_model_uri(value):
        return read_bundle(Path(value))
    import mlflow

    target = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="bundle-"))
    target.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(artifact_uri=value, dst_path=str(target))
    return read_bundle(Path(local))
