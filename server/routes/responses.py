"""Responses that hold a request's memory reservation (server/budget.py) until they have been
sent, or their sending failed (the client left): never released before, never not at all."""

from __future__ import annotations

from fastapi.responses import Response, StreamingResponse

from server.budget import Reservation


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


class BudgetedResponse(_Budgeted, Response):
    pass


class BudgetedStream(_Budgeted, StreamingResponse):
    pass
