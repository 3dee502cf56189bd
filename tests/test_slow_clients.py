"""Slow and stalled clients against the real `serve` process: while a thousand of them are
still sending, /ping is answered within SageMaker's limit and ordinary requests are answered,
and their requests are dropped (408) once they have taken longer than
MASKRCNN_REQUEST_TIMEOUT_S to arrive. Loopback only, bounded time. How much they slow the
others is measured by benchmarks/slow_clients.py, not asserted here."""

from __future__ import annotations

import resource
import socket
import time

import numpy as np
import pytest

from harness.proc import rss_mb
from harness.server import ServerProcess, http_call
from harness.slow_clients import Trickle, allow_open_files, open_slow_request
from harness.timing import timed
from server_fixtures import encode_pil

STALLED, TRICKLING = 500, 500
TIMEOUT_S = 15
PING_TIMEOUT_S = 2.0  # SageMaker's limit for an answer to GET /ping


def still_waiting(sock: socket.socket) -> bool:
    """Whether the server has neither answered nor closed this connection yet."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)  # an answer's first byte, or b"" once closed
        return False
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_NOFILE"), reason="needs POSIX file limits")
def test_a_thousand_slow_clients_leave_ping_and_invocations_fast(small_model_dir, tmp_path):
    allow_open_files(4096)  # this process holds the clients' thousand sockets
    srv = ServerProcess(small_model_dir, tmp_path / "server.log",
                        extra_env={"MASKRCNN_REQUEST_TIMEOUT_S": str(TIMEOUT_S)})
    clients: list[socket.socket] = []
    trickle = None
    try:
        srv.wait_ready()
        body = encode_pil(np.asarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3)), np.uint8), "JPEG")

        def invoke() -> float:
            seconds, reply = timed(http_call, srv.url + "/invocations", body=body,
                                   headers={"Content-Type": "image/jpeg"}, timeout=60)
            assert reply.status_code == 200, reply.content[:200]
            return seconds

        def ping() -> float:
            seconds, status = timed(srv.ping, timeout=PING_TIMEOUT_S)
            assert status == 200
            return seconds

        invoke()
        usual = float(np.median([invoke() for _ in range(5)]))
        rss_before = rss_mb(srv.pid)

        opened_at = time.monotonic()
        clients = [open_slow_request(srv.port) for _ in range(STALLED + TRICKLING)]
        trickling = clients[STALLED:]
        trickle = Trickle(trickling)  # one byte per connection about every second, never idle long
        time.sleep(1.0)  # let the server accept and read them all
        pings = sorted(ping() for _ in range(20))  # each answered 200 within SageMaker's limit
        during = float(np.median([invoke() for _ in range(5)]))  # each answered 200
        rss_with = rss_mb(srv.pid)
        # ... while every stalled request was still pending: none answered, none dropped yet
        # (the trickling ones are the Trickle thread's to touch)
        assert all(still_waiting(sock) for sock in clients[:STALLED]), "a stalled request ended before the measurements did"
        print(f"1000 slow connections: /ping max {pings[-1] * 1e3:.1f} ms, p95 {pings[-2] * 1e3:.1f} ms; "
              f"invocation {usual * 1e3:.0f} -> {during * 1e3:.0f} ms; server RSS {rss_before:.0f} -> {rss_with:.0f} MB")
        assert rss_with - rss_before < 200, f"1000 slow connections took {rss_with - rss_before:.0f} MB"

        # Past the timeout every slow request is answered 408 and its connection closed.
        deadline = opened_at + TIMEOUT_S + 10
        answers = []
        for sock in clients[:50] + trickling[:50]:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            data = b""
            try:
                while chunk := sock.recv(4096):
                    data += chunk
            except (ConnectionResetError, TimeoutError, socket.timeout):
                pass
            answers.append(data)
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), [a[:40] for a in answers if not a.startswith(b"HTTP/1.1 408")][:3]
        assert b'"status": 408' in answers[0]
        assert not any(still_waiting(sock) for sock in clients[:50])  # answered and closed: no longer pending
        ping(), invoke()  # and the server answers as before
        assert "did not arrive within" in srv.log()
    finally:
        if trickle:
            trickle.stop()
        for sock in clients:
            sock.close()
        srv.stop(30)
