"""The Guard in front of every endpoint: API key (401 without it or with a wrong one, the key never
echoed or logged) and the body-size cap (413 before parsing, with or without Content-Length)."""

import json
import time
import urllib.error
import urllib.request

import pytest
import requests
from deployed import served
from fastapi.testclient import TestClient

from genray.deploy.common import SampleRequest, make_api
from genray.deploy.guard import API_KEY_ENV, API_KEY_FILE_ENV, DEFAULT_MAX_BODY, MAX_BODY_ENV

KEY = "k3y-that-must-never-leak"


@pytest.fixture
def client():
    api = make_api("guarded")

    @api.post("/sample")
    def sample(req: SampleRequest) -> dict:
        return {"n": req.n}

    @api.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    return TestClient(api, raise_server_exceptions=False)


def test_no_key_configured_means_open(client, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    monkeypatch.delenv(API_KEY_FILE_ENV, raising=False)
    assert client.post("/sample", json={"n": 2}).json() == {"n": 2}


def test_api_key_is_required_when_configured(client, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, KEY)
    for headers in ({}, {"x-api-key": "wrong"}, {"authorization": f"Bearer {KEY}x"}, {"authorization": KEY}):
        r = client.post("/sample", json={"n": 2}, headers=headers)
        assert r.status_code == 401 and "API key" in r.json()["error"], headers
        assert KEY not in r.text and r.headers["www-authenticate"] == "Bearer"
    assert client.post("/sample", json={"n": 2}, headers={"x-api-key": KEY}).status_code == 200
    assert client.post("/sample", json={"n": 2}, headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.get("/healthz").status_code == 200  # health checks need no key
    assert client.get("/openapi.json").status_code == 401


def test_api_key_from_a_file_and_an_unreadable_file_refuses_everyone(client, monkeypatch, tmp_path):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    (tmp_path / "key").write_text(KEY + "\n")
    monkeypatch.setenv(API_KEY_FILE_ENV, str(tmp_path / "key"))
    assert client.post("/sample", json={"n": 2}).status_code == 401
    assert client.post("/sample", json={"n": 2}, headers={"x-api-key": KEY}).status_code == 200
    monkeypatch.setenv(API_KEY_FILE_ENV, str(tmp_path / "missing"))
    assert client.post("/sample", json={"n": 2}, headers={"x-api-key": KEY}).status_code == 401
    assert client.post("/sample", json={"n": 2}, headers={"x-api-key": ""}).status_code == 401


def test_oversized_bodies_are_refused_before_parsing(client, monkeypatch):
    monkeypatch.setenv(MAX_BODY_ENV, "1000")
    big = b'{"n": 2, "pad": "' + b"x" * 2000 + b'"}'
    r = client.post("/sample", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "1000 byte limit" in r.json()["error"]

    def chunks(n):  # no Content-Length: the body arrives in pieces
        yield b'{"n": 2'
        for _ in range(n):
            yield b" " * 100
        yield b"}"

    r = client.post("/sample", content=chunks(20), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = client.post("/sample", content=chunks(3), headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json() == {"n": 2}


def run_guard(headers: dict, pieces: list[bytes], complete: bool = True) -> tuple[int, dict, int]:
    """(status, JSON answer, body messages read) of the Guard in front of an app that must not
    be reached, for a body arriving in `pieces` (the last one says more is coming unless
    `complete`, and the client then sends nothing)."""
    import asyncio
    import json

    from genray.deploy.guard import Guard

    messages = [{"type": "http.request", "body": b, "more_body": i < len(pieces) - complete}
                for i, b in enumerate(pieces)]
    read, sent = [], []

    async def receive():
        if len(read) < len(messages):
            read.append(messages[len(read)])
            return read[-1]
        await asyncio.sleep(3600)  # a client that sends nothing more

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        raise AssertionError("an oversized body reached the app")

    scope = {"type": "http", "path": "/sample", "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(Guard(app)(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"]), len(read)


def test_a_refused_body_is_read_to_its_end_before_the_413(monkeypatch):
    """Through Serve's proxy, a 413 sent while the client is still sending was lost to a
    connection reset: the rest of the body is drained first, whether or not it declared its length."""
    monkeypatch.setenv(MAX_BODY_ENV, "1000")
    pieces = [b"x" * 600] * 10
    for headers in ({"content-length": "6000"}, {}):  # declared, and chunked
        status, answer, read = run_guard(headers, pieces)
        assert (status, read) == (413, 10), headers
        assert answer["error"] == "request body over the 1000 byte limit"


def test_a_client_that_waits_for_100_continue_is_answered_without_reading(monkeypatch):
    monkeypatch.setenv(MAX_BODY_ENV, "1000")
    status, _, read = run_guard({"content-length": "6000", "expect": "100-continue"}, [b"x" * 6000])
    assert (status, read) == (413, 0)


def test_draining_stops_at_its_byte_and_time_bounds(monkeypatch):
    from genray.deploy import guard

    monkeypatch.setenv(MAX_BODY_ENV, "1000")
    monkeypatch.setattr(guard, "DRAIN_BYTES", 3000)
    status, _, read = run_guard({}, [b"x" * 600] * 10)  # chunked: stops once past 3000 bytes
    assert (status, read) == (413, 6)
    status, _, read = run_guard({"content-length": "6000"}, [b"x" * 600] * 10)  # declared past it: not read
    assert (status, read) == (413, 0)
    monkeypatch.setattr(guard, "DRAIN_S", 0.2)
    started = time.monotonic()
    status, _, read = run_guard({"content-length": "2000"}, [b"x" * 600], complete=False)  # the client stalls
    assert (status, read) == (413, 1) and time.monotonic() - started < 2


def test_a_content_length_that_is_no_number_is_a_400(monkeypatch):
    status, answer, _ = run_guard({"content-length": "12abc"}, [b"{}"])
    assert status == 400 and "Content-Length must be a whole number of bytes, got '12abc'" in answer["error"]


def test_framework_errors_have_the_same_json_shape(client):
    r = client.post("/sample", content=b"\x00\x01", headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and isinstance(r.json()["error"], str)
    assert client.get("/nowhere").json()["error"] == "Not Found"


@pytest.mark.ray
def test_api_key_on_a_real_deployment_and_not_in_the_logs(serve_url, tmp_path):
    import ray
    from ray import serve

    from genray.deploy.heat import HeatDeployment

    key_file = tmp_path / "api-key"
    key_file.write_text(KEY)
    env = {"env_vars": {API_KEY_FILE_ENV: str(key_file)}}  # what serve YAML's runtime_env sets
    serve.run(HeatDeployment.options(ray_actor_options={"num_cpus": 0, "runtime_env": env}).bind(),
              name="guarded", route_prefix="/guarded")
    try:
        body = {"n": 16, "dt": 0.01, "t_end": 0.02}
        url = f"{serve_url}/guarded/solve"
        assert requests.post(url, json=body, timeout=60).status_code == 401
        assert requests.post(url, json=body, headers={"x-api-key": "nope"}, timeout=60).status_code == 401
        ok = requests.post(url, json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=60)
        assert ok.status_code == 200, ok.text
    finally:
        serve.delete("guarded")
    logs = ray._private.worker._global_node.get_logs_dir_path()
    from pathlib import Path

    leaked = [p for p in Path(logs).rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert not leaked, f"the API key appears in {leaked}"


# What an oversized body gets, on every path, with the default limit.
REFUSED = (413, {"error": f"request body over the {DEFAULT_MAX_BODY} byte limit", "errors": []})


def app_paths(base: str) -> list[str]:
    """Every path of a genray app at `base`: its root with and without the slash, /healthz,
    /playground, each POST endpoint its OpenAPI schema lists, and one it does not have."""
    schema = requests.get(f"{base}/openapi.json", timeout=60).json()
    posts = sorted(path for path, methods in schema["paths"].items() if "post" in methods)
    assert posts, f"{base} lists no POST endpoint"
    return ["", "/", "/healthz", "/playground", *posts, "/nowhere"]


def oversized_posts(base: str, paths: list[str], size: int = 2 * DEFAULT_MAX_BODY) -> dict:
    """(path, how) -> (status, JSON answer) of a POST of `size` bytes to each path, sent as Python's
    urllib sends it: with Content-Length and no `Expect: 100-continue` ("length"), and chunked,
    in 64 KiB pieces ("chunked"). A connection error is kept as its text in place of the status."""
    piece = b"x" * 65536
    bodies = {"length": lambda: piece * (size // len(piece)), "chunked": lambda: iter([piece] * (size // len(piece)))}
    answers = {}
    for path in paths:
        for how, body in bodies.items():
            request = urllib.request.Request(f"{base}{path}", data=body(), method="POST",
                                             headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    answers[(path, how)] = (response.status, response.read()[:200].decode("latin-1"))
            except urllib.error.HTTPError as err:
                answers[(path, how)] = (err.code, json.loads(err.read()))
            except OSError as err:  # e.g. "Connection reset by peer": the client never saw an answer
                answers[(path, how)] = (f"{type(err).__name__}: {err}", None)
    return answers


@pytest.fixture(scope="module")
def apps(request, serve_url, tmp_path_factory):
    """The session's shared apps (tests/deployed.py), on Serve's default proxy."""
    names, _ = served(request, tmp_path_factory)
    return names


@pytest.mark.ray
def test_every_path_answers_an_oversized_body_with_a_413_the_client_reads(serve_url, apps):
    """Through a real Serve's proxy: an 8 MiB body to any path of an app gets its 413, never a
    connection reset (the answer once raced the client's sending)."""
    base = f"{serve_url}/{apps['vae']}"
    answers = oversized_posts(base, app_paths(base))
    assert {key: answer for key, answer in answers.items() if answer != REFUSED} == {}
    assert requests.post(f"{base}/sample", json={"n": 1}, timeout=60).status_code == 200  # still serving
