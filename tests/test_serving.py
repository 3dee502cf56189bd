"""server/serving.py: graceful shutdown of a real waitress server (fake engine)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from helpers import read_until_closed, wait_until
from server import ServerConfig, create_app
from server_fixtures import JPEG
from server_fixtures import engine, client, jpeg_body  # noqa: F401  (fixtures)


# ---- graceful shutdown of a real waitress server (fake engine) -----------------------------------------


def test_serve_until_finishes_in_flight_requests_then_refuses(engine, jpeg_body):
    import waitress

    from server.serving import serve_until

    app = create_app(engine, ServerConfig())
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    port = server.effective_port
    stop = threading.Event()
    drained = []
    loop = threading.Thread(target=lambda: drained.append(serve_until(server, stop, deadline_s=10, poll_s=0.05)))
    loop.start()
    engine.gate = threading.Event()
    answers = []

    def call():
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=jpeg_body,
                                     headers={"Content-Type": JPEG}, method="POST")
        with urllib.request.urlopen(req, timeout=20) as resp:
            answers.append((resp.status, json.loads(resp.read())))

    client = threading.Thread(target=call)
    client.start()
    assert engine.started.wait(10)  # the request is in flight ...
    stop.set()  # ... when the shutdown begins
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the listening socket closes promptly
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the server kept accepting connections after stop")
    engine.gate.set()
    client.join(20)
    loop.join(20)
    assert answers and answers[0][0] == 200 and answers[0][1]["labels"] == ["person 95%", "cat 61%"]
    assert drained == [True]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)


class _Served:
    """create_app over the fake engine on a real waitress server, its loop in a thread."""

    def __init__(self, engine, deadline_s: float = 10.0, poll_s: float = 0.05, start: bool = True, **config):
        import waitress

        from server.serving import LoopStats, serve_until

        self.server = waitress.create_server(create_app(engine, ServerConfig(**config)), host="127.0.0.1",
                                             port=0, threads=4, connection_limit=4000, asyncore_use_poll=True)
        self.port = int(self.server.effective_port)
        self.stop = threading.Event()
        self.stats = LoopStats()
        self.result = []
        self.loop = threading.Thread(target=lambda: self.result.append(serve_until(
            self.server, self.stop, deadline_s=deadline_s, poll_s=poll_s, retry_after_s=7, stats=self.stats)))
        if start:
            self.loop.start()

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=20)

    def close(self):
        self.stop.set()
        if self.loop.is_alive():
            self.server.pull_trigger()  # wake the loop now, not at its next poll timeout
            self.loop.join(30)


def _post_head(length: int) -> bytes:
    return (f"POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Type: {JPEG}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_at_the_deadline_a_request_still_inferred_or_still_arriving_is_answered_503(engine, jpeg_body):
    """Neither finishes by the deadline: both get a JSON 503 with Retry-After from the event
    loop, then the connection closes; nothing is dropped without an answer."""
    served = _Served(engine, deadline_s=1.0)
    engine.gate = threading.Event()
    try:
        inferred, arriving = served.connect(), served.connect()
        inferred.sendall(_post_head(len(jpeg_body)) + jpeg_body)
        assert engine.started.wait(10)
        arriving.sendall(_post_head(len(jpeg_body)) + jpeg_body[:100])
        time.sleep(0.2)  # both read by the server
        began = time.monotonic()
        served.stop.set()
        answers = [read_until_closed(inferred), read_until_closed(arriving)]
        waited = time.monotonic() - began
    finally:
        engine.gate.set()
        served.close()
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert b"\r\nRetry-After: 7\r\n" in head + b"\r\n" and b"\r\nConnection: close\r\n" in head + b"\r\n"
        assert json.loads(body) == {"error": "the server is shutting down and could not answer this request "
                                             "in time; retry", "status": 503}
    assert 0.9 < waited < 5
    assert served.result == [False]


def test_a_response_being_sent_at_the_deadline_is_not_cut_into(engine, jpeg_body):
    """ServingChannel.answer_instead declines once the application's response has begun."""
    from server.serving import ServingChannel, error_response

    served = _Served(engine)
    try:
        sock = served.connect()
        sock.sendall(_post_head(len(jpeg_body)) + jpeg_body)
        reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200 ")
        channel = next(c for c in served.server._map.values() if isinstance(c, ServingChannel))
        wait_until(lambda: channel.response_begun is False)  # between requests: nothing begun
        channel.response_begun = True  # as while a response is written
        assert channel.answer_instead(error_response(503, "Service Unavailable", "x")) is False
        channel.response_begun = False
    finally:
        served.close()


# ---- a burst of connections -----------------------------------------------------------------------------


def _burst_size(wanted: int = 1000) -> int:
    """`wanted`, or less where the kernel's accept queue (somaxconn) cannot hold that many."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return min(wanted, int(f.read()) - 24)
    except OSError:
        return wanted


def test_a_burst_of_connections_is_accepted_in_a_few_loop_passes_and_ping_answers(engine):
    """A thousand connections waiting at once in the accept queue, each having sent an
    invocation's headers and stalled, and a /ping behind them: the server accepts them in
    batches and answers the ping within a few passes of its event loop (waitress alone
    accepts one connection per pass over every open connection: over a thousand passes).
    Bounded work, counted in loop passes, not in wall time: everything arrives before the
    loop starts, and the loop wakes only on events (a long poll timeout)."""
    from harness.slow_clients import allow_open_files
    from server.serving import ACCEPT_BATCH

    burst = _burst_size()
    allow_open_files(4 * burst)  # both ends of every connection live in this process
    served = _Served(engine, poll_s=30.0, start=False)
    clients = []
    try:
        for _ in range(burst):
            sock = socket.socket()
            sock.setblocking(False)
            try:
                sock.connect(("127.0.0.1", served.port))
            except BlockingIOError:
                pass
            clients.append(sock)
        for sock in clients:
            sock.setblocking(True)
            sock.sendall(_post_head(100_000))
        ping = served.connect()
        ping.sendall(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        served.loop.start()
        answer = read_until_closed(ping)
        passes = served.stats.passes
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert served.stats.accepted == burst + 1
        batches = -(-(burst + 1) // ACCEPT_BATCH)
        print(f"{burst} connections and a ping: {passes} loop passes ({batches} to accept them)")
        # the batches, then reading the ping, waking on its answer, writing it: a few more
        assert passes <= min(batches + 6, 16), f"{passes} event-loop passes to accept {burst} connections and answer a ping"
    finally:
        for sock in clients:
            sock.close()
        served.close()
