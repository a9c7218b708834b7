"""What each Spark task runs in batch scoring: the bundle's ONNX model on pandas batches of loans.

Executed by `mapInPandas` on the executors' Python workers. It scores with the Spark-free core code
the API uses (feature spec `transform_records`, ONNX Runtime, the calibration table, the scorecard,
the segment parameters), so a loan gets the same numbers in a file as from `/predict`. No pyspark
import at module level: only `SparkFiles` where the shipped bundle is looked up.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src.core.bundle import DEFAULT_CLASS_INDEX, ONNX_INPUT, Bundle, input_dtype, read_bundle
from src.core.scorecard import ScorecardScaling, score_points

ID = "id"
KEY = "loan_key"
STATUS = "status"
REASON = "reason"
PROBABILITY = "probability_of_default"
SCORE = "score"
DECISION = "decision"
SEGMENT = "segment"
SCORED = "scored"
UNSCORED = "unscored"
DECLINE = "decline"
APPROVE = "approve"
# The output, in column order; a row per loan, scored or not.
OUTPUT_SCHEMA = (
    f"{ID} string, {KEY} string, {STATUS} string, {PROBABILITY} double, {SCORE} double, "
    f"{DECISION} string, {SEGMENT} string, {REASON} string"
)
OUTPUT_COLUMNS = (ID, KEY, STATUS, PROBABILITY, SCORE, DECISION, SEGMENT, REASON)


@dataclass(frozen=True)
class ScoringTask:
    """What every task needs, pickled to the executors: the shipped bundle and the settings."""

    bundle_name: str  # the archive shipped with SparkContext.addArchive, unpacked as a folder
    scorecard: ScorecardScaling
    onnx_threads: int


@dataclass(frozen=True)
class LoadedModel:
    """A bundle read on an executor, with an ONNX Runtime session of the task's thread count."""

    bundle: Bundle
    session: Any

    @classmethod
    def open(cls, folder: Path, threads: int) -> LoadedModel:
        import onnxruntime as ort

        bundle = read_bundle(folder)  # checks the files against their hashes in serving.json
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(
            str(bundle.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        return cls(bundle, session)

    def probabilities(self, matrix: np.ndarray) -> np.ndarray:
        """Calibrated P(default) of each row of a spec feature matrix (as the API's OnnxScorer)."""
        if matrix.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        x = matrix.astype(input_dtype(self.session), copy=False)
        (out,) = self.session.run([self.bundle.serving.onnx_output], {ONNX_INPUT: x})
        if isinstance(out, list):  # ZipMap output: one {class: probability} per row
            raw = np.array([row[DEFAULT_CLASS_INDEX] for row in out], dtype=np.float64)
        else:
            raw = np.asarray(out, dtype=np.float64)[:, DEFAULT_CLASS_INDEX]
        return self.bundle.calibration.apply(raw)

    def score(self, frame: pd.DataFrame, scorecard: ScorecardScaling) -> pd.DataFrame:
        """The output rows of one batch: model columns for scored loans, nulls for the others."""
        bundle = self.bundle
        kept = (frame[STATUS] == SCORED).to_numpy()
        loans = frame.loc[kept]
        # Parsed values as records, NaN for a missing number: what transform_records takes.
        records = loans[bundle.spec_inputs()].to_dict("records")
        p = self.probabilities(bundle.transform(records))
        segment_rows = loans[bundle.segment_features].astype("float64").to_numpy()
        n = len(frame)
        probability = np.full(n, np.nan)
        points = np.full(n, np.nan)
        decision = np.full(n, None, dtype=object)
        segment = np.full(n, None, dtype=object)
        probability[kept] = p
        points[kept] = score_points(p, scorecard)
        # The threshold was chosen on calibrated probabilities: decide on those.
        decision[kept] = np.where(p >= bundle.threshold, DECLINE, APPROVE)
        if len(loans):
            segment[kept] = bundle.segment_bands(segment_rows)
        return pd.DataFrame(
            {
                ID: frame[ID].to_numpy(),
                KEY: frame[KEY].to_numpy(),
                STATUS: frame[STATUS].to_numpy(),
                PROBABILITY: probability,
                SCORE: points,
                DECISION: decision,
                SEGMENT: segment,
                REASON: frame[REASON].to_numpy(),
            },
            columns=list(OUTPUT_COLUMNS),
        )


# One model per Python worker process: workers are reused across tasks, so it is opened once.
_MODELS: dict[tuple[str, int], LoadedModel] = {}


def _model(task: ScoringTask) -> LoadedModel:
    from pyspark import SparkFiles

    folder = SparkFiles.get(task.bundle_name)
    key = (folder, task.onnx_threads)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = LoadedModel.open(Path(folder), task.onnx_threads)
    return _MODELS[key]


def score_batches(task: ScoringTask, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas body: every batch of a partition scored, in the order it came."""
    model = _model(task)
    for frame in batches:
        yield model.score(frame, task.scorecard)
