"""Deploy genray apps on the test session's Serve, all at once, for tests that query them over HTTP.

Untrained weights (enough for the serving path), one replica each with num_cpus=0 so none
waits for a core, started together so their start-ups overlap (serve._run is serve.run
without the wait). A replica costs seconds of CPU to start (torch, FastAPI, the family), so
the client and playground tests share one set, deployed by whichever runs first and deleted
after the last test that needs it (`served`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from genray.deploy import DEPLOYMENTS
from genray.deploy.examples import untrained_model


def deploy(families: list[str], folder, prefix: str) -> dict[str, str]:
    """Deploy each family ("heat" needs no model; "rgb-<family>" a model of RGB_DATA's images) as
    app `<prefix>-<family>` at route `/<prefix>-<family>`, its model at folder/<family>; wait
    until all run. Returns family -> app name."""
    from ray import serve

    from genray.deploy import build_app
    from genray.deploy.heat import HeatDeployment

    names = {family: f"{prefix}-{family}" for family in families}
    for family, name in names.items():
        if family == "heat":
            app = HeatDeployment.options(ray_actor_options={"num_cpus": 0}).bind()
        else:
            model_family, rgb = family.removeprefix("rgb-"), family.startswith("rgb-")
            model = untrained_model(model_family, folder, RGB_DATA if rgb else None, name=family)
            bound = build_app({"model": model})._bound_deployment
            app = bound.options(ray_actor_options={"num_cpus": 0}).bind(*bound.init_args)
        serve._run(app, _blocking=False, name=name, route_prefix=f"/{name}")
    deadline = time.monotonic() + 300
    while True:
        states = {n: s.status for n, s in serve.status().applications.items() if n in names.values()}
        assert "DEPLOY_FAILED" not in states.values(), states
        if len(states) == len(names) and all(s == "RUNNING" for s in states.values()):
            return names
        assert time.monotonic() < deadline, f"apps not running after 300 s: {states}"
        time.sleep(0.25)


def delete(names) -> None:
    from ray import serve

    for name in names:
        serve.delete(name, _blocking=False)


# Images of another shape than the digits' (the run config's data section): 64x64 colour, with
# classes named. An autoencoder and a cvae of them have every image endpoint but /interpolate and
# the unconditional /sample, whose math is the same for any shape (test_deploy runs it in-process).
RGB_DATA = {"image_size": 64, "channels": 3, "labels": ["red", "green", "blue"]}
RGB_SERVED = ["rgb-ae", "rgb-cvae"]
# Every deployment the registry declares (test_serve_families checks and fuzzes each one), heat,
# and the RGB models.
SERVED = [*DEPLOYMENTS, "heat", *RGB_SERVED]
_live: dict = {}  # "names": family -> app name, "folder": the models' folder, while deployed


def served(request, tmp_path_factory) -> tuple[dict[str, str], Path]:
    """For a module-scoped fixture named like the calling one: (family -> app name, the folder
    of the served checkpoints). Deploys SERVED on first use; the module's teardown deletes them
    unless a test of a later module still needs them."""
    if not _live:
        folder = tmp_path_factory.mktemp("served-models")
        _live.update(names=deploy(SERVED, folder, "served"), folder=folder)
    request.addfinalizer(lambda: _release(request))
    return dict(_live["names"]), _live["folder"]


def _release(request) -> None:
    items = request.session.items
    mine = [i for i, item in enumerate(items) if item.module is request.module]
    later = items[max(mine) + 1:] if mine else []
    if _live and not any(request.fixturename in item.fixturenames for item in later):
        delete(_live.pop("names").values())
        _live.clear()


@contextlib.contextmanager
def local_server(api):
    """An ASGI app (e.g. genray's make_api with its Guard) behind uvicorn on a free loopback
    port, in a thread, for the duration of the block; yields its URL."""
    import uvicorn
    from conftest import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)
