"""Reading an upload from an HTTP request: a raw image body or multipart field ``file``, never
more than the limit (checked against Content-Length first, then while reading)."""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from server.errors import InvalidInput, TooLarge, UnsupportedMedia


async def read_image_body(request: Request, limit: int) -> bytes:
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
    body = await read_body(request, limit)
    return await _multipart_file(request, body, limit) if multipart else body


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(len(body), limit)
    return bytes(body)


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
