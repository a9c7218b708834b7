"""Progress events of long Spark work: jobs finished and tasks done per active stage, read from
Spark's status tracker on a timer, so a forty-minute stage shows where it is."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from src.utils.logging import get_logger

log = get_logger(component="spark")


def _active_stages(tracker: Any) -> list[dict[str, int]]:
    stages = []
    for stage_id in sorted(tracker.getActiveStageIds()):
        info = tracker.getStageInfo(stage_id)
        if info is not None:
            stages.append({"stage": stage_id, "tasks": info.numTasks,
                           "done": info.numCompletedTasks, "running": info.numActiveTasks})
    return stages


def _last_job(tracker: Any) -> int:
    return max(tracker.getJobIdsForGroup(None), default=-1)


def _jobs_done_since(tracker: Any, first_job: int) -> int:
    # Job ids count up from 0 in a session; the tracker retains only recent jobs, the ids suffice.
    # Active jobs are counted only among those listed, which another job group's are not.
    last = _last_job(tracker)
    running = sum(1 for j in tracker.getActiveJobsIds() if first_job <= j <= last)
    return max(0, last + 1 - first_job - running)


@contextmanager
def spark_progress(spark: Any, event: str, interval_s: float, **fields: Any) -> Iterator[None]:
    """Log `event` with `fields` every `interval_s` seconds while the body runs Spark jobs.

    Each event carries the seconds elapsed, the Spark jobs finished since the body began (an
    iterative estimator runs one or more per iteration) and the active stages' tasks.
    """
    tracker = spark.sparkContext.statusTracker()
    first_job = _last_job(tracker) + 1
    started = time.perf_counter()
    stop = threading.Event()

    def report() -> None:
        done = 0
        while not stop.wait(interval_s):
            stages = _active_stages(tracker)
            # Never backwards: a job can show as active a moment before it is listed.
            done = max(done, _jobs_done_since(tracker, first_job))
            log.info(event, **fields, elapsed_s=round(time.perf_counter() - started, 1),
                     jobs_done=done, stages=stages,
                     tasks_done=sum(s["done"] for s in stages),
                     tasks=sum(s["tasks"] for s in stages))

    # The run's bound log fields (run_id, stage) live in contextvars, which threads do not inherit.
    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run, args=(report,), name=f"progress-{event}", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
