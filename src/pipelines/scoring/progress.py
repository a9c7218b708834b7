"""Progress events of a long Spark job: tasks done per active stage (Spark's status tracker)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from src.utils.logging import get_logger

log = get_logger(component="scoring")


def _snapshot(tracker: Any) -> list[dict[str, int]]:
    stages = []
    for stage_id in sorted(tracker.getActiveStageIds()):
        info = tracker.getStageInfo(stage_id)
        if info is not None:
            stages.append({"stage": stage_id, "tasks": info.numTasks,
                           "done": info.numCompletedTasks, "running": info.numActiveTasks})
    return stages


@contextmanager
def progress_events(spark: Any, phase: str, interval_s: float) -> Iterator[None]:
    """Log `score.progress` every `interval_s` seconds while the body runs Spark jobs."""
    tracker = spark.sparkContext.statusTracker()
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(interval_s):
            stages = _snapshot(tracker)
            if stages:
                log.info("score.progress", phase=phase, stages=stages,
                         tasks_done=sum(s["done"] for s in stages),
                         tasks=sum(s["tasks"] for s in stages))

    thread = threading.Thread(target=report, name=f"score-progress-{phase}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
