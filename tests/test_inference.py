"""server/inference.py: a bounded queue of inferences; a full one is 503, a long wait 504, /ping never waits."""

from __future__ import annotations

import threading
import time

import falcon.testing
import pytest

from helpers import wait_until
from server import ServerConfig, create_app
from server.inference import InferenceExecutor, QueueFullError, ShuttingDownError
from server_fixtures import post, assert_error
from server_fixtures import engine, client, jpeg_body  # noqa: F401  (fixtures)


UNLIMITED_MB = 1 << 30

# ---- concurrency: a full queue is 503, pings never wait --------------------------------------------


def test_full_queue_is_503_with_retry_after_and_ping_never_waits(engine, jpeg_body):
    # the memory budget out of the way: this process's own size (every test's imports, models
    # other tests ran) is not what is tested here
    config = ServerConfig(workers=1, queue_size=1, retry_after_s=3, memory_budget_mb=UNLIMITED_MB)
    executor = InferenceExecutor(config.workers, config.queue_size)
    client = falcon.testing.TestClient(create_app(engine, config, executor))
    engine.gate = threading.Event()
    results = []

    def call():
        results.append(post(client, jpeg_body))

    threads = [threading.Thread(target=call) for _ in range(2)]  # one running, one waiting
    for t in threads:
        t.start()
    try:
        wait_until(lambda: executor.admitted == 2)
        resp = post(client, jpeg_body)
        assert_error(resp, 503, "busy")
        assert resp.headers["retry-after"] == "3"
        # answered while both inferences are still held at the gate: /ping waited behind none
        assert client.simulate_get("/ping").status_code == 200
        assert not engine.gate.is_set() and results == [] and executor.admitted == 2
    finally:
        engine.gate.set()
        for t in threads:
            t.join(10)
    assert [r.status_code for r in results] == [200, 200]


def test_executor_refuses_beyond_capacity():
    executor = InferenceExecutor(workers=1, queue_size=0)
    gate, started = threading.Event(), threading.Event()

    def job():
        started.set()
        gate.wait(10)
        return "done"

    out = []
    t = threading.Thread(target=lambda: out.append(executor.run(job)))
    t.start()
    assert started.wait(10)
    with pytest.raises(QueueFullError):
        executor.run(job)
    gate.set()
    t.join(10)
    assert out == ["done"] and executor.admitted == 0
    assert executor.run(lambda: 42) == 42  # the slot was released
    with pytest.raises(ZeroDivisionError):
        executor.run(lambda: 1 / 0)
    assert executor.admitted == 0  # released on errors too


def test_waiting_longer_than_the_timeout_is_504(engine, jpeg_body):
    client = falcon.testing.TestClient(create_app(engine, ServerConfig(timeout_s=0.2, memory_budget_mb=UNLIMITED_MB)))
    engine.gate = threading.Event()
    first = threading.Thread(target=post, args=(client, jpeg_body))
    first.start()
    try:
        assert engine.started.wait(10)  # the only worker is busy ...
        assert_error(post(client, jpeg_body), 504, "0.2")  # ... for longer than the timeout
    finally:
        engine.gate.set()
        first.join(10)
    assert len(engine.calls) == 1  # the refused request never reached the engine


def test_jobs_run_on_long_lived_prepared_threads():
    """Each job runs on one of `workers` threads started with the executor, each prepared by
    the initializer once before any job, never on the HTTP thread that asked."""
    prepared = []
    executor = InferenceExecutor(workers=2, queue_size=4, initializer=lambda: prepared.append(threading.get_ident()))
    assert len(prepared) == 2  # both started up front, not on the first request
    ran_on = set()
    for _ in range(6):
        callers = [threading.Thread(target=lambda: ran_on.add(executor.run(threading.get_ident))) for _ in range(2)]
        for t in callers:
            t.start()
        for t in callers:
            t.join(10)
    assert ran_on <= set(prepared) and threading.get_ident() not in ran_on
    assert executor.run(lambda: threading.current_thread().name).startswith("inference")
    assert len(prepared) == 2


# ---- draining: only what can finish by the deadline starts -------------------------------------


def _submit(executor, fn, outcomes, key):
    """executor.run(fn) on a thread; outcomes[key] = ("ok", result) or ("refused", when)."""
    def call():
        try:
            outcomes[key] = ("ok", executor.run(fn))
        except ShuttingDownError:
            outcomes[key] = ("refused", time.monotonic())
    thread = threading.Thread(target=call)
    thread.start()
    return thread


def test_draining_refuses_at_once_the_waiting_jobs_that_cannot_finish_and_runs_the_rest():
    """Jobs take 0.3 s; one runs (gated, past its expected time), four wait, and the deadline
    leaves room for two: the last two are refused as soon as draining begins, long before the
    deadline, and the first two still run, in order."""
    executor = InferenceExecutor(workers=1, queue_size=5)
    executor.run(time.sleep, 0.3)  # what a job takes
    assert executor.expected_s >= 0.3  # a sleep lasts at least its time; how much longer is the machine's
    gate, order, outcomes = threading.Event(), [], {}
    threads = [_submit(executor, gate.wait, outcomes, "running")]
    wait_until(lambda: executor.admitted == 1)
    time.sleep(0.4)  # the running job is past its expected time: a worker is expected free now
    for i in range(4):
        threads.append(_submit(executor, lambda i=i: order.append(i), outcomes, i))
        wait_until(lambda: executor.admitted == 2 + i)  # queued in this order
    deadline = time.monotonic() + 2.5 * executor.expected_s
    executor.drain(finish_by=deadline)
    wait_until(lambda: 2 in outcomes and 3 in outcomes)
    assert outcomes[2][0] == outcomes[3][0] == "refused"
    # refused while the running job is still held at its gate: at once, not at the deadline
    assert not gate.is_set() and "running" not in outcomes
    assert max(outcomes[2][1], outcomes[3][1]) < deadline
    assert 0 not in outcomes and 1 not in outcomes  # still waiting for the worker
    gate.set()
    for thread in threads:
        thread.join(10)
    assert order == [0, 1] and outcomes[0][0] == outcomes[1][0] == "ok"
    assert executor.admitted == 0


def test_draining_refuses_a_new_job_that_cannot_finish_and_runs_one_that_can():
    executor = InferenceExecutor(workers=2, queue_size=2)
    executor.run(time.sleep, 0.2)
    executor.drain(finish_by=time.monotonic() + 5 * executor.expected_s)
    assert executor.draining
    assert executor.run(lambda: "fits") == "fits"
    executor.drain(finish_by=time.monotonic())  # the deadline has come
    with pytest.raises(ShuttingDownError, match="shutting down"):
        executor.run(lambda: "too late")
    assert executor.admitted == 0


def test_a_draining_executor_that_has_timed_no_job_runs_everything():
    """Without a measured duration nothing is refused early: the deadline itself (the event
    loop's 503s) is the backstop."""
    executor = InferenceExecutor(workers=1, queue_size=2)
    executor.drain(finish_by=time.monotonic() + 60)
    assert executor.run(lambda: 1) == 1


# ---- admission by memory ---------------------------------------------------------------------


def test_memory_budget_counts_bodies_and_the_running_requests_working_memory():
    from server.inference import MemoryBudget, MemoryBudgetError

    mb, per_px = 2**20, MemoryBudget.BYTES_PER_PIXEL
    budget = MemoryBudget(budget_bytes=1000 * mb, workers=1, measure_idle=lambda: 600 * mb)  # 400 MB to share
    first = budget.admit(5 * mb, 30 * mb // per_px)  # 5 MB body, 30 MB working
    # one worker: a waiting request adds only its body until it runs
    waiting = [budget.admit(5 * mb, 30 * mb // per_px) for _ in range(10)]
    assert budget.need(list(budget._admitted.values())) == 11 * 5 * mb + 30 * mb
    big = 350 * mb // per_px  # working memory larger than the rest: it is the one that counts
    with pytest.raises(MemoryBudgetError, match="budget is 1000 MB"):
        budget.admit(5 * mb, big)
    for ticket in [first, *waiting]:
        budget.release(ticket)
    budget.release(budget.admit(5 * mb, big))  # alone it fits
    alone = budget.admit(1, 10_000 * mb // per_px)  # nothing else admitted: always taken
    with pytest.raises(MemoryBudgetError):
        budget.admit(1, 1)
    budget.release(alone)
    assert budget.admit(1, 1)

    two = MemoryBudget(budget_bytes=1000 * mb, workers=2, measure_idle=lambda: 600 * mb)
    two.admit(0, 150 * mb // per_px)
    two.admit(0, 150 * mb // per_px)  # both may run at once: 300 MB
    two.admit(0, 150 * mb // per_px)  # a third like them waits for one: no more at once
    with pytest.raises(MemoryBudgetError):
        two.admit(0, 260 * mb // per_px)  # it would run beside one of them: 410 MB
    two.admit(100 * mb, 0)  # a body that fits beside them


def test_memory_budget_takes_the_idle_size_again_whenever_the_server_is_idle():
    """What earlier requests left in the allocators counts: the idle size is measured at each
    admission that finds nothing admitted, not once at the first."""
    from server.inference import MemoryBudget, MemoryBudgetError

    mb, per_px = 2**20, MemoryBudget.BYTES_PER_PIXEL
    rss = [600 * mb]
    budget = MemoryBudget(budget_bytes=1000 * mb, workers=1, measure_idle=lambda: rss[0])
    first = budget.admit(0, 100 * mb // per_px)
    rss[0] = 900 * mb  # grown while requests ran: not the idle size while one is admitted
    budget.release(budget.admit(0, 150 * mb // per_px))  # against 600 MB: fits
    budget.release(first)
    assert budget.idle_bytes == 600 * mb
    alone = budget.admit(0, 100 * mb // per_px)  # idle again: 900 MB now
    assert budget.idle_bytes == 900 * mb
    with pytest.raises(MemoryBudgetError, match="idle 900 MB"):
        budget.admit(0, 150 * mb // per_px)  # the one running may need 150: 900 + 150 > 1000
    budget.release(alone)


def test_memory_budget_counts_one_inference_per_further_concurrent_request():
    """The idle size holds one inference's activations; a second running at once needs its
    own set (measured at warm-up), a third waiting for a worker does not."""
    from server.inference import MemoryBudget, MemoryBudgetError

    mb, per_px = 2**20, MemoryBudget.BYTES_PER_PIXEL
    two = MemoryBudget(budget_bytes=1000 * mb, workers=2, measure_idle=lambda: 600 * mb)
    first = two.admit(0, 10 * mb // per_px, inference_bytes=300 * mb)  # alone: 10 MB
    assert two.need(list(two._admitted.values()), 300 * mb) == 10 * mb
    second = two.admit(0, 10 * mb // per_px, inference_bytes=300 * mb)  # beside it: 10 + 10 + 300
    assert two.need(list(two._admitted.values()), 300 * mb) == 320 * mb
    two.admit(50 * mb, 10 * mb // per_px, inference_bytes=300 * mb)  # waits: only its body more
    assert two.need(list(two._admitted.values()), 300 * mb) == 370 * mb
    with pytest.raises(MemoryBudgetError, match="and this one"):
        two.admit(0, 1, inference_bytes=400 * mb)  # with a larger model the second would not fit
    two.release(first)
    two.release(second)
    # without the measured inference the same three look cheap
    assert two.need(list(two._admitted.values())) == 60 * mb


def test_a_request_past_the_memory_budget_is_503_with_retry_after(engine, jpeg_body):
    """Through the app: with the budget spent by a request in progress, the next one is
    refused before its pixels are decoded; once the first is done, requests are taken again."""
    config = ServerConfig(workers=2, queue_size=4, retry_after_s=5, memory_budget_mb=1)
    client = falcon.testing.TestClient(create_app(engine, config))
    engine.gate = threading.Event()
    first = threading.Thread(target=post, args=(client, jpeg_body))
    first.start()
    try:
        assert engine.started.wait(10)
        resp = post(client, jpeg_body)
        assert_error(resp, 503, "memory budget")
        assert resp.headers["retry-after"] == "5"
        assert len(engine.calls) == 1  # refused before the engine saw it
    finally:
        engine.gate.set()
        first.join(10)
    engine.gate = None
    assert post(client, jpeg_body).status_code == 200
