"""Why a request cannot be served, in words every front door maps to its own protocol.

The pipeline, the codecs and the batcher raise these and nothing else; they know no HTTP. One
table per protocol turns them into responses: ``server/routes/errors.py`` (HTTP status and
body), the gRPC service (its status codes). ``code`` is the stable word clients match on.
"""

from __future__ import annotations


class ServingError(Exception):
    def __init__(self, code: str, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after_s = code, message, retry_after_s


class InvalidInput(ServingError):
    """The request's content is wrong: not an image, truncated, empty, malformed."""


class InvalidParameter(ServingError):
    """A parameter names something that does not exist or cannot be combined."""


class TooLarge(ServingError):
    """The body, the image or the memory it needs is over a limit."""


class UnsupportedMedia(ServingError):
    """The content type is not one the server reads."""


class Unauthorized(ServingError):
    """The API key is missing or wrong."""


class NotFound(ServingError):
    """No such path, model or version."""


class Unavailable(ServingError):
    """Not now: the queue or the memory budget is full, the model is loading, or the server is
    shutting down; ``retry_after_s`` says when to try again."""


class DeadlineExceeded(ServingError):
    """The request was not served within the server's timeout."""


class Internal(ServingError):
    """A failure of the server's own."""


def overloaded(what: str) -> Unavailable:
    return Unavailable("overloaded", f"the server is at capacity ({what}); retry soon", 1)


def deadline_exceeded() -> DeadlineExceeded:
    return DeadlineExceeded(
        "deadline_exceeded",
        "the request was not served within the server's timeout; retry later or with fewer tasks",
    )
