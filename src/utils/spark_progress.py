"""Progress events of long Spark work: jobs finished and tasks done per active stage, read from
Spark's status tracker on a timer, so a forty-minute stage shows where it is."""

from __future__ import annotations

import contextvars
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from src.utils.logging import get_logger

log = get_logger(component="spark")


_GROUP = "spark.jobGroup.id"
_FINISHED = {"SUCCEEDED", "FAILED"}


def _group_status(tracker: Any, group: str) -> tuple[int, list[dict[str, int]]]:
    """Jobs of `group` finished so far, and the tasks of its active stages."""
    active = set(tracker.getActiveStageIds())
    done, running = 0, set()
    for job_id in tracker.getJobIdsForGroup(group):
        job = tracker.getJobInfo(job_id)
        if job is None:
            continue
        if job.status in _FINISHED:
            done += 1
        else:
            running.update(stage for stage in job.stageIds if stage in active)
    stages = []
    for stage_id in sorted(running):
        info = tracker.getStageInfo(stage_id)
        if info is not None:
            stages.append({"stage": stage_id, "tasks": info.numTasks,
                           "done": info.numCompletedTasks, "running": info.numActiveTasks})
    return done, stages


@contextmanager
def spark_progress(spark: Any, event: str, interval_s: float, **fields: Any) -> Iterator[None]:
    """Log `event` with `fields` every `interval_s` seconds while the body runs Spark jobs.

    Each event carries the seconds elapsed, the Spark jobs finished since the body began (an
    iterative estimator runs one or more per iteration) and the active stages' tasks.
    """
    sc = spark.sparkContext
    tracker = sc.statusTracker()
    # The body's jobs carry a group of their own (a thread-local property that threads started by
    # the body inherit), so jobs elsewhere in the session are never counted.
    group = f"progress-{event}-{uuid.uuid4().hex[:12]}"
    outer_group = sc.getLocalProperty(_GROUP)
    started = time.perf_counter()
    stop = threading.Event()

    def report() -> None:
        done = 0
        while not stop.wait(interval_s):
            finished, stages = _group_status(tracker, group)
            # Never backwards: the tracker forgets the oldest jobs beyond spark.ui.retainedJobs.
            done = max(done, finished)
            log.info(event, **fields, elapsed_s=round(time.perf_counter() - started, 1),
                     jobs_done=done, stages=stages,
                     tasks_done=sum(s["done"] for s in stages),
                     tasks=sum(s["tasks"] for s in stages))

    # The run's bound log fields (run_id, stage) live in contextvars, which threads do not inherit.
    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run, args=(report,), name=f"progress-{event}", daemon=True
    )
    sc.setLocalProperty(_GROUP, group)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sc.setLocalProperty(_GROUP, outer_group)  # type: ignore[arg-type]  # None removes it
