"""The one SparkSession factory: local[*] by default, a real cluster when `spark.master` says so."""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyspark.sql import SparkSession

from src.utils.config import SparkConfig
from src.utils.logging import get_logger

log = get_logger(component="spark")

MASTER_ENV = "SPARK_MASTER"
# A container knows its own reachable name only at run time: these win over params.yaml too.
DRIVER_HOST_ENV = "SPARK_DRIVER_HOST"
DRIVER_BIND_ENV = "SPARK_DRIVER_BIND_ADDRESS"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def spark_master(cfg: SparkConfig) -> str:
    """The master URL: $SPARK_MASTER when set, else `spark.master`."""
    return os.environ.get(MASTER_ENV) or cfg.master


def spark_uri(path: Path | str) -> str:
    """An absolute URI for Spark: a URI stays as is, a local path becomes `file:///abs/path`.

    Executors resolve a bare path against their own working folder and default filesystem;
    an explicit scheme and absolute path mean the same file on the driver and every executor.
    """
    text = str(path)
    if _SCHEME.match(text):
        return text
    return Path(text).resolve().as_uri()


def table_partitions(cfg: SparkConfig, rows: int) -> int:
    """Partitions for `rows` rows: one per `partition_rows`, within [2, shuffle_partitions]."""
    wanted = max(2, math.ceil(rows / cfg.partition_rows))
    return min(cfg.shuffle_partitions, wanted)


def get_spark(cfg: SparkConfig) -> SparkSession:
    """Return the process's SparkSession, creating it from `cfg` on first use."""
    driver_host = os.environ.get(DRIVER_HOST_ENV) or cfg.driver_host
    bind_address = os.environ.get(DRIVER_BIND_ENV) or cfg.driver_bind_address
    # Loopback by default: the hostname may not resolve, and nothing here should listen outside.
    os.environ.setdefault("SPARK_LOCAL_IP", bind_address)
    # Executors run Python with the driver's interpreter, so they import the same packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    master = spark_master(cfg)
    builder = (
        SparkSession.builder.appName(cfg.app_name)
        .master(master)
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.host", driver_host)
        .config("spark.driver.bindAddress", bind_address)
    )
    if not master.startswith("local"):
        builder = builder.config("spark.executor.memory", cfg.executor_memory)
    for key, value in cfg.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    log.info(
        "spark.session",
        master=spark.sparkContext.master,
        app_id=spark.sparkContext.applicationId,
        default_parallelism=spark.sparkContext.defaultParallelism,
    )
    return spark


WHOLE_STAGE_CODEGEN = "spark.sql.codegen.wholeStage"


@contextmanager
def whole_stage_codegen_off(spark: SparkSession) -> Iterator[None]:
    """Plan and run the queries of the block without whole-stage code generation.

    For very wide projections (prep's row classification: a parser and every rule of every
    column): their generated method outgrows the JVM's 64 KB limit, so Spark would compile it,
    fail and fall back to this anyway, paying the failed compile again on every job.
    """
    previous = spark.conf.get(WHOLE_STAGE_CODEGEN)
    spark.conf.set(WHOLE_STAGE_CODEGEN, "false")
    try:
        yield
    finally:
        spark.conf.set(WHOLE_STAGE_CODEGEN, previous)
