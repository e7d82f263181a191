"""A bound on the size of request bodies, so an upload cannot fill the memory or the disk.

A declared Content-Length over the bound is answered 413 before the body is read; a body sent
without one (chunked) is counted as it arrives and stopped once it passes the bound.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse


class RequestTooLarge(ValueError):
    pass


def limit_request_size(app: FastAPI, max_bytes: int) -> None:
    app.add_middleware(_BodyLimit, max_bytes=max_bytes)


def _too_large_message(max_bytes: int) -> str:
    return f"the request is larger than the service accepts ({max_bytes:,} bytes); send a smaller image"


class _BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            response = JSONResponse({"error": _too_large_message(self.max_bytes)}, 413)
            return await response(scope, receive, send)
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # Raised where the app reads the body: its handler for RequestTooLarge answers.
                raise RequestTooLarge(_too_large_message(self.max_bytes))
            return message

        await self.app(scope, counted_receive, send)
