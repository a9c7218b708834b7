"""Progress events of long Spark work: only the block's own jobs counted, run context kept."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from src.utils.logging import bind_context, clear_context, configure_logging
from src.utils.spark_progress import spark_progress

JOBS = 4


def test_progress_events_count_the_blocks_jobs_and_carry_the_run_context(
    spark: Any, tmp_path: Path
) -> None:
    log_file = tmp_path / "events.jsonl"
    configure_logging(log_file)
    bind_context(run_id="r1", stage="train_sup")
    sc = spark.sparkContext
    elsewhere_stop = threading.Event()

    def jobs_elsewhere() -> None:  # another thread's jobs during the block: not counted
        while not elsewhere_stop.wait(0.05):
            sc.parallelize(range(10), 2).sum()

    elsewhere = threading.Thread(target=jobs_elsewhere, daemon=True)
    try:
        sc.parallelize(range(10), 2).sum()  # before the block: not counted
        elsewhere.start()
        with spark_progress(spark, "test.progress", 0.1, model="m", i=1, n=2):
            for _ in range(JOBS):
                sc.parallelize(range(100), 2).sum()  # an RDD action is exactly one job
                time.sleep(0.3)
        assert sc.getLocalProperty("spark.jobGroup.id") is None  # the caller's group restored
    finally:
        elsewhere_stop.set()
        elsewhere.join()
        clear_context()
        configure_logging()
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    progress = [e for e in events if e["event"] == "test.progress"]
    assert len(progress) >= JOBS, progress
    assert all(
        (e["model"], e["i"], e["n"], e["run_id"], e["stage"]) == ("m", 1, 2, "r1", "train_sup")
        for e in progress
    )
    done = [e["jobs_done"] for e in progress]
    assert done == sorted(done) and done[-1] == JOBS, done
    elapsed = [e["elapsed_s"] for e in progress]
    assert elapsed == sorted(elapsed) and elapsed[-1] >= 0.3 * (JOBS - 1), elapsed
