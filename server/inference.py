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


class MemoryBudgetError(Exception):
    """Admitting the request could take the process past its memory budget."""


class MemoryBudget:
    """Admission by memory: refuse a request (before its pixels exist) when the memory the
    admitted requests may need, on top of the process's idle size, would pass `budget_bytes`.

    A request may need its body (held while it waits) and, while it runs, two kinds of
    working memory:
      - the model's: the activations one inference needs, measured at warm-up
        (`inference_bytes`, see `peak_growth`; warm-up runs the largest network input and a
        full pass of the mask head). The idle size already holds one set (ONNX Runtime's
        arena keeps it), so each further concurrent inference adds one more.
      - the photo's: `BYTES_PER_PIXEL` per pixel its header declares (decoded RGB, the label
        map of the rendered answer, the largest mask crop, the encoder's output; measured
        7.4 B/px for a 40-megapixel PNG answer with the R50 model, so 10 leaves room).
    Only `workers` requests run at once, so the need is every admitted body, the `workers`
    largest photo estimates, and (min(admitted, workers) - 1) * inference_bytes. The idle
    size is the process's RSS at the first admission (the model is loaded and warm by then).
    A request arriving when nothing is admitted is always taken, so a budget smaller than
    the model only serialises requests.
    """

    BYTES_PER_PIXEL = 10

    def __init__(self, budget_bytes: int, workers: int = 1):
        self.budget_bytes = int(budget_bytes)
        self.workers = workers
        self.idle_bytes: int | None = None
        self._admitted: dict[int, tuple[int, int]] = {}  # ticket -> (body bytes, photo working bytes)
        self._lock = threading.Lock()
        self._next = 0

    def need(self, admitted, inference_bytes: int = 0) -> int:
        """Bytes over the idle size that the given (body, working) requests may take at once."""
        bodies = sum(body for body, _ in admitted)
        working = sorted((w for _, w in admitted), reverse=True)[:self.workers]
        concurrent = min(len(admitted), self.workers)
        return bodies + sum(working) + max(concurrent - 1, 0) * int(inference_bytes)

    def admit(self, body_bytes: int, pixels: int, inference_bytes: int = 0) -> int:
        """A ticket for `release`, or MemoryBudgetError. `inference_bytes`: one inference's
        working memory, as measured at warm-up (0 where unknown)."""
        request = (int(body_bytes), int(pixels) * self.BYTES_PER_PIXEL)
        with self._lock:
            if self.idle_bytes is None:
                self.idle_bytes = _rss_bytes()
            admitted = list(self._admitted.values())
            now = self.need(admitted, inference_bytes)
            then = self.need(admitted + [request], inference_bytes)
            if admitted and self.idle_bytes + then > self.budget_bytes:
                mb = 2**20
                raise MemoryBudgetError(
                    f"memory budget: {len(admitted)} request(s) in progress may need {now // mb} MB over "
                    f"the idle {self.idle_bytes // mb} MB, and this one {(then - now) // mb} MB more; "
                    f"the budget is {self.budget_bytes // mb} MB")
            self._next += 1
            self._admitted[self._next] = request
            return self._next

    def release(self, ticket: int) -> None:
        with self._lock:
            self._admitted.pop(ticket, None)


def peak_growth(fn) -> int:
    """Run `fn()` and return how far this process's resident set rose above where it was
    before: peak RSS (VmHWM, restarted first through /proc/self/clear_refs) minus the RSS
    before; where the peak cannot be restarted, the RSS after minus before (what an arena
    kept). 0 where /proc is missing."""
    before = _rss_bytes()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        peak_known = True
    except OSError:
        peak_known = False
    fn()
    after = _peak_rss_bytes() if peak_known else _rss_bytes()
    return max(after - before, 0) if before else 0


def _peak_rss_bytes() -> int:
    """This process's peak resident set since start or the last restart (VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _rss_bytes() -> int:
    """This process's resident set (Linux /proc); 0 where there is none (no idle size known)."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0
