"""The validation rows register brings to the driver, and ONNX-against-Spark parity on them.

Only a seeded sample of at most `register.parity_sample_rows` validation loans reaches the driver
(all of them when the slice is smaller), so register's memory does not grow with the data. The
sample is the loans with the smallest seeded hash of their key: the same rows on every run and
machine for the same slice, whatever the partitioning. Parity is then a check on those rows, not
on every validation loan; export bugs hit whole classes of inputs, which a sample of this size
covers.
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from src.core.calibration import Calibration
from src.core.raw_schema import KEY_COLUMN
from src.pipelines.export.onnx_export import Parity, ScoredTest, parity_of
from src.utils.errors import PermanentError

# Salted so the sample is not the start of the split's or the validation slice's hash order.
SAMPLE_SALT = ":register-sample"
_ORDER = "_register_sample_order"


def validation_sample(validation: DataFrame, rows: int, seed: int) -> DataFrame:
    """Exactly min(len(validation), rows) loans: those with the smallest seeded hash of the key."""
    order = F.xxhash64(F.lit(f"{seed}{SAMPLE_SALT}"), F.col(KEY_COLUMN))
    # orderBy + limit is Spark's top-k: each partition keeps at most `rows`, never the slice.
    return (
        validation.withColumn(_ORDER, order)
        .orderBy(_ORDER, KEY_COLUMN)
        .limit(rows)
        .drop(_ORDER)
    )


def calibrated_parity(parity: Parity, scored: ScoredTest, calibration: Calibration) -> Parity:
    """ONNX against Spark after both went through the calibration table, as they are served."""
    onnx_p = calibration.apply(parity.onnx_probability)
    diff = np.abs(onnx_p - calibration.apply(scored.spark_probability))
    # The raw difference counts too: a flat stretch of the table must not hide a broken export.
    diff = np.maximum(diff, np.abs(parity.onnx_probability - scored.spark_probability))
    return parity_of(diff, scored.keys, onnx_p)


def require_parity(parity: Parity, tolerance: float, model: str) -> None:
    """Stop the registration when the served probabilities differ from Spark's beyond tolerance."""
    if not parity.max_abs_diff <= tolerance:
        raise PermanentError(
            f"register: ONNX export of {model} differs from Spark by {parity.max_abs_diff:.3e} "
            f"(loan {parity.worst_key}) on {parity.rows} validation loans, above "
            f"register.onnx_tolerance {tolerance:.1e}; nothing was registered"
        )
