"""Bounded inference: at most `workers` jobs run at once, at most `queue_size` more wait.

Why: one inference already uses every core (ONNX Runtime's intra-op threads), so running
more at once only makes each slower; and requests that cannot start soon are better refused
at once (503 + Retry-After) than left to pile up past SageMaker's 60 s. The HTTP threads
that answer /ping never come here, so pings stay fast while inference is busy.

Jobs run on `workers` long-lived threads, started (and prepared by `initializer`) with the
executor, not on the HTTP thread that submitted them: waitress hands each request to the
next of its many threads, and per-thread state is costly to build on a fresh one (OpenCV 5
sets up its fonts on a thread's first caption, which made a 640x480 JPEG answer's overhead
over predict through waitress far larger than in-process; the figures are in
benchmarks/results/FIGURES.md). The hand-off is a future.
"""

from __future__ import annotations

import collections
import heapq
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

# Weight of the latest job in the moving average of job durations that draining predicts with.
DURATION_SMOOTHING = 0.3
# While draining, a waiting job re-checks its expected finish at least this often.
DRAIN_RECHECK_S = 0.5


class QueueFullError(Exception):
    """Every worker is busy and the waiting room is full."""


class InferenceTimeoutError(Exception):
    """The job waited longer than allowed for a free worker and was not started."""


class ShuttingDownError(Exception):
    """The server is draining and this job could not finish before its deadline."""


class InferenceExecutor:
    """Admission control for inference jobs.

    `run` raises QueueFullError at once, without waiting, when workers + queue_size jobs
    are already admitted; otherwise it waits, first come first served, for one of the
    `workers` slots (at most `timeout` seconds) and runs the job on a worker thread while
    the caller waits. `initializer` runs once on each worker thread as it starts, before
    any job.

    Draining: after `drain(finish_by)` a job starts only if it is expected to finish by
    `finish_by` (a time.monotonic() value); a waiting job that would not is refused with
    ShuttingDownError as soon as that is known, so that its client can retry elsewhere at
    once instead of learning it at the deadline. Expected: the jobs ahead of it, each
    taking `expected_s` (the recent jobs' duration), spread over the workers, with each
    running job's elapsed time deducted.
    """

    def __init__(self, workers: int = 1, queue_size: int = 8, initializer=None):
        """`wait_observer`, settable after construction: called with the seconds each job
        waited for its worker, as it starts (the metrics' queue-wait histogram)."""
        if workers < 1 or queue_size < 0:
            raise ValueError(f"need workers >= 1 and queue_size >= 0, got {workers}, {queue_size}")
        self.workers = workers
        self.queue_size = queue_size
        self._admission = threading.BoundedSemaphore(workers + queue_size)
        self._changed = threading.Condition()  # guards everything below; notified when a slot frees or drain begins
        self._admitted = 0
        self._waiting: collections.deque[object] = collections.deque()  # tickets, first come first
        self._started: dict[object, float] = {}  # running job's ticket -> its start (monotonic)
        self._expected_s = 0.0  # unknown until a job has run: then nothing is refused early
        self._finish_by: float | None = None
        self.wait_observer = None
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

    @property
    def waiting(self) -> int:
        """Admitted jobs waiting for a worker now."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Jobs on a worker now."""
        return len(self._started)

    @property
    def expected_s(self) -> float:
        """What a job is expected to take: a moving average of recent jobs (0 before any)."""
        return self._expected_s

    @property
    def draining(self) -> bool:
        return self._finish_by is not None

    def drain(self, finish_by: float) -> None:
        """From now on start only jobs expected to finish by `finish_by` (time.monotonic())."""
        with self._changed:
            self._finish_by = finish_by
            self._changed.notify_all()

    def run(self, fn, /, *args, timeout: float | None = None, **kwargs):
        """fn(*args, **kwargs) once a worker slot is free; its result or its exception."""
        if not self._admission.acquire(blocking=False):
            raise QueueFullError(f"{self.workers} inference worker(s) busy and "
                                 f"{self.queue_size} request(s) already waiting")
        ticket = object()
        arrived = time.monotonic()
        try:
            with self._changed:
                self._admitted += 1
                self._waiting.append(ticket)
                try:
                    self._wait_for_slot(ticket, timeout)
                finally:
                    self._waiting.remove(ticket)
                    self._changed.notify_all()  # the next in line may now be first
                start = self._started[ticket] = time.monotonic()
            if self.wait_observer is not None:
                self.wait_observer(start - arrived)
            try:
                return self._threads.submit(fn, *args, **kwargs).result()
            finally:
                with self._changed:
                    del self._started[ticket]
                    took = time.monotonic() - start
                    self._expected_s = took if not self._expected_s else (
                        (1 - DURATION_SMOOTHING) * self._expected_s + DURATION_SMOOTHING * took)
                    self._changed.notify_all()
        finally:
            with self._changed:
                self._admitted -= 1
            self._admission.release()

    def _wait_for_slot(self, ticket, timeout: float | None) -> None:
        """Called holding the lock; returns when `ticket` is first in line and a worker is free."""
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if self._finish_by is not None:
                finish = self._expected_finish(ticket, now)
                if finish > self._finish_by:
                    raise ShuttingDownError(
                        f"the server is shutting down and this request would finish "
                        f"{finish - self._finish_by:.1f} s after its deadline")
            if self._waiting[0] is ticket and len(self._started) < self.workers:
                return
            if give_up is not None and now >= give_up:
                raise InferenceTimeoutError(f"no inference worker became free within {timeout:g} s")
            wait = None if give_up is None else give_up - now
            if self._finish_by is not None:  # re-check as the deadline nears
                wait = min(wait or DRAIN_RECHECK_S, DRAIN_RECHECK_S)
            self._changed.wait(wait)

    def _expected_finish(self, ticket, now: float) -> float:
        """When `ticket`'s job would end: the workers' free times (running jobs expected to
        take `expected_s` in all, at least until now), then each job ahead of it in line."""
        expected = self._expected_s
        free_at = sorted(max(start + expected, now) for start in self._started.values())
        free_at += [now] * (self.workers - len(free_at))
        for ahead in self._waiting:
            if ahead is ticket:
                break
            heapq.heapreplace(free_at, free_at[0] + expected)
        return free_at[0] + expected


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
        map of the rendered answer, the largest mask crop, the encoder's output; set with
        room above what a 40-megapixel PNG answer with the R50 model was measured to need).
    Only `workers` requests run at once, so the need is every admitted body, the `workers`
    largest photo estimates, and (min(admitted, workers) - 1) * inference_bytes. The idle
    size is the process's RSS (`measure_idle`), taken whenever a request arrives with
    nothing admitted: the allocators and the runtimes' arenas keep some of what earlier
    requests used, so the idle size grows after start and a figure taken once would let
    the peak pass the budget. A request arriving when nothing is admitted is always taken,
    so a budget smaller than the model only serialises requests.
    """

    BYTES_PER_PIXEL = 10

    def __init__(self, budget_bytes: int, workers: int = 1, measure_idle=None):
        self.budget_bytes = int(budget_bytes)
        self.workers = workers
        self.idle_bytes: int | None = None
        self._measure_idle = measure_idle or _rss_bytes
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
            admitted = list(self._admitted.values())
            if not admitted:
                self.idle_bytes = self._measure_idle()
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
