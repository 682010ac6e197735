"""What a replica serves when its model is a registry reference (genray.registry): the version
the reference names now, reloaded in place when it moves, and during a rollout a canary beside it.

`ServedModel` loads the version a reference names. For a reference that can move (an alias,
or a plain name: the latest version) a watcher thread reads the registry every WATCH_S seconds
(one small read for an alias, plus one for a rollout on it); when the alias moves, or a rollout
starts or ends, it loads the new version in that thread and warms it (one forward pass), then
swaps it in with one assignment. Requests never wait for a load and none is dropped: a request
keeps the version it started with, and the next one gets the new version.

During a rollout on the served alias (genray rollout), each request goes to the canary or the
stable version: by a hash of its client key (header `x-client-key`) when it sends one, so that a
client stays with one version, otherwise by a running count that sends exactly `percent` of
every hundred requests to the canary. The canary takes traffic only once this replica has
loaded and warmed it.

The choice is made per request by `ModelChoice`, an ASGI middleware of every genray app, before
FastAPI runs the endpoint; the endpoint reads it as `replica.family` (a context variable), and
the answer carries the version in the `x-genray-model-version` header (`<model>@<N>`). Batched
endpoints pass the family they were given into their batch, since a batch may mix versions.
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable

from genray.storage import Location

log = logging.getLogger(__name__)

VERSION_HEADER = "x-genray-model-version"
CLIENT_KEY_HEADER = "x-client-key"
# Seconds between two reads of the registry by a replica's watcher; GENRAY_WATCH_S overrides it.
WATCH_S = 2.0


def watch_interval() -> float:
    raw = os.environ.get("GENRAY_WATCH_S")
    try:
        return max(0.05, float(raw)) if raw else WATCH_S
    except ValueError:
        return WATCH_S


@dataclass(frozen=True)
class Loaded:
    """One loaded version: its family (eval mode, on the replica's device) and checkpoint."""

    label: str  # "<model>@<N>", or the folder of a model that is no registry version
    number: int | None
    family: Any
    ckpt: Any


# The version the current request was given (ModelChoice sets it before the endpoint runs).
CHOICE: ContextVar[Loaded | None] = ContextVar("genray_model_choice", default=None)
# The served model of this replica process: Serve runs one replica per process.
_SERVED: list[ServedModel] = []


class ServedModel:
    """The model a replica serves, from `ref` (a registry reference or a checkpoint folder).
    `load(folder)` rebuilds (family, checkpoint) from a checkpoint folder; `warm(family)` runs
    one forward pass so that the first request it answers pays no first-call cost."""

    def __init__(self, ref: str, load: Callable[[str], tuple[Any, Any]], warm: Callable[[Any], Any] | None = None):
        from genray import registry

        self.ref, self._load, self._warm = str(ref), load, warm
        where, self.selector = registry.split(self.ref)
        self.model = registry.Model(where) if (where / registry.CLAIMS).is_folder() or self.selector else None
        self.alias = self.selector if self.selector and not self.selector.isdigit() and self.selector != "latest" \
            else None
        self.stable = self._version(self._current_number())
        self.canary: Loaded | None = None
        self.percent = 0.0
        self._count = 0
        self._stop = threading.Event()
        _SERVED[:] = [self]
        if self.model is not None and not (self.selector or "").isdigit():  # a version number never moves
            threading.Thread(target=self._watch, name="genray-model-watch", daemon=True).start()

    # --- per request -------------------------------------------------------------------------

    def choose(self, key: str | None) -> Loaded:
        """The version a request goes to (see the module's docstring)."""
        canary, percent = self.canary, self.percent
        if canary is None:
            return self.stable
        if key:
            return canary if zlib.crc32(key.encode()) % 10_000 < percent * 100 else self.stable
        n = self._count = self._count + 1
        return canary if int(n * percent / 100) > int((n - 1) * percent / 100) else self.stable

    def describe(self) -> dict[str, Any]:
        """What GET / says of the served version(s)."""
        out: dict[str, Any] = {"model": self.ref, "version": self.stable.label}
        if self.canary is not None:
            out["canary"] = {"version": self.canary.label, "percent": self.percent}
        return out

    # --- the watcher -------------------------------------------------------------------------

    def _current_number(self) -> int | None:
        from genray import registry

        return None if self.model is None else self.model.number(self.selector)

    def _version(self, number: int | None) -> Loaded:
        folder = self.model.folder(number).native() if number is not None else registry_free_folder(self.ref)
        family, ckpt = self._load(str(folder))
        if self._warm is not None:
            self._warm(family)
        label = f"{self.model.name}@{number}" if number is not None else str(folder)
        return Loaded(label, number, family, ckpt)

    def refresh(self) -> None:
        """One look at the registry: load and swap in whatever moved."""
        number = self._current_number()
        if number != self.stable.number:
            reuse = self.canary if self.canary is not None and self.canary.number == number else None
            self.stable = reuse or self._version(number)
            log.info("genray: %s now serves %s", self.ref, self.stable.label)
        rollout = self.model.rollout(self.alias) if self.alias else None
        if rollout is None or rollout["canary"] == self.stable.number:
            self.canary, self.percent = None, 0.0
            return
        if self.canary is None or self.canary.number != rollout["canary"]:
            self.canary = None  # the old canary's traffic goes back to stable while the new one loads
            loaded = self._version(rollout["canary"])
            self.percent, self.canary = float(rollout["percent"]), loaded
            log.info("genray: canary %s takes %g%% of %s", loaded.label, self.percent, self.ref)
        else:
            self.percent = float(rollout["percent"])

    def _watch(self) -> None:
        while not self._stop.wait(watch_interval()):
            try:
                self.refresh()
            except Exception as err:  # a store that cannot be read now: keep serving what is loaded
                log.warning("genray: cannot refresh %s: %s", self.ref, err)

    def stop(self) -> None:
        self._stop.set()


def registry_free_folder(ref: str) -> str:
    """A model folder that is no registry model (a model exported before versions)."""
    return Location(ref).native()


def served() -> ServedModel | None:
    return _SERVED[0] if _SERVED else None


class ModelChoice:
    """ASGI middleware: give each HTTP request its version (ServedModel.choose, by its
    x-client-key header) before the endpoint runs, and name that version in the answer's
    x-genray-model-version header. An app without a served model (heat) passes through."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        model = served()
        if scope["type"] != "http" or model is None:
            await self.app(scope, receive, send)
            return
        key = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == CLIENT_KEY_HEADER.encode()), None)
        chosen = model.choose(key)
        token = CHOICE.set(chosen)

        async def send_with_version(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                   (VERSION_HEADER.encode(), chosen.label.encode("latin-1"))]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_version)
        finally:
            CHOICE.reset(token)


# --- what `genray rollout` needs --------------------------------------------------------------

def rollout_target(app: str, model: str | None, url: str, api_key: str | None):
    """(the registry model, the alias) that app `app` serves: from `model` (MODEL@ALIAS) or from
    the running app's GET /. A RegistryError unless it serves an alias."""
    from genray import registry

    if model is None:
        from genray.client import Client

        model = Client(f"{url.rstrip('/')}/{app}", api_key, timeout=10, retries=1).info().get("model")
        if model is None:
            raise registry.RegistryError(f"the app {app!r} at {url} serves no registry model (its GET / names none)")
    target, selector = registry.parse(model)
    if selector is None or selector.isdigit() or selector == registry.LATEST:
        raise registry.RegistryError(f"the app {app!r} serves {model}: a rollout moves an alias, so serve the model by "
                                     f"one (model: {target}@production in its serve YAML)")
    target.alias_version(selector)  # an unknown model or alias: its clear error
    return target, selector


def wait_for(app: str, url: str, api_key: str | None, expect: dict[str, Any], timeout: float,
             answers: int = 8) -> bool:
    """Whether `answers` GET / of the app in a row say what `expect` says (a key with None: that
    key absent) within `timeout` seconds. Each request may reach another replica."""
    import time

    from genray.client import APIError, Client

    client = Client(f"{url.rstrip('/')}/{app}", api_key, timeout=10, retries=1)
    deadline, streak = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        try:
            info = client.info()
            streak = streak + 1 if all(info.get(k) == v for k, v in expect.items()) else 0
        except (APIError, OSError):
            streak = 0
        if streak >= answers:
            return True
        time.sleep(0.1 if streak else 0.5)
    return False
