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

`MultiplexedModels` serves many models of one family from a store instead (the best trials of
a search, many versions): each request names its model, NAME (the latest version), NAME@N or
NAME@ALIAS, in the `serve_multiplexed_model_id` header (Serve routes it to a replica that has
the model loaded) or in a `model` field of its JSON body; a replica loads models on demand and
keeps at most `max_models_per_replica`, the least recently used going first (Serve's
@serve.multiplexed). An alias is read when its model is loaded.
"""

from __future__ import annotations

import asyncio
import json
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
MODEL_ID_HEADER = "serve_multiplexed_model_id"  # Serve's own: it routes by it
MODEL_FIELD = "model"
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


class MultiplexedModels:
    """The models of one family in `store` that a replica loads on demand (see the module's
    docstring); `load` and `warm` as for ServedModel."""

    def __init__(self, store: str, load: Callable[[str], tuple[Any, Any]], warm: Callable[[Any], Any] | None,
                 max_models: int):
        from ray import serve

        if max_models < 1:
            raise ValueError(f"max_models_per_replica must be at least 1, got {max_models}")
        self.store, self._load, self._warm, self.max_models = Location(store), load, warm, max_models
        self.loads = 0  # models this replica has loaded (again, after an eviction, too)
        # Wired per instance, so that each app sets its own bound (Serve detects it at runtime).
        async def load(model_id: str) -> Loaded:  # a function: Serve keeps its LRU cache on it
            return await self._load_id(model_id)

        self.get = serve.multiplexed(max_num_models_per_replica=max_models)(load)
        _SERVED[:] = [self]

    async def _load_id(self, model_id: str) -> Loaded:
        from genray import registry

        if "/" in model_id or model_id.startswith("."):
            raise registry.RegistryError(f"model {model_id!r}: name a model of the store, NAME, NAME@N or NAME@ALIAS")
        model, selector = registry.parse(self.store / model_id)
        number = await asyncio.to_thread(model.number, selector)
        folder = model.folder(number)
        await asyncio.to_thread(model.manifest, number)  # a deleted version: its clear error
        family, ckpt = await asyncio.to_thread(self._load, folder.native())
        if self._warm is not None:
            await asyncio.to_thread(self._warm, family)
        self.loads += 1
        return Loaded(f"{model.name}@{number}", number, family, ckpt)

    def describe(self) -> dict[str, Any]:
        return {"models": str(self.store), "max_models_per_replica": self.max_models, "loads": self.loads}


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
        headers = dict(scope.get("headers", []))
        if isinstance(model, MultiplexedModels):
            if scope["method"] != "POST":  # GET / and the open pages name no model
                await self.app(scope, receive, send)
                return
            model_id = headers.get(MODEL_ID_HEADER.encode(), b"").decode("latin-1")
            scope, receive, from_body = await without_model_field(scope, receive)
            model_id = model_id or from_body
            if not model_id:
                await refuse(send, 400, f"name the model: the {MODEL_ID_HEADER} header or a '{MODEL_FIELD}' field "
                                        "(NAME, NAME@N or NAME@ALIAS)")
                return
            try:
                chosen = await model.get(model_id)
            except ValueError as err:  # RegistryError: unknown model, version or alias
                await refuse(send, 404, str(err))
                return
        else:
            key = headers.get(CLIENT_KEY_HEADER.encode())
            chosen = model.choose(key.decode("latin-1") if key else None)
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


async def without_model_field(scope, receive):
    """(scope, receive, model) of a JSON request with its body's `model` field taken out (the
    request models forbid unknown fields), or the request as it was and None."""
    content_type = dict(scope.get("headers", [])).get(b"content-type", b"")
    if not content_type.startswith(b"application/json"):
        return scope, receive, None
    chunks, more = [], True
    while more:  # the Guard in front has capped the body's size
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    model = None
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None  # FastAPI says what is wrong with it
    if isinstance(parsed, dict) and isinstance(parsed.get(MODEL_FIELD), str):
        model = parsed.pop(MODEL_FIELD)
        body = json.dumps(parsed).encode()
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
    scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()  # what comes after the body (a disconnect)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return scope, replay, model


async def refuse(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
