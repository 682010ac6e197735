"""What genray's client tries again: a request that a proxy answered for (a 503, or a plain-text
5xx that Serve's proxy or HAProxy writes when a replica died under it), never the app's own JSON
error; and `retried`, the count of tries after each request's first."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import free_port
from genray.client import APIError, Client


def test_the_client_retries_what_a_proxy_answers_for_a_lost_request_and_counts_its_retries():
    """A 503 and a proxy's plain-text 500 (Serve's, for a request whose replica died) are tried
    again, the app's own JSON 500 is not; `retried` counts every try after a request's first."""
    answers = iter([(503, "application/json", b'{"error": "busy"}'),
                    (500, "text/plain", b"Internal Server Error"),
                    (200, "application/json", b'{"ok": true}'),
                    (500, "application/json", b'{"error": "internal error (RuntimeError)", "errors": []}')])

    class Answers(BaseHTTPRequestHandler):
        def do_GET(self):
            status, kind, body = next(answers)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = Client(f"http://127.0.0.1:{server.server_address[1]}", backoff=0)
        assert client.retried == 0
        assert client.healthz() and client.retried == 2
        with pytest.raises(APIError, match="internal error") as failed:
            client.healthz()
        assert failed.value.status == 500 and client.retried == 2
    finally:
        server.shutdown()
        server.server_close()
    refused = Client(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0)
    with pytest.raises(APIError, match="cannot connect"):
        refused.info()
    assert refused.retried == 2
