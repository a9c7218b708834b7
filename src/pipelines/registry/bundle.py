"""The staged bundle: every file of a registered version except serving.json and the model card,
which need the version number."""

from __future__ import annotations

import shutil
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np

from src.core.bundle import (
    CALIBRATION_FILE,
    ONNX_INPUT,
    ONNX_PROBABILITY_OUTPUT,
    SEGMENTATION_FILE,
    SPARK_DIR,
    SPEC_FILE,
)
from src.core.calibration import Calibration

# Packages the ONNX flavour needs; explicit so MLflow does not spend seconds inferring them.
ONNX_PACKAGES = ("onnx", "onnxruntime", "numpy")


def pip_requirements() -> list[str]:
    return [f"{name}=={package_version(name)}" for name in ONNX_PACKAGES]


def signature(n_features: int) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float64), (-1, n_features), ONNX_INPUT)]),
        outputs=Schema([TensorSpec(np.dtype(np.float64), (-1, 2), ONNX_PROBABILITY_OUTPUT)]),
    )


def stage_bundle(
    staging: Path, onnx_model: Any, model_dir: Path, spec_path: Path, segments_path: Path,
    n_features: int, calibration: Calibration,
) -> None:
    """ONNX (MLflow's onnx flavour), feature spec, segmentation, Spark model, calibration."""
    import mlflow.onnx

    mlflow.onnx.save_model(
        onnx_model,
        str(staging),
        pip_requirements=pip_requirements(),
        signature=signature(n_features),
        # One self-contained model.onnx: serving reads the file as it is.
        save_as_external_data=False,
    )
    shutil.copyfile(spec_path, staging / SPEC_FILE)
    shutil.copyfile(segments_path, staging / SEGMENTATION_FILE)
    shutil.copytree(model_dir, staging / SPARK_DIR)
    (staging / CALIBRATION_FILE).write_text(calibration.model_dump_json(indent=2) + "\n")
