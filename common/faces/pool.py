"""The extraction worker pool: one process per core, a dead worker retried once.

What a job does (one video, under its lock) is common/faces/extraction.py's `_run_job`; it is
passed in, so the pool runs whatever extraction.py names at call time.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import signal
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from common.faces.cache import CacheWriteError, FaceCache
from common.faces.video import single_threaded_decoding

log = logging.getLogger("common.faces.extraction")  # the extraction's log, as before the split


class WorkerDiedError(CacheWriteError):
    """An extraction worker process died twice on the same video (exit 3, video named)."""


@dataclass
class _Job:
    record: Any
    cache: FaceCache
    detector: str
    model_path: str | None
    max_side: int
    decode_audio: bool
    retry_skipped: bool = False


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already; more threads would oversubscribe
    single_threaded_decoding()
    # Ctrl-C reaches the whole process group: the main process decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _kill_pool(pool: cf.ProcessPoolExecutor) -> None:
    """Stop now: running workers are terminated (their temp files are theirs, never renamed)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        if p.is_alive():
            p.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        p.join(timeout=5)


def _results(run: Callable[..., tuple[str, str, str]], jobs: list[_Job], workers: int,
             stop: Callable[[], bool], poll_s: float = 0.2):
    """run(job) of each job as they come, in this process (workers 0, run(job, stop)) or in
    worker processes. A dead worker is noticed at once (BrokenProcessPool): the videos it was
    working on are retried once, alone; a second death on the same video raises
    WorkerDiedError naming it. `stop()` is polled while waiting (a SIGTERM)."""
    if workers <= 0:
        for job in jobs:
            if stop():
                return
            yield run(job, stop)
        return
    import multiprocessing as mp

    todo = list(jobs)
    suspects: list[_Job] = []  # in flight when a worker died: retried one at a time
    deaths: Counter = Counter()
    while todo or suspects:
        pool = cf.ProcessPoolExecutor(min(workers, len(todo) + len(suspects)),
                                      mp_context=mp.get_context("spawn"), initializer=_init_worker)
        flying: dict[cf.Future, _Job] = {}
        try:
            while todo or suspects or flying:
                limit = 1 if suspects else workers
                while len(flying) < limit and (suspects or todo):
                    job = suspects.pop(0) if suspects else todo.pop(0)
                    flying[pool.submit(run, job)] = job
                done, _ = cf.wait(flying, timeout=poll_s, return_when=cf.FIRST_COMPLETED)
                if stop():
                    return
                for fut in done:
                    job = flying.pop(fut)
                    try:
                        res = fut.result()
                    except cf.process.BrokenProcessPool:
                        flying[fut] = job  # handled below with the others in flight
                        raise
                    yield res
        except cf.process.BrokenProcessPool:
            if stop():  # a SIGTERM to the process group kills the workers too
                return
            lost = list(flying.values())
            for job in lost:
                deaths[job.record.rel] += 1
                if deaths[job.record.rel] >= 2:
                    raise WorkerDiedError(f"an extraction worker died twice on {job.record.path}; "
                                          "remove or repair that file and rerun") from None
            log.warning("an extraction worker died (on one of: %s); retrying them one at a time",
                        ", ".join(j.record.rel for j in lost))
            suspects = lost + suspects
        finally:
            _kill_pool(pool)
