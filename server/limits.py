"""Deadlines and a cap on the HTTP connections, as the servers people trust set them: nginx's
``client_header_timeout``, ``client_body_timeout`` and ``send_timeout``, and a connection cap
with a clear refusal.

uvicorn (0.54, the h11 protocol we name) has a keep-alive timeout between requests, and
nothing while a request arrives or its response leaves: a client trickling header bytes, or a
body at 1 byte/s, or never reading its response kept its connection (and the response's memory
reservation) for as long as it liked. :class:`GuardedH11Protocol` is uvicorn's h11 protocol
with the deadlines added:

- header: the request's head must arrive within ``header_timeout_s`` of the connection's start
  (or of the next request's first byte): else 408 and the connection is closed;
- body: the whole body within ``body_timeout_s`` of the head: else 408 if no response has
  started (the route then sees the client as gone, and records 408), and closed;
- send: while the response waits on a client that does not read (the socket's buffers full),
  some of it must leave within every ``send_timeout_s``: else the connection is dropped, and the
  response's ``send`` returns at once, so that its reservation is released;
- connections: past ``max_connections`` open at once, a new connection is answered 503 with
  ``Retry-After`` and closed, before anything of its request is read;
- a head longer than ``MAX_HEAD_BYTES`` is answered 431 and closed before it is parsed.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass

import h11
import orjson
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.protocols.http.h11_impl import H11Protocol

TIMED_OUT = "ase.timed_out"
"""Scope key a route finds set when the body deadline cut the request: it records 408, not 499."""
V2_PREFIXES = (b"GET /v2", b"POST /v2", b"HEAD /v2")  # answered in the protocol's error shape
MAX_HEAD_BYTES = DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
"""The longest request head (line and headers): h11's bound on a head that arrives in pieces,
applied as well to one that arrives at once (which h11 parses whatever its size): an 84 KB
query is refused (431) before anything parses it."""


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    send_timeout_s: float = 30.0
    max_connections: int = 512

    def protocol(self) -> functools.partial:
        """What uvicorn's ``http`` option takes: the protocol with these limits (picklable, for
        ``--workers``)."""
        return functools.partial(GuardedH11Protocol, limits=self)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the deadlines and the cap of the module docstring."""

    def __init__(self, *args, limits: ConnectionLimits, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._reading: asyncio.TimerHandle | None = None  # the header or body deadline
        self._reading_body = False
        self._sending: asyncio.TimerHandle | None = None  # the next check of a stalled send
        self._unsent = 0  # bytes waiting in the transport at the last check
        self._refused = False
        self._head = b""  # the first bytes of the request, to pick the error shape
        self._head_bytes = 0  # of the request's head, so far

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._refused = len(self.connections) > self.limits.max_connections
        self._expect(self.limits.header_timeout_s, self._header_timed_out)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return self._refuse()
        if self._reading is None and self.conn.their_state is h11.IDLE:  # the next request
            self._head, self._head_bytes = b"", 0
            self._expect(self.limits.header_timeout_s, self._header_timed_out)
        if len(self._head) < 16:
            self._head += data[:16]
        if self.conn.their_state is h11.IDLE:
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end
            if self._head_bytes > MAX_HEAD_BYTES:
                message = f"the request's line and headers are over {MAX_HEAD_BYTES} bytes"
                return self._answer_and_close(431, "head_too_large", message)
        super().data_received(data)
        self._follow_request()

    def _follow_request(self) -> None:
        """Moves from the header deadline to the body's once the head is in, and drops the
        body's once the whole request is."""
        state = self.conn.their_state
        if state is h11.SEND_BODY and not self._reading_body:
            self._expect(self.limits.body_timeout_s, self._body_timed_out)
            self._reading_body = True
        elif state not in (h11.IDLE, h11.SEND_BODY):  # DONE, MUST_CLOSE, ERROR, CLOSED
            self._stop_reading()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE:  # a new cycle: its head has a deadline again
            self._stop_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_reading()
        self._stop_sending()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._unsent = self.transport.get_write_buffer_size()
        self._stop_sending()
        self._sending = self.loop.call_later(self.limits.send_timeout_s, self._check_sending)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_sending()

    def _check_sending(self) -> None:
        """The client read nothing since the last check: drop it (nginx's ``send_timeout``);
        connection_lost wakes the response waiting to send, which then ends."""
        self._sending = None
        unsent = self.transport.get_write_buffer_size()
        if unsent < self._unsent:  # it reads, slowly: another period
            self._unsent = unsent
            self._sending = self.loop.call_later(self.limits.send_timeout_s, self._check_sending)
        elif not self.transport.is_closing():
            seconds = self.limits.send_timeout_s
            self.logger.info(
                "%s: read none of the response in %g s: dropped", self._peer(), seconds
            )
            self.transport.abort()

    def _expect(self, seconds: float, timed_out) -> None:
        self._stop_reading()
        self._reading = self.loop.call_later(seconds, timed_out)

    def _stop_reading(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None
        self._reading_body = False

    def _stop_sending(self) -> None:
        if self._sending is not None:
            self._sending.cancel()
            self._sending = None

    def _header_timed_out(self) -> None:
        self._reading = None
        message = f"the request's head did not arrive within {self.limits.header_timeout_s:g} s"
        self._answer_and_close(408, "request_timeout", message)

    def _body_timed_out(self) -> None:
        self._reading = None
        message = f"the request's body did not arrive within {self.limits.body_timeout_s:g} s"
        cycle = self.cycle
        if cycle is None or cycle.response_started:  # too late for a status: the connection goes
            return self._close()
        cycle.scope[TIMED_OUT] = True  # type: ignore[literal-required]
        cycle.disconnected = True  # the route's receive() now says the client is gone
        cycle.message_event.set()
        self._answer_and_close(408, "request_timeout", message, v2=cycle.scope["path"])

    def _refuse(self) -> None:
        message = (
            f"the server has {self.limits.max_connections} connections open, its most; retry soon"
        )
        self._answer_and_close(503, "too_many_connections", message, retry_after_s=1)

    def _answer_and_close(
        self,
        status: int,
        code: str,
        message: str,
        retry_after_s: int | None = None,
        v2: str | None = None,
    ) -> None:
        """A response written as it is, then the connection closed: the app never saw the
        request (or no longer reads it). Its body has the shape of the path's errors (``v2``:
        the path, when known; else the request's first bytes tell)."""
        if self.transport.is_closing():
            return
        self.logger.info("%s: %d %s", self._peer(), status, message)
        if v2 is None:
            is_v2 = self._head.startswith(V2_PREFIXES)
        else:
            is_v2 = v2 == "/v2" or v2.startswith("/v2/")
        body = orjson.dumps(
            {"error": message}
            if is_v2
            else {"error": {"code": code, "message": message, "status": status}}
        )
        reason = {
            408: "Request Timeout",
            431: "Request Header Fields Too Large",
            503: "Service Unavailable",
        }[status]
        head = [
            f"HTTP/1.1 {status} {reason}",
            "content-type: application/json",
            f"content-length: {len(body)}",
            "connection: close",
        ]
        if retry_after_s is not None:
            head.append(f"retry-after: {retry_after_s}")
        self.transport.write("\r\n".join(head).encode("ascii") + b"\r\n\r\n" + body)
        self._close()

    def _close(self) -> None:
        self._stop_reading()
        self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "client"
