"""The one SparkSession factory: local[*] by default, a real cluster when `spark.master` says so."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from src.utils.config import SparkConfig


def get_spark(cfg: SparkConfig) -> SparkSession:
    """Return the process's SparkSession, creating it from `cfg` on first use."""
    # Loopback: the hostname may not resolve, and nothing here should listen outside.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers run this interpreter (the project's venv): xgboost.spark trains inside them.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.appName(cfg.app_name)
        .master(cfg.master)
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel(cfg.log_level)
    return spark
