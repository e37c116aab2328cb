"""HTTP connection guard: uvicorn's h11 protocol with read timeouts, a connection cap and
TCP_NODELAY on every accepted socket.

uvicorn closes an idle kept-alive connection (`timeout_keep_alive`) but nothing else: a client that
connects and sends nothing, or sends half a header, or stops in the middle of a body, holds its
connection (and a file descriptor) forever. This protocol keeps one read timer per connection:

  waiting for request headers   `header_timeout` in total, from the connection's start or from the
                                first byte of a new request on a kept-alive connection
  reading a request body        `body_timeout` between two pieces of it
  idle between requests         uvicorn's keep-alive timer (re-armed here when the rest of a body the
                                app did not read arrives after its response, which uvicorn leaves unarmed)
  otherwise                     no read timer: the app is working on the request
  an answer left unread         `body_timeout` without the client taking a byte of it (the answer
                                sits in the connection's buffer, the request over): dropped

When the timer fires the client gets `408 Request Timeout` (unless its response has started) and
the connection is closed; an application task still waiting for the body sees `http.disconnect`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("embserve")


def _closing_response(status: bytes, message: str) -> bytes:
    body = b'{"error": "' + message.encode() + b'"}'
    head = b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
    return head + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body


TIMEOUT_RESPONSE = _closing_response(b"408 Request Timeout", "request not received in time")
FULL_RESPONSE = _closing_response(b"503 Service Unavailable", "too many open connections; retry")
PROBE_CONNECTIONS = 16
"""Connections past the cap that may still ask for health, readiness or metrics (one request
each, then closed): a kubelet's probe or a Prometheus scrape opens a connection of its own, and
refused at the cap, a pod busy with clients would be restarted as dead and go unwatched."""
PROBE_TARGETS = (b"/healthz", b"/readyz", b"/metrics")
REQUEST_LINE_MAX = 256
"""Bytes of a connection past the cap read to find its request line, at most."""


def is_probe(request_line: bytes) -> bool:
    """Whether an HTTP request line (`GET /readyz HTTP/1.1`) asks for a probe's or scrape's path."""
    method, _, rest = request_line.partition(b" ")
    target = rest.partition(b" ")[0].partition(b"?")[0]
    return method in (b"GET", b"HEAD") and target in PROBE_TARGETS


def set_nodelay(sock: socket.socket | None) -> None:
    """Small responses go out at once: without TCP_NODELAY, Nagle's algorithm holds the second
    write of a response until the client's delayed ACK, ~40 ms on every kept-alive request."""
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def guarded_protocol(
    header_timeout: float,
    body_timeout: float,
    max_connections: int,
    on_timeout: Callable[[str], None],
    on_refused: Callable[[], None],
) -> type[H11Protocol]:
    """An H11Protocol class (uvicorn's `http=`) with these limits; `on_timeout(phase)` ("header" or
    "body") and `on_refused()` are called for the metrics."""

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.read_timer: asyncio.TimerHandle | None = None
            self.read_phase = ""
            self.probe_only = False
            """past the cap: answered only if its request is a probe's, then closed"""
            self.held = b""
            """a probe-only connection's first bytes, until its request line is whole"""
            self.write_timer: asyncio.TimerHandle | None = None
            """set while an answer waits in the connection's buffer for the client to read it"""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            set_nodelay(transport.get_extra_info("socket"))
            over = len(self.connections) - max_connections
            if over > PROBE_CONNECTIONS:
                self._refuse()
                return
            self.probe_only = over > 0
            self._arm("header", header_timeout)

        def _refuse(self) -> None:
            on_refused()
            self.transport.write(FULL_RESPONSE)
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self.probe_only and self.cycle is None:
                self.held += data
                line, found, _ = self.held.partition(b"\r\n")
                if not found and len(self.held) < REQUEST_LINE_MAX:
                    return
                if not found or not is_probe(line):
                    self._refuse()
                    return
                data, self.held = self.held, b""
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.write_timer is None and self.transport.get_write_buffer_size():
                self._watch_writes(self.transport.get_write_buffer_size())
            if self.probe_only:  # its one request answered: the room goes back to the next probe
                self.transport.close()
                return
            self._follow()

        def _watch_writes(self, unsent: int) -> None:
            self.write_timer = self.loop.call_later(body_timeout, self._check_writes, unsent)

        def _check_writes(self, unsent_before: int) -> None:
            """An answer the client does not read is held in the connection's buffer, out of any
            limit (the request is over): the connection is dropped once it takes nothing of it for
            `body_timeout`, as a body the client stops sending is."""
            self.write_timer = None
            # closing or not: a connection closed with its buffer full (by the keep-alive timer,
            # say) waits for the client to read it as long as an open one
            unsent = self.transport.get_write_buffer_size()
            if not unsent:
                return
            if unsent < unsent_before:  # it reads, however slowly
                self._watch_writes(unsent)
                return
            on_timeout("write")
            log.debug("closing connection from %s: its answer was not read in time", self.client)
            self.transport.abort()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self.write_timer is not None:
                self.write_timer.cancel()
                self.write_timer = None
            super().connection_lost(exc)

        def _follow(self) -> None:
            """Set the read timer for what the connection now waits for from the client."""
            if self.transport.is_closing():
                self._disarm()
                return
            state = self.conn.their_state
            if state is h11.IDLE:
                if self.conn.trailing_data[0]:  # part of the next request's headers is here
                    if self.read_phase != "header":  # the header timeout counts from its first byte
                        self._arm("header", header_timeout)
                elif self.cycle is not None:  # idle between requests: the keep-alive timer closes it
                    self._disarm()
                    if self.timeout_keep_alive_task is None:  # uvicorn drops it when body bytes arrive
                        self.timeout_keep_alive_task = self.loop.call_later(
                            self.timeout_keep_alive, self.timeout_keep_alive_handler
                        )
            elif state is h11.SEND_BODY:
                self._arm("body", body_timeout)  # between two pieces of the body
            else:
                self._disarm()

        def _arm(self, phase: str, seconds: float) -> None:
            self._disarm()
            self.read_phase = phase
            self.read_timer = self.loop.call_later(seconds, self._timed_out)

        def _disarm(self) -> None:
            if self.read_timer is not None:
                self.read_timer.cancel()
            self.read_timer = None
            self.read_phase = ""

        def _timed_out(self) -> None:
            phase = self.read_phase
            self.read_timer = None
            self.read_phase = ""
            if self.transport.is_closing():
                return
            on_timeout(phase)
            log.debug("closing connection from %s: request %s not received in time", self.client, phase)
            answered = phase == "body" and self.cycle is not None and self.cycle.response_started
            if not answered:
                self.transport.write(TIMEOUT_RESPONSE)
            self.transport.close()

    return GuardedH11Protocol


__all__ = ["guarded_protocol", "is_probe", "set_nodelay"]
