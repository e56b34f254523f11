"""Reading an upload from an HTTP request: a raw image body or multipart field ``file``, never
more than the limit (checked against Content-Length first, then while reading), and, given a
:class:`~server.budget.Hold`, never more than the memory budget holds: the bytes are reserved
as they arrive, so that clients stalling after megabytes of body hold their share of the
budget, not memory beside it (503 when it is spent: a body never waits for memory while it
holds some, or bodies would wait on each other)."""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from server.budget import Hold
from server.errors import InvalidInput, TooLarge, UnsupportedMedia

BODY_COPIES = 2
"""A body is held twice at its end: the chunks as they arrived, and the bytes they are joined
into (multipart: the body, and the file part read from it)."""
BODY_STEP = 1 << 20
"""A body is reserved as it arrives in steps: at least this, then doubling."""


async def read_image_body(request: Request, limit: int, hold: Hold | None = None) -> bytes:
    """The image bytes; 413 past ``limit`` bytes, 415 for a content type that is no image."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    multipart = content_type == "multipart/form-data"
    if not (
        multipart
        or not content_type
        or content_type.startswith("image/")
        or content_type == "application/octet-stream"
    ):
        message = (
            f"content type {content_type!r} is not an image: send image/jpeg, "
            "image/png, ... or multipart 'file'"
        )
        raise UnsupportedMedia("unsupported_media_type", message)
    body = await read_body(request, limit, hold)
    return await _multipart_file(request, body, limit) if multipart else body


async def read_body(request: Request, limit: int, hold: Hold | None = None) -> bytes:
    """The whole body; 413 past ``limit`` bytes. With ``hold``, its bytes are reserved as they
    arrive, in steps (doubling from ``BODY_STEP``, within the declared length), and twice over
    for the join at the end: a client that declares megabytes and sends none holds nothing."""
    declared = request.headers.get("content-length", "").strip()
    length = int(declared) if declared.isascii() and declared.isdigit() else None
    if length is not None and length > limit:
        raise too_large(length, limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(size, limit)
        if hold is not None and size > hold.nbytes:
            hold.grow_to(min(max(2 * size, BODY_STEP), max(length or limit, size)))
        chunks.append(chunk)
    if hold is not None:
        hold.grow_to(BODY_COPIES * size)
    return b"".join(chunks)


async def _multipart_file(request: Request, body: bytes, limit: int) -> bytes:
    async def replay():
        yield body

    parser = MultiPartParser(
        request.headers, replay(), max_files=1, max_fields=8, max_part_size=limit
    )
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise InvalidInput("bad_multipart", f"malformed multipart body: {error.message}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("bad_multipart", "multipart body has no file field named 'file'")
        return await upload.read()
    finally:
        await form.close()  # large parts are spooled to temporary files


def too_large(size: int, limit: int) -> TooLarge:
    return TooLarge("payload_too_large", f"body is {size}+ bytes; the limit is {limit}")


async def client_gone(request: Request) -> None:
    """Returns once the client has disconnected (the body must have been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
