"""What stands in front of every genray endpoint: an optional API key and a cap on body size.

Both are checked before FastAPI parses anything, in a plain ASGI middleware:

- API key: when the replica knows a key, every path but `/healthz` and `/playground` needs
  `Authorization: Bearer <key>` or `X-API-Key: <key>`; otherwise 401. The key comes from
  GENRAY_API_KEY_FILE, the path of a file holding it (serve YAML: the application's
  `runtime_env: {env_vars: {GENRAY_API_KEY_FILE: /path}}`; a mounted secret on Kubernetes), or
  from GENRAY_API_KEY in the environment of the Ray node. Not the key itself in a runtime_env:
  Ray's runtime_env agent writes env_vars to its log. The key is compared in constant time and
  never written to a response or a log.
- Body size: a request whose Content-Length, or whose streamed body, exceeds
  GENRAY_MAX_BODY_BYTES (default 4 MiB) is refused with 413 before anything parses it. The rest
  of the body is read and dropped first (up to DRAIN_BYTES and DRAIN_S): a server that answers
  and closes while the client is still sending leaves unread bytes in its socket, the kernel
  answers them with a reset, and the client loses the 413 it was sent (seen through Serve's
  Python proxy). A client that asked `Expect: 100-continue` has sent nothing yet and gets the
  413 at once; so does one that declares a body over DRAIN_BYTES.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os

API_KEY_ENV = "GENRAY_API_KEY"
API_KEY_FILE_ENV = "GENRAY_API_KEY_FILE"
MAX_BODY_ENV = "GENRAY_MAX_BODY_BYTES"
DEFAULT_MAX_BODY = 4 * 1024 * 1024
# How much of a refused body is read and dropped so that its client sees the 413: bounded, so a
# client that keeps sending ties up a replica for seconds at most.
DRAIN_BYTES = 64 * 1024 * 1024
DRAIN_S = 5.0
# Load balancers and Serve health checks need no key; nor does the playground page, which a
# browser opens without headers: it holds no data, and its API calls carry the key typed into it.
OPEN_PATHS = ("/healthz", "/playground")


def api_key() -> str | None:
    """The key this replica requires, or None when it is open. Read on each request, so a
    rotated key file takes effect without a restart."""
    path = os.environ.get(API_KEY_FILE_ENV)
    if path:
        try:
            with open(path) as f:
                return f.read().strip() or None
        except OSError:
            return ""  # configured but unreadable: refuse everyone rather than serve openly
    return os.environ.get(API_KEY_ENV) or None


def max_body_bytes() -> int:
    raw = os.environ.get(MAX_BODY_ENV)
    return int(raw) if raw and raw.isdigit() else DEFAULT_MAX_BODY


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def presented_key(scope) -> str | None:
    auth = _header(scope, b"authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return _header(scope, b"x-api-key")


async def drain(receive, received: int = 0) -> None:
    """Read and drop the rest of a request's body: until its last message, DRAIN_BYTES in all
    (`received` already read), DRAIN_S seconds, or the client going away."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_S
    while received <= DRAIN_BYTES:
        try:
            message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            return
        if message["type"] != "http.request":
            return
        received += len(message.get("body", b""))
        if not message.get("more_body"):
            return


async def refuse_body(scope, receive, send, limit: int, *, received: int = 0, declared: int = 0,
                      more: bool = True) -> None:
    """413 for a body over `limit`, once its client has finished sending it: `received` bytes
    read so far, `declared` its Content-Length, `more` whether any is still to come. A client
    waiting on `Expect: 100-continue` (nothing read yet) sends nothing more, so it is answered at
    once, as is one declaring more than DRAIN_BYTES."""
    waiting = received == 0 and (_header(scope, b"expect") or "").lower() == "100-continue"
    if more and not waiting and declared <= DRAIN_BYTES:
        await drain(receive, received)
    await respond(send, 413, f"request body over the {limit} byte limit")


async def respond(send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message, "errors": []}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: API key (when configured) and the body-size cap, before any parsing."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        key = api_key()
        if key is not None and not scope["path"].rstrip("/").endswith(OPEN_PATHS):
            offered = presented_key(scope)
            if not key or offered is None or not hmac.compare_digest(offered.encode(), key.encode()):
                return await respond(send, 401, "missing or wrong API key: send 'Authorization: Bearer <key>' "
                                                "or 'X-API-Key: <key>'", [(b"www-authenticate", b"Bearer")])
        limit = max_body_bytes()
        length = _header(scope, b"content-length")
        if length is not None:
            declared = int(length) if length.strip().isdigit() else None
            if declared is None:
                return await respond(send, 400, f"Content-Length must be a whole number of bytes, got {length!r}")
            if declared > limit:
                return await refuse_body(scope, receive, send, limit, declared=declared)
            return await self.app(scope, receive, send)  # the server holds the body to its length
        # No Content-Length (chunked): read up to the limit here, then hand the body on.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                more = message.get("more_body", False)
                return await refuse_body(scope, receive, send, limit, received=size, more=more)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)
