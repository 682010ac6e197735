"""An S3-compatible endpoint for tests: moto's standalone server on loopback, reached only
through the endpoint override (AWS_ENDPOINT_URL), as MinIO would be. Test modules import the
`s3` fixture (each module gets its own server)."""

import pytest

from genray import storage

from conftest import free_port

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKETS = ("runs", "models", "data")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 on a free loopback port, with buckets `runs`, `models` and `data`; yields the
    env that points the AWS chain at it (set in this process for the module's tests)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENRAY_CACHE", str(tmp_path_factory.mktemp("cache")))  # local mirrors of s3 runs
        for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS", "AWS_SESSION_TOKEN"):
            mp.delenv(key, raising=False)
        for key, value in env.items():
            mp.setenv(key, value)
        client = storage.s3_client()
        for bucket in BUCKETS:
            client.create_bucket(Bucket=bucket)
        try:
            yield env
        finally:
            # moto keeps its buckets in the process, for every server it starts: the next module's
            # server starts empty only after a reset.
            import requests

            requests.post(f"{env['AWS_ENDPOINT_URL']}/moto-api/reset", timeout=10)
            server.stop()


class FaultyProxy:
    """An HTTP proxy in front of the S3 endpoint that answers requests with 503 SlowDown (S3's
    throttling answer, which every AWS SDK retries) as `fail` asks, and forwards the others
    unchanged. `seen` lists each request as (method, path, answered status). Point
    AWS_ENDPOINT_URL at `url` to send a client through it."""

    SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b"<Message>Please reduce your request rate.</Message></Error>")

    def __init__(self, upstream: str):
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlparse

        target = urlparse(upstream)
        proxy = self
        self.seen: list[tuple[str, str, int]] = []
        self._under, self._times, self._failed = "/", 0, {}
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs expect

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    chunks = []
                    while (size := int(self.rfile.readline().split(b";")[0], 16)):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _answer(self) -> None:
                body = self._body()  # read even when faulting: the connection stays usable
                request = (self.command, self.path)
                with proxy._lock:
                    failed = proxy._failed.get(request, 0)
                    fault = self.path.startswith(proxy._under) and (proxy._times is None or failed < proxy._times)
                    proxy._failed[request] = failed + fault
                if fault:
                    proxy.seen.append((self.command, self.path, 503))  # before the client can see the answer
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(FaultyProxy.SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(FaultyProxy.SLOW_DOWN)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                headers["Content-Length"] = str(len(body))
                upstream_conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    upstream_conn.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream_conn.getresponse()
                    data = answer.read()
                    proxy.seen.append((self.command, self.path, answer.status))
                    self.send_response(answer.status)
                    for key, value in answer.getheaders():
                        if key.lower() not in ("transfer-encoding", "content-length", "connection", "date", "server"):
                            self.send_header(key, value)
                    length = answer.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream_conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def fail(self, under: str = "/", times: int | None = 1) -> None:
        """From now on, answer each distinct request (method and path) under the path prefix
        `under` with 503 `times` times before forwarding it; None: always."""
        with self._lock:
            self._under, self._times, self._failed = under, times, {}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
