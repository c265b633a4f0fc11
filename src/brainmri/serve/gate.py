"""HTTP checks made before a request body is read: API key, body size, content type.

A pure ASGI middleware, so a refused request costs no body parsing: a declared
`Content-Length` over the limit gets 413 at once, and a body that arrives without one
(chunked) is counted as it streams and cut off with 413 at the limit.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

Scope = dict[str, Any]

API_KEY_HEADER = "x-api-key"


@dataclass(frozen=True)
class Limits:
    """What one request may carry."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_files: int = 16
    api_key: str | None = None


class BodyTooLarge(Exception):
    """Raised from `receive` when a streamed body passes the limit."""


def error_body(error: str, detail: str, **extra: Any) -> dict[str, Any]:
    """The one JSON shape of every error response."""
    return {"error": error, "detail": detail, **extra}


async def send_json(send: Any, status: int, body: dict[str, Any], close: bool = False) -> None:
    raw = json.dumps(body, separators=(",", ":")).encode()  # as JSONResponse writes it
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _refusal(scope: Scope, limits: Limits) -> tuple[int, dict[str, Any]] | None:
    """(status, body) when the request is refused on its headers alone, else None."""
    if limits.api_key is not None:
        given = _header(scope, API_KEY_HEADER.encode()) or ""
        if not hmac.compare_digest(given.encode(), limits.api_key.encode()):
            return 401, error_body(
                "unauthorized", f"missing or wrong API key: send it in the {API_KEY_HEADER} header"
            )
    if scope["method"] != "POST":
        return None
    length = _header(scope, b"content-length")
    if length is not None:
        if not length.strip().isdigit():
            return 400, error_body("bad-request", "invalid Content-Length header")
        if int(length) > limits.max_body_bytes:
            return 413, error_body(
                "too-large",
                f"request body of {int(length)} bytes is over the limit of "
                f"{limits.max_body_bytes} bytes",
            )
    ctype = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        return 415, error_body(
            "unsupported-media-type",
            f"content type {ctype or 'none'}: send the scans as multipart/form-data "
            "(field 'file', or several 'files')",
        )
    return None


class Gate:
    """ASGI middleware guarding the /v1/ API (the page and /healthz stay open)."""

    def __init__(self, app: Any, limits: Limits, prefix: str = "/v1/"):
        self.app = app
        self.limits = limits
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        refused = _refusal(scope, self.limits)
        if refused is not None:
            # The body was not read: close the connection instead of draining it.
            await send_json(send, *refused, close=True)
            return
        seen = 0
        started = False

        async def counted_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limits.max_body_bytes:
                    raise BodyTooLarge
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                detail = f"request body is over the limit of {self.limits.max_body_bytes} bytes"
                await send_json(send, 413, error_body("too-large", detail), close=True)
