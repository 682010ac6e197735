"""Property-based fuzzing of a deployment's HTTP API from the OpenAPI schema its FastAPI app publishes.

Every POST endpoint gets malformed JSON, wrong types, huge and negative sizes, NaN/Inf, wrong
shapes and an oversized body; the answer must always be a 4xx with a JSON error (or a 200 for a
body that happens to be valid), never a 5xx.
"""

import json
import os

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SCALARS = st.one_of(
    st.none(), st.booleans(), st.text(max_size=8),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 10**9, 2**63, -(2**63), 1e308, -1e308, 1e-320]),
    st.floats(allow_nan=True, allow_infinity=True),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=12)


def post_bodies(schema: dict, good: dict | None):
    """Bodies for one endpoint: the good body with one field broken, the schema's fields all
    fuzzed, whole-body nonsense, and raw bytes that are not JSON at all."""
    fields = sorted(schema.get("properties", {}))
    candidates = [st.fixed_dictionaries({f: VALUES for f in fields}), VALUES.map(lambda v: v)]
    if good:
        candidates.append(st.tuples(st.sampled_from(sorted(good)), VALUES).map(lambda kv: {**good, kv[0]: kv[1]}))
        candidates.append(st.tuples(st.sampled_from(sorted(good)), st.lists(st.lists(VALUES, max_size=3), max_size=3))
                          .map(lambda kv: {**good, kv[0]: kv[1]}))  # wrong shapes
        candidates.append(st.text(max_size=6).filter(lambda k: k not in good).map(lambda k: {**good, k: 1}))
    encoded = st.one_of(*candidates).map(lambda body: json.dumps(body, allow_nan=True).encode())
    return st.one_of(encoded, st.binary(max_size=64))


def resolve(openapi: dict, schema: dict) -> dict:
    ref = schema.get("$ref")
    return openapi["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def post_endpoints(url: str) -> dict[str, dict]:
    openapi = requests.get(url + "/openapi.json", timeout=60).json()
    endpoints = {}
    for path, ops in openapi["paths"].items():
        if "post" in ops:
            content = ops["post"].get("requestBody", {}).get("content", {}).get("application/json", {})
            endpoints[path] = resolve(openapi, content.get("schema", {}))
    return endpoints


def assert_4xx_json(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        assert isinstance(response.json().get("error"), str), response.text[:300]


def fuzz_deployment(url: str, main_path: str, good: dict, examples: int | None = None) -> int:
    """Fuzz every POST endpoint of the deployment at `url`; returns the number of requests sent.
    Examples per endpoint: 15 in CI (a fixed, derandomized set); GENRAY_FUZZ_EXAMPLES for more."""
    examples = examples or int(os.environ.get("GENRAY_FUZZ_EXAMPLES", "15"))
    sent = 0
    session = requests.Session()
    for path, schema in post_endpoints(url).items():

        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(post_bodies(schema, good if path == main_path else None))
        def one(body: bytes) -> None:
            nonlocal sent
            sent += 1
            assert_4xx_json(session.post(url + path, data=body, timeout=60,
                                         headers={"content-type": "application/json"}))

        one()
        oversized = b'{"x": "' + b"a" * (5 * 1024 * 1024) + b'"}'
        response = session.post(url + path, data=oversized, timeout=60, headers={"content-type": "application/json"})
        assert response.status_code == 413, response.text[:200]
        sent += 1
    return sent
