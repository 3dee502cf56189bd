"""Run a waitress server until told to stop, then shut down gracefully.

waitress's own `serve()` has no graceful stop: on SIGINT it cancels queued requests, and
it ignores SIGTERM, which is how SageMaker (and `docker stop`) ask a container to end,
30 s before SIGKILL. `serve_until` drives waitress's event loop itself so that, once
`stop` is set, it closes the listening sockets (new connections are refused), lets every
request already received finish and its response be flushed, closes idle keep-alive
connections, and returns.
"""

from __future__ import annotations

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


def serve_until(server, stop: threading.Event, grace_s: float = 25.0, poll_s: float = 0.2) -> bool:
    """Serve until `stop` is set; then drain for at most `grace_s` seconds and close.

    Args:
        server: what `waitress.create_server` returned.
        stop: set it (from a signal handler or another thread) to begin the shutdown.
        grace_s: how long in-flight requests may take to finish after `stop`.
        poll_s: event-loop wake-up interval, the latency of noticing `stop`.

    Returns:
        True if every in-flight request finished within the grace period.
    """
    socket_map = _socket_map(server)
    use_poll = server.adj.asyncore_use_poll
    while not stop.is_set():
        wasyncore.loop(timeout=poll_s, use_poll=use_poll, map=socket_map, count=1)

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
