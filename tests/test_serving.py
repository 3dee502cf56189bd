"""server/serving.py: graceful shutdown of a real waitress server (fake engine)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

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
    loop = threading.Thread(target=lambda: drained.append(serve_until(server, stop, grace_s=10, poll_s=0.05)))
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
