"""Run a waitress server until told to stop, then shut down gracefully.

waitress's own `serve()` has no graceful stop: on SIGINT it cancels queued requests, and
it ignores SIGTERM, which is how SageMaker (and `docker stop`) ask a container to end,
30 s before SIGKILL. `serve_until` drives waitress's event loop itself so that, once
`stop` is set, it closes the listening sockets (new connections are refused), lets every
request already received finish and its response be flushed, closes idle keep-alive
connections, and returns.

It also drops slow requests, which waitress does not: waitress reads every request body in
its event loop before a worker sees it, so a stalled or trickling client costs no thread,
but its channel_timeout only closes connections idle for two minutes, and a client sending
a byte a second is never idle. `SlowRequestReaper` answers 408 and closes any connection
whose request (headers and body) has not fully arrived `timeout_s` after its first byte,
freeing what was buffered.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer

logger = logging.getLogger(__name__)


def _socket_map(server) -> dict:
    # A single listener is a BaseWSGIServer (map in `_map`); several, a MultiSocketServer.
    return server._map if isinstance(server, BaseWSGIServer) else server.map


def _busy(channel: HTTPChannel) -> bool:
    """A request is being received, serviced, or its response is not yet sent."""
    return bool(channel.requests or channel.total_outbufs_len or channel.request is not None)


class SlowRequestReaper:
    """Closes, with a 408, connections whose request takes over `timeout_s` to arrive.

    `sweep(socket_map)` is called from the event loop (waitress's channels are only touched
    there); it looks at the channels at most every `interval_s`, so a thousand connections
    cost one pass a second, not one per event.
    """

    def __init__(self, timeout_s: float, interval_s: float = 1.0):
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self._first_byte: dict[int, tuple[object, float]] = {}  # channel id -> (its parser, when it began)
        self._next_sweep = 0.0
        self.dropped = 0

    def sweep(self, socket_map) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.interval_s
        seen = {}
        for channel in list(socket_map.values()):
            # `request` is the parser of a request still being received; `requests`, those
            # received and being answered (never cut off)
            if not isinstance(channel, HTTPChannel) or channel.request is None or channel.requests:
                continue
            parser, began = self._first_byte.get(id(channel), (None, now))
            if parser is not channel.request:
                began = now  # a new request on this connection
            seen[id(channel)] = (channel.request, began)
            if now - began > self.timeout_s:
                self._drop(channel)
                del seen[id(channel)]
        self._first_byte = seen

    def _drop(self, channel) -> None:
        body = json.dumps({"error": f"the request did not arrive within {self.timeout_s:g} s",
                           "status": 408}).encode()
        head = ("HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            channel.socket.send(head + body)  # a few bytes: fits the socket buffer, or is lost
        except OSError:
            pass
        self.dropped += 1
        logger.info("dropped a request from %s that did not arrive within %g s", channel.addr, self.timeout_s)
        channel.handle_close()


def serve_until(server, stop: threading.Event, grace_s: float = 25.0, poll_s: float = 0.2,
                request_timeout_s: float | None = None) -> bool:
    """Serve until `stop` is set; then drain for at most `grace_s` seconds and close.

    Args:
        server: what `waitress.create_server` returned.
        stop: set it (from a signal handler or another thread) to begin the shutdown.
        grace_s: how long in-flight requests may take to finish after `stop`.
        poll_s: event-loop wake-up interval, the latency of noticing `stop`.
        request_timeout_s: drop (408) requests that take longer to arrive; None: never.

    Returns:
        True if every in-flight request finished within the grace period.
    """
    socket_map = _socket_map(server)
    use_poll = server.adj.asyncore_use_poll
    reaper = SlowRequestReaper(request_timeout_s) if request_timeout_s else None
    while not stop.is_set():
        wasyncore.loop(timeout=poll_s, use_poll=use_poll, map=socket_map, count=1)
        if reaper:
            reaper.sweep(socket_map)

    for dispatcher in list(socket_map.values()):
        if isinstance(dispatcher, BaseWSGIServer):
            # The base close(): closes the listening socket but keeps the trigger that
            # wakes this loop when a worker thread has output ready.
            wasyncore.dispatcher.close(dispatcher)
    deadline = time.monotonic() + grace_s
    drained = False
    while True:
        # Poll first: a request a client sent just before the signal may still sit unread in
        # its socket; reading it makes the channel busy instead of idle (and closed).
        wasyncore.loop(timeout=poll_s, use_poll=use_poll, map=socket_map, count=1)
        channels = [d for d in list(socket_map.values()) if isinstance(d, HTTPChannel)]
        for channel in channels:
            if not _busy(channel):
                channel.handle_close()  # idle keep-alive connection
        if not any(_busy(c) for c in channels):
            drained = True
            break
        if time.monotonic() >= deadline:
            logger.warning("shutdown: %d connection(s) still busy after %.0f s; closing them",
                           sum(_busy(c) for c in channels), grace_s)
            break
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=1.0)
    wasyncore.close_all(socket_map)
    return drained
