"""Bounded inference: at most `workers` jobs run at once, at most `queue_size` more wait.

Why: one inference already uses every core (ONNX Runtime's intra-op threads), so running
more at once only makes each slower; and requests that cannot start soon are better refused
at once (503 + Retry-After) than left to pile up past SageMaker's 60 s. The HTTP threads
that answer /ping never come here, so pings stay fast while inference is busy.

Jobs run on `workers` long-lived threads, started (and prepared by `initializer`) with the
executor, not on the HTTP thread that submitted them: waitress hands each request to the
next of its many threads, and per-thread state is costly to build on a fresh one (OpenCV 5
sets up its fonts on a thread's first caption: 25 ms, which made a 640x480 JPEG answer cost
51 ms over predict through waitress against 24 ms in-process). The hand-off is a future.
"""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import ThreadPoolExecutor


class QueueFullError(Exception):
    """Every worker is busy and the waiting room is full."""


class InferenceTimeoutError(Exception):
    """The job waited longer than allowed for a free worker and was not started."""


class InferenceExecutor:
    """Admission control for inference jobs.

    `run` raises QueueFullError at once, without waiting, when workers + queue_size jobs
    are already admitted; otherwise it waits for one of the `workers` slots (at most
    `timeout` seconds) and runs the job on a worker thread while the caller waits.
    `initializer` runs once on each worker thread as it starts, before any job.
    """

    def __init__(self, workers: int = 1, queue_size: int = 8, initializer=None):
        if workers < 1 or queue_size < 0:
            raise ValueError(f"need workers >= 1 and queue_size >= 0, got {workers}, {queue_size}")
        self.workers = workers
        self.queue_size = queue_size
        self._admission = threading.BoundedSemaphore(workers + queue_size)
        self._running = threading.BoundedSemaphore(workers)
        self._lock = threading.Lock()
        self._admitted = 0
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="inference", initializer=initializer)
        weakref.finalize(self, self._threads.shutdown, wait=False)  # idle threads end with the executor
        # Start every worker now (each blocks until all exist, so none is reused), so that
        # no request pays a thread's start or its initializer.
        everyone = threading.Barrier(workers)
        for started in [self._threads.submit(everyone.wait, 30) for _ in range(workers)]:
            started.result()

    @property
    def admitted(self) -> int:
        """Jobs running or waiting now."""
        return self._admitted

    def run(self, fn, /, *args, timeout: float | None = None, **kwargs):
        """fn(*args, **kwargs) once a worker slot is free; its result or its exception."""
        if not self._admission.acquire(blocking=False):
            raise QueueFullError(f"{self.workers} inference worker(s) busy and "
                                 f"{self.queue_size} request(s) already waiting")
        with self._lock:
            self._admitted += 1
        try:
            if not self._running.acquire(timeout=timeout):
                raise InferenceTimeoutError(f"no inference worker became free within {timeout:g} s")
            try:
                return self._threads.submit(fn, *args, **kwargs).result()
            finally:
                self._running.release()
        finally:
            with self._lock:
                self._admitted -= 1
            self._admission.release()
