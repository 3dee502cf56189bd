"""Run a waitress server until told to stop, then drain it against a deadline.

waitress's own `serve()` has no graceful stop: on SIGINT it cancels queued requests, and
it ignores SIGTERM, which is how SageMaker (and `docker stop`) ask a container to end,
30 s before SIGKILL. `serve_until` drives waitress's event loop itself. Once `stop` is set
it closes the listening sockets (new connections are refused), tells `on_stop` the
deadline (the inference executor then starts only jobs expected to finish by it, and
refuses the others at once), lets every request already received finish and its response
be flushed, and closes idle keep-alive connections. At the deadline, every request still
without an answer (arriving, waiting or being inferred) is answered 503 + Retry-After by
the event loop itself and its connection closed: an accepted request ends in its answer
or in a refusal its client can retry, never in a dropped connection.

It also drops slow requests, which waitress does not: waitress reads every request body in
its event loop before a worker sees it, so a stalled or trickling client costs no thread,
but its channel_timeout only closes connections idle for two minutes, and a client sending
a byte a second is never idle. `SlowRequestReaper` answers 408 and closes any connection
whose request (headers and body) has not fully arrived `timeout_s` after its first byte,
freeing what was buffered.

And it accepts connections in batches: waitress accepts one connection per event-loop
pass, and each pass visits every open connection, so a burst of N connections cost N
passes over up to N connections before a /ping behind them was read.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

from waitress import wasyncore
from waitress.channel import ClientDisconnected, HTTPChannel
from waitress.server import BaseWSGIServer

logger = logging.getLogger(__name__)

# Connections accepted per event-loop pass, at most: a burst is taken in a few passes while
# the loop still gets round to reading the connections it already has.
ACCEPT_BATCH = 256
# After the deadline, how long a response already being sent may take to flush.
FLUSH_AFTER_DEADLINE_S = 1.0


@dataclass
class LoopStats:
    """What the event loop did: passes over the connections, and connections accepted."""

    passes: int = 0
    accepted: int = 0


def _socket_map(server) -> dict:
    # A single listener is a BaseWSGIServer (map in `_map`); several, a MultiSocketServer.
    return server._map if isinstance(server, BaseWSGIServer) else server.map


def _busy(channel: HTTPChannel) -> bool:
    """A request is being received, serviced, or its response is not yet sent."""
    return bool(channel.requests or channel.total_outbufs_len or channel.request is not None)


def error_response(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 response with the service's JSON error body, closing the connection."""
    body = json.dumps({"error": message, "status": status}).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}",
             *(f"{name}: {value}" for name, value in (headers or {}).items()), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class ServingChannel(HTTPChannel):
    """waitress's connection, knowing whether the response to its current request has begun,
    so that the event loop can answer in its place (`answer_instead`) without ever writing
    into the middle of a response."""

    response_begun = False

    def service(self):  # on a task thread: one request, answered
        self.response_begun = False
        try:
            super().service()
        finally:
            self.response_begun = False

    def write_soon(self, data):  # on a task thread: the application's response
        if data:
            with self.outbuf_lock:
                if not self.connected:
                    raise ClientDisconnected
                self.response_begun = True
        return super().write_soon(data)

    def answer_instead(self, response: bytes) -> bool:
        """Send `response` (complete, small) and close, unless the application's response has
        begun; from the event loop. A late application response is then discarded."""
        with self.outbuf_lock:
            if self.response_begun:
                return False
            self.connected = False  # write_soon now raises ClientDisconnected
        try:
            self.socket.send(response)  # a few hundred bytes: fit the socket buffer, or are lost
        except OSError:
            pass
        self.handle_close()
        return True


def accept_in_batches(listener: BaseWSGIServer, stats: LoopStats) -> None:
    """Make `listener` accept up to ACCEPT_BATCH pending connections per readable event (as
    ServingChannels), where waitress accepts one."""

    def handle_accept():
        for _ in range(ACCEPT_BATCH):
            if not listener.readable():  # at the connection limit
                return
            try:
                pair = listener.accept()
                if pair is None:  # none pending
                    return
                conn, addr = pair
                listener.set_socket_options(conn)
            except OSError:  # a connection reset before it was accepted: skip it, as waitress does
                if listener.adj.log_socket_errors:
                    logger.warning("accept() failed", exc_info=True)
                continue
            ServingChannel(listener, conn, listener.fix_addr(addr), listener.adj, map=listener._map)
            stats.accepted += 1

    listener.handle_accept = handle_accept


class SlowRequestReaper:
    """Closes, with a 408, connections whose request takes over `timeout_s` to arrive.

    `sweep(socket_map)` is called from the event loop (waitress's channels are only touched
    there); it looks at the channels at most every `interval_s`, so a thousand connections
    cost one pass a second, not one per event.
    """

    def __init__(self, timeout_s: float, interval_s: float = 1.0, on_drop=None):
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self.on_drop = on_drop  # called once per dropped request
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
        response = error_response(408, "Request Timeout", f"the request did not arrive within {self.timeout_s:g} s")
        if isinstance(channel, ServingChannel):
            channel.answer_instead(response)
        else:
            try:
                channel.socket.send(response)
            except OSError:
                pass
            channel.handle_close()
        self.dropped += 1
        if self.on_drop is not None:
            self.on_drop()
        logger.info("dropped a request from %s that did not arrive within %g s", channel.addr, self.timeout_s)


def serve_until(server, stop: threading.Event, deadline_s: float = 24.0, poll_s: float = 0.2,
                request_timeout_s: float | None = None, on_stop=None, retry_after_s: int = 2,
                stats: LoopStats | None = None, on_refused=None) -> bool:
    """Serve until `stop` is set; then drain until a deadline and close.

    Args:
        server: what `waitress.create_server` returned.
        stop: set it (from a signal handler or another thread) to begin the shutdown.
        deadline_s: after `stop`, when every request must have its answer: those that do
            not are answered 503 (Retry-After: `retry_after_s`) then; a response already
            being sent gets FLUSH_AFTER_DEADLINE_S more.
        poll_s: event-loop wake-up interval, the latency of noticing `stop`.
        request_timeout_s: drop (408) requests that take longer to arrive; None: never.
        on_stop: called once `stop` is seen, with the deadline (a time.monotonic() value).
        stats: counts the event loop's passes and accepted connections, if given.
        on_refused: called with (reason, count) for requests the loop itself refuses:
            "slow_request" (408) and "shutting_down" (503 at the deadline); the metrics.

    Returns:
        True if every request got its own answer; False if some were refused at the deadline.
    """
    stats = stats if stats is not None else LoopStats()
    socket_map = _socket_map(server)
    use_poll = server.adj.asyncore_use_poll
    for listener in [d for d in socket_map.values() if isinstance(d, BaseWSGIServer)]:
        accept_in_batches(listener, stats)
    on_drop = (lambda: on_refused("slow_request", 1)) if on_refused else None
    reaper = SlowRequestReaper(request_timeout_s, on_drop=on_drop) if request_timeout_s else None

    def one_pass():
        wasyncore.loop(timeout=poll_s, use_poll=use_poll, map=socket_map, count=1)
        stats.passes += 1

    while not stop.is_set():
        one_pass()
        if reaper:
            reaper.sweep(socket_map)

    for dispatcher in list(socket_map.values()):
        if isinstance(dispatcher, BaseWSGIServer):
            # The base close(): closes the listening socket but keeps the trigger that
            # wakes this loop when a worker thread has output ready.
            wasyncore.dispatcher.close(dispatcher)
    deadline = time.monotonic() + deadline_s
    if on_stop is not None:
        on_stop(deadline)
    refused = None
    while True:
        # Poll first: a request a client sent just before the signal may still sit unread in
        # its socket; reading it makes the channel busy instead of idle (and closed).
        one_pass()
        channels = [d for d in list(socket_map.values()) if isinstance(d, HTTPChannel)]
        for channel in channels:
            if not _busy(channel):
                channel.handle_close()  # idle keep-alive connection
        busy = [c for c in channels if _busy(c)]
        if not busy:
            break
        now = time.monotonic()
        if refused is None and now >= deadline:
            response = error_response(503, "Service Unavailable", "the server is shutting down and could not "
                                      "answer this request in time; retry", {"Retry-After": str(int(retry_after_s))})
            refused = sum(c.answer_instead(response) for c in busy if isinstance(c, ServingChannel))
            if on_refused is not None and refused:
                on_refused("shutting_down", refused)
            logger.warning("shutdown: answered %d request(s) 503 at the %.0f s deadline; %d response(s) still "
                           "being sent", refused, deadline_s, len(busy) - refused)
        elif refused is not None and now >= deadline + FLUSH_AFTER_DEADLINE_S:
            logger.warning("shutdown: closing %d connection(s) whose responses did not flush in time", len(busy))
            break
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=1.0)
    wasyncore.close_all(socket_map)
    return refused is None
