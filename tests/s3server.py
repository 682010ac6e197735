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
            server.stop()
