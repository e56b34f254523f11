"""Responses that hold a request's memory reservation (server/budget.py) until they have been
sent, or their sending failed (the client left): never released before, never not at all.

"Sent" means taken by the client: a body goes out in ``SEND_CHUNK_BYTES`` pieces, each waiting
while the connection's buffer is full, so that a client that does not read keeps the body here,
counted, rather than in the transport's buffer after its reservation was released; when it reads
nothing for ``--send-timeout-s`` it is dropped (server/limits.py) and the reservation goes back.
"""

from __future__ import annotations

from fastapi.responses import Response, StreamingResponse

from server.budget import Reservation

SEND_CHUNK_BYTES = 1 << 18


class _Budgeted:
    def __init__(self, *args, reservation: Reservation | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reservation = reservation

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.reservation is not None:
                self.reservation.release()


class ChunkedResponse(Response):
    """A response whose body is sent in ``SEND_CHUNK_BYTES`` pieces (the module docstring)."""

    async def __call__(self, scope, receive, send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        body = self.body  # bytes pieces, not views: Ray Serve's proxy pickles each message
        for offset in range(0, max(len(body), 1), SEND_CHUNK_BYTES):
            chunk = (
                body if len(body) <= SEND_CHUNK_BYTES else body[offset : offset + SEND_CHUNK_BYTES]
            )
            more = offset + SEND_CHUNK_BYTES < len(body)
            await send({"type": "http.response.body", "body": chunk, "more_body": more})
        if self.background is not None:
            await self.background()


class BudgetedResponse(_Budgeted, ChunkedResponse):
    pass


class BudgetedStream(_Budgeted, StreamingResponse):
    pass
