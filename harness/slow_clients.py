"""Slow clients for the real server: connections that send an invocation's headers and the
first bytes of its body and then stall, or go on sending a byte a second; and the open-file
limit a process holding a thousand of them needs."""

from __future__ import annotations

import resource
import socket
import threading


def open_slow_request(port: int) -> socket.socket:
    """A connection that has sent an invocation's headers and the first bytes of its body."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
                 b"Content-Length: 200000\r\n\r\n\xff\xd8\xff")
    return sock


class Trickle:
    """Sends one byte on each of `socks` about every second, on a thread, until stopped."""

    def __init__(self, socks: list[socket.socket]):
        self._socks = socks
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            for sock in self._socks:
                try:
                    sock.send(b"\x00")
                except OSError:
                    pass
            self._stop.wait(1.0)

    def stop(self):
        self._stop.set()
        self._thread.join(5)


def allow_open_files(wanted: int) -> None:
    """This process holds every client socket: raise its soft open-file limit towards `wanted`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))
