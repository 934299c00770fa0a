"""Slow clients cannot hold a connection open: uvicorn's HTTP protocol with a deadline for the request head.

uvicorn closes idle keep-alive connections (timeout_keep_alive) but waits for a request's headers indefinitely, so
a client trickling a header a byte a minute holds a connection and its memory for as long as it likes. Here every
request head must be complete within ENRICH_HEADER_TIMEOUT_S of the connection opening (or of the request's first
byte on a kept-alive connection), or the connection is closed. Bodies have their own limit (ENRICH_BODY_TIMEOUT_S,
api/common.py), and nginx in front sets the same three (deploy/nginx.conf).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..settings import get_settings

PROTOCOL = "enrich_service.server.slow_clients:HeaderDeadlineProtocol"  # uvicorn.Config(http=...)
# uvicorn stops reading a request's body once 64 KB wait for the app, so a 24 MB body arrives in hundreds of
# pause/resume steps, each a trip through the event loop while the client's sends block. Up to this much is
# buffered per request instead: a bulk body arrives in a few steps, memory per connection stays bounded.
BODY_BUFFER_BYTES = 1 << 20


class HeaderDeadlineProtocol(HttpToolsProtocol):
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._start_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_head_timer()

    def on_body(self, body: bytes) -> None:
        # uvicorn's own on_body, with BODY_BUFFER_BYTES for its 64 KB limit
        if (self.parser.should_upgrade() and self._should_upgrade()) or self.cycle.response_complete:
            return
        # Appended in place: uvicorn's `bytes += chunk` copies all that is buffered for every chunk, several times
        # the body's size in copies (and fresh memory) for a bulk body.
        if not isinstance(self.cycle.body, bytearray):
            self.cycle.body = bytearray(self.cycle.body)
        self.cycle.body += body
        if len(self.cycle.body) > BODY_BUFFER_BYTES:
            self.flow.pause_reading()
        self.cycle.message_event.set()

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        super().on_headers_complete()
        cycle = self.cycle
        held = _HeadWithBody(cycle, cycle.transport)
        cycle.transport = held  # type: ignore[assignment]  # a stand-in
        completed = cycle.on_response

        def on_response() -> None:
            # A response whose body uvicorn never writes (HEAD, 304): its held head goes out now. Its own cycle's:
            # with requests pipelined behind it, self.cycle is already the next one.
            held.flush()
            completed()

        cycle.on_response = on_response

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _start_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(get_settings().header_timeout_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _HeadWithBody:
    """The transport as a response's cycle sees it: the status line and headers are held back and written with the
    body's first part, one write (writev) and one packet where uvicorn made two of each. A single lookup's answer
    then reaches the client in one read; on the mixed load the generator and the service each woke once less per
    answer. Everything else goes to the transport as it is."""

    def __init__(self, cycle, transport):
        self._cycle = cycle
        self._transport = transport
        self._head: bytes | None = None
        self._done = False

    def write(self, data) -> None:
        if self._done:
            self._transport.write(data)
        elif self._head is None and self._cycle.response_started:  # the head: send() writes it first
            self._head = data
        else:  # the body's first part (or 100 Continue, before any head)
            if self._head is not None:
                self._done = True
                self._transport.writelines([self._head, data])
                self._head = None
            else:
                self._transport.write(data)

    def flush(self) -> None:
        """Write a head still held: the response ended without a body part (HEAD, 304) or the connection closes."""
        if self._head is not None:
            self._done = True
            self._transport.write(self._head)
            self._head = None

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name):
        return getattr(self._transport, name)
