"""The model registry: numbered, immutable versions of an exported model and aliases
(production, canary, ...) that point at them, in the model store: a local folder or an s3://
prefix, both read and written through genray.storage.Location, by the same code.

A model is the folder <store>/<name>:

    versions/<N>/            version N, never changed once written
        manifest.json        the exported checkpoint (genray.checkpoint) ...
        weights.pt
        version.json         {"version", "model", "run", "checkpoint", "family", "epoch", "metrics",
                              "config", "files": {name: sha256 of every other file}, "created"}
    claims/<N>               reserves the number N; kept when version N is deleted, so that one
                             number never names two different checkpoints
    aliases/<alias>.json     {"version": N, "set": date, "previous": the version before, or null}
    rollouts/<alias>.json    {"canary": N, "percent": P, "started": date}: while it is there, the
                             deployments serving <model>@<alias> send P% of their requests to
                             version N (genray rollout; promote moves the alias, rollback ends it)

A version is there once its version.json is: that file is written last, after the checkpoint is
copied and verified, so no reader takes an export in progress (or one that died) for a version.

References, as serve configs and `genray models` take them:

    models/vae                 the latest version
    models/vae@3               version 3
    models/vae@production      the version the alias points at
    models/vae@latest          the latest version, said explicitly
    s3://bucket/prefix/vae@canary

A plain name is the latest version, never an alias: exporting and then deploying `models/vae`
serves the new model, as it did before versions, and setting an alias never changes what
another reference means. A deployment that should follow promotions names the alias.

Concurrent exports get distinct numbers: the next number is one past the highest claimed, and
the claim creates claims/<N>, which only one writer can do (Location.create: a hard link
locally, a conditional put on S3); a writer that loses tries N+1. Numbers therefore go up by
one, with a gap only where an export died after its claim. An alias moves with one atomic write
(a rename locally, one put on S3), so a reader sees the old version or the new one, and reads
it with one small read (current_version). Not serialised against each other: deleting a version
and pointing an alias at it at the same moment; the alias may then name a deleted version, and
resolving it says so.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genray import checkpoint
from genray.runs import RunDir
from genray.storage import Location, ObjectNotFound
from genray.store import chosen_checkpoint, copy_checkpoint

VERSIONS, CLAIMS, ALIASES, ROLLOUTS = "versions", "claims", "aliases", "rollouts"
VERSION_FILE = "version.json"
LATEST = "latest"  # the newest version, in a reference; no alias may take the name
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Lowercase only: "Production" and "production" would be one file on a case-insensitive disk
# and two objects on S3. A leading letter keeps an alias from reading as a version number.
ALIAS_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")
NUMBER = re.compile(r"[0-9]+")
# Numbers an export tries past the highest claim it saw: each one it loses was taken by another
# export, so only a store that refuses every create gets this far.
MAX_CLAIMS = 1000


class RegistryError(ValueError):
    """An unknown model, version or alias, a name that is not allowed, or a refused change."""


def check_model_name(name: str) -> None:
    if not MODEL_NAME.fullmatch(name):
        raise RegistryError(f"model name {name!r} is not allowed: use letters, digits, '.', '_' and '-', "
                            "starting with a letter or digit, at most 100 characters")


def check_alias_name(alias: str) -> None:
    if alias == LATEST:
        raise RegistryError(f"alias {LATEST!r} is reserved: a reference @{LATEST} always means the newest version")
    if not ALIAS_NAME.fullmatch(alias):
        raise RegistryError(f"alias {alias!r} is not allowed: use lowercase letters, digits, '_' and '-', starting "
                            "with a letter (a number names a version), at most 63 characters")


def version_number(text: str) -> int:
    """A version number written in a reference or on the command line."""
    if not NUMBER.fullmatch(text) or int(text) < 1:
        raise RegistryError(f"version {text!r} is not a version number: versions are numbered 1, 2, 3, ...")
    return int(text)


@dataclass(frozen=True)
class Version:
    model: Model
    number: int
    manifest: dict[str, Any]  # its version.json

    @property
    def folder(self) -> Location:
        """The version's checkpoint folder, what a deployment loads."""
        return self.model.folder(self.number)

    def __str__(self) -> str:
        return f"{self.model}@{self.number}"


class Model:
    """A model in the registry: the folder or s3:// prefix <store>/<name> (a relative local path
    is made absolute). Building one checks its name; reading it checks that it is there."""

    def __init__(self, where: str | os.PathLike | Location):
        self.location = Location(where).resolved()
        check_model_name(self.location.name)

    @property
    def name(self) -> str:
        return self.location.name

    def __str__(self) -> str:
        return str(self.location)

    def __repr__(self) -> str:
        return f"Model({str(self)!r})"

    def folder(self, number: int) -> Location:
        return self.location / VERSIONS / str(number)

    def _alias_file(self, alias: str) -> Location:
        return self.location / ALIASES / f"{alias}.json"

    def _rollout_file(self, alias: str) -> Location:
        return self.location / ROLLOUTS / f"{alias}.json"

    # --- reading -----------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether anything was ever exported here (a claimed number; claims outlive versions)."""
        return (self.location / CLAIMS).is_folder()

    def versions(self) -> list[int]:
        """The numbers of the versions there, oldest first; [] when there is none."""
        found = (self.location / VERSIONS).glob(f"*/{VERSION_FILE}")
        return sorted(int(f.parent.name) for f in found if NUMBER.fullmatch(f.parent.name))

    def latest(self) -> int:
        numbers = self.versions()
        if not numbers:
            self.check_exists()
            raise RegistryError(f"{self} has no versions left (each was deleted); export one with "
                                f"`genray export RUN --to {self}`")
        return numbers[-1]

    def manifest(self, number: int) -> dict[str, Any]:
        """Version `number`'s version.json."""
        try:
            return json.loads((self.folder(number) / VERSION_FILE).read_text())
        except ObjectNotFound:
            self.check_exists()
            raise RegistryError(f"{self} has no version {number}; versions: {_listed(self.versions())}") from None

    def aliases(self) -> dict[str, int]:
        """alias -> version number, for every alias of the model."""
        files = (self.location / ALIASES).glob("*.json")
        names = [f.name[:-len(".json")] for f in files]
        return {name: version for name in names if ALIAS_NAME.fullmatch(name)
                and (version := self._read_alias(name)) is not None}

    def alias_version(self, alias: str) -> int:
        """The version `alias` points at now: one small read."""
        check_alias_name(alias)
        number = self._read_alias(alias)
        if number is None:
            self.check_exists()
            raise RegistryError(f"{self} has no alias {alias!r}; aliases: {_listed(sorted(self.aliases()))}; "
                                f"set one with `genray models alias {self} {alias} VERSION`")
        return number

    def _read_alias(self, alias: str) -> int | None:
        record = self._alias_record(alias)
        return None if record is None else int(record["version"])

    def _alias_record(self, alias: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._alias_file(alias).read_text())
        except ObjectNotFound:
            return None

    def rollout(self, alias: str) -> dict[str, Any] | None:
        """The rollout under way on `alias` ({"canary", "percent", "started"}), or None: one
        small read, what a deployment polls beside the alias."""
        check_alias_name(alias)
        try:
            return json.loads(self._rollout_file(alias).read_text())
        except ObjectNotFound:
            return None

    def number(self, selector: str | None) -> int:
        """The version number that a reference's part after '@' names, with the fewest reads:
        none or 'latest' the newest version (one listing); a number itself (no read); an alias
        what its file says (one small read). Not checked to be there: version() checks."""
        if selector is None or selector == LATEST:
            return self.latest()
        if NUMBER.fullmatch(selector):
            return version_number(selector)
        return self.alias_version(selector)

    def version(self, selector: str | None = None) -> Version:
        """The version that `selector` names (see number), checked to be there."""
        number = self.number(selector)
        try:
            return Version(self, number, self.manifest(number))
        except RegistryError:
            if selector is None or selector == LATEST or NUMBER.fullmatch(selector):
                raise
            raise RegistryError(f"alias {selector!r} of {self} points at version {number}, which is not there "
                                f"(deleted); point it at another: `genray models alias {self} {selector} VERSION`") from None

    def check_exists(self) -> None:
        """Raise the RegistryError that says why no model is here, unless one is."""
        if not self.exists():
            raise self._missing()

    def _missing(self) -> RegistryError:
        """What to say where no model is: of a folder exported before versions, how to go on."""
        if (self.location / checkpoint.MANIFEST).exists():
            return RegistryError(
                f"{self} is a model folder exported before versions (one checkpoint, no versions or aliases): "
                f"a deployment of {self} still loads it as it is; to give it versions, move it aside (e.g. to "
                f"{self.name}-unversioned) and `genray export RUN --to {self}`")
        return RegistryError(f"no model {self.name!r} in {self.location.parent}; export one with "
                             f"`genray export RUN --to {self}`")

    # --- changing ---------------------------------------------------------------------------

    def _add(self, source: Path, record: dict[str, Any]) -> Version:
        """Add the verified local checkpoint folder `source` as the next version; `record` is
        what version.json says of where it came from (run, checkpoint, family, ...)."""
        files = {p.relative_to(source).as_posix(): checkpoint.sha256(p) for p in sorted(source.rglob("*")) if p.is_file()}
        number = self._claim(record)
        folder = self.folder(number)
        if folder.is_folder():  # never touch a version this export did not write
            raise RegistryError(f"{folder} exists though its number {number} was free: was {self.location / CLAIMS} "
                                "changed by hand? Every version's number must stay claimed there")
        try:
            copy_checkpoint(source, folder)
            manifest = {**record, "version": number, "model": self.name, "files": files, "created": _now()}
            (folder / VERSION_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        except BaseException:
            folder.remove_tree()  # what an interrupted S3 upload left; its number stays claimed
            raise
        return Version(self, number, manifest)

    def _claim(self, record: dict[str, Any]) -> int:
        claims = self.location / CLAIMS
        first = max((int(n) for n in claims.list() if NUMBER.fullmatch(n)), default=0) + 1
        body = json.dumps({"claimed": _now(), "run": record.get("run")}).encode()
        for number in range(first, first + MAX_CLAIMS):
            if (claims / str(number)).create(body):
                return number
        raise RegistryError(f"{self}: versions {first} to {first + MAX_CLAIMS - 1} were all taken while this export "
                            "tried them; does the store honour conditional writes (If-None-Match)?")

    def set_alias(self, alias: str, number: int) -> int | None:
        """Point `alias` at version `number` (which must be there), moving it if it is set, with
        one atomic write. Returns the version it pointed at before (None for a new alias)."""
        check_alias_name(alias)
        self.manifest(number)
        before = self._read_alias(alias)
        self._alias_file(alias).write_text(json.dumps({"version": number, "set": _now(), "previous": before}))
        return before

    def start_rollout(self, alias: str, number: int, percent: float) -> dict[str, Any]:
        """Send `percent` of the requests of the deployments serving this model's `alias` to
        version `number` (the canary), the rest to the version the alias points at; a rollout
        under way is replaced."""
        stable = self.alias_version(alias)
        self.manifest(number)
        if number == stable:
            raise RegistryError(f"alias {alias!r} of {self} already points at version {number}: a canary must be "
                                "another version")
        if not 0 < percent <= 100:
            raise RegistryError(f"a canary takes more than 0 and at most 100 percent of the requests, got {percent:g}")
        record = {"canary": number, "percent": float(percent), "started": _now()}
        self._rollout_file(alias).write_text(json.dumps(record))
        return record

    def promote(self, alias: str) -> int:
        """End the rollout on `alias` by moving the alias to its canary; returns that version."""
        record = self._rollout_under_way(alias)
        self.set_alias(alias, record["canary"])  # first: the canary's share never drops in between
        self._rollout_file(alias).remove()
        return record["canary"]

    def rollback(self, alias: str) -> int:
        """Undo the last step on `alias`: a rollout under way ends (every request back to the
        alias's version); otherwise the alias goes back to the version it pointed at before.
        Returns the version the alias's requests go to now."""
        if self.rollout(alias) is not None:
            self._rollout_file(alias).remove()
            return self.alias_version(alias)
        record = self._alias_record(alias)
        if record is None:
            self.alias_version(alias)  # unknown model or alias: its clear error
        previous = record.get("previous")
        if previous is None:
            raise RegistryError(f"alias {alias!r} of {self} has no rollout under way and no earlier version to "
                                "go back to")
        self.set_alias(alias, previous)
        return previous

    def _rollout_under_way(self, alias: str) -> dict[str, Any]:
        record = self.rollout(alias)
        if record is None:
            self.alias_version(alias)
            raise RegistryError(f"no rollout under way on {self}@{alias}; start one with "
                                f"`genray rollout APP --to VERSION --canary PERCENT`")
        return record

    def remove_alias(self, alias: str) -> int:
        """Remove `alias`; returns the version it pointed at."""
        number = self.alias_version(alias)
        self._alias_file(alias).remove()
        return number

    def delete(self, number: int) -> None:
        """Delete version `number`, refused while an alias points at it. Its number stays
        claimed: the next export never takes it again."""
        self.manifest(number)  # an unknown model or version: a clear error
        pointing = sorted(alias for alias, version in self.aliases().items() if version == number)
        canaries = sorted(alias for alias in self.aliases() if (self.rollout(alias) or {}).get("canary") == number)
        if canaries:
            raise RegistryError(f"version {number} of {self} is the canary of a rollout on {canaries[0]}: promote "
                                f"or roll it back first (`genray rollout APP --promote` or `--rollback`)")
        if pointing:
            raise RegistryError(
                f"version {number} of {self} is in use: alias{'es' * (len(pointing) > 1)} {', '.join(pointing)} "
                f"point{'s' * (len(pointing) == 1)} at it; move {pointing[0]} first (`genray models alias {self} "
                f"{pointing[0]} VERSION`) or remove it (`genray models unalias {self} {pointing[0]}`)")
        folder = self.folder(number)
        (folder / VERSION_FILE).remove()  # first: from here on no reader takes the rest for a version
        folder.remove_tree()


# --- references --------------------------------------------------------------------------------

def split(ref: str | os.PathLike | Location) -> tuple[Location, str | None]:
    """A reference's model folder and the part after '@' (None when there is none)."""
    where = Location(ref)
    name, at, selector = where.name.partition("@")
    if not at:
        return where, None
    if not selector:
        raise RegistryError(f"reference {str(ref)!r} ends in '@': name a version number, an alias or {LATEST} after it")
    return where.parent / name, selector


def parse(ref: str | os.PathLike | Location) -> tuple[Model, str | None]:
    """A reference's model and the part after '@' (None when there is none)."""
    where, selector = split(ref)
    return Model(where), selector


def resolve(ref: str | os.PathLike | Location) -> tuple[Location, int]:
    """The folder of the version that `ref` names, checked to be there, and its number."""
    model, selector = parse(ref)
    version = model.version(selector)
    return version.folder, version.number


def current_version(ref: str | os.PathLike | Location) -> int:
    """The version number `ref` names now, read as cheaply as it can be (Model.number): for an
    alias one small read, what a deployment can poll to see the alias move."""
    model, selector = parse(ref)
    return model.number(selector)


def model_folder(ref: str | os.PathLike | Location) -> Location:
    """The checkpoint folder that a deployment of `ref` loads: the folder of the version a
    registry reference names; a plain folder that holds no registry model (a model exported
    before versions, a run's checkpoint, or nothing yet) is itself, so that whoever reads it
    says what is there or what is missing."""
    where, selector = split(ref)
    if selector is None and not (where / CLAIMS).is_folder():
        return where
    return resolve(ref)[0]


def models(store: str | os.PathLike | Location) -> list[Model]:
    """The registry models in `store` (a folder or s3:// prefix), by name."""
    root = Location(store).resolved()
    names = [found.parent.name for found in root.glob(f"*/{CLAIMS}")]
    return [Model(root / name) for name in sorted(names) if MODEL_NAME.fullmatch(name)]


# --- exporting ---------------------------------------------------------------------------------

def publish(run: str | os.PathLike | Location | RunDir, model: str | os.PathLike | Location, *, which: str = "best",
            pattern: str = "checkpoint_*", metric: str | None = None, mode: str | None = None,
            alias: str | None = None) -> Version:
    """Add a run's (or search's) chosen checkpoint (store.chosen_checkpoint: `which`, `pattern`,
    `metric`, `mode`) to `model`, <store>/<name>, as its next version, verified before and after
    the copy; then point `alias` at it when one is given."""
    target = Model(model)
    if alias is not None:
        check_alias_name(alias)  # before anything is copied
    if not target.exists() and (target.location / checkpoint.MANIFEST).exists():
        raise target._missing()  # a folder exported before versions: say what to do with it
    run = run if isinstance(run, RunDir) else RunDir.at(run)
    with chosen_checkpoint(run, which=which, pattern=pattern, metric=metric, mode=mode) as (chosen, source):
        version = target._add(source, {"run": str(run), "checkpoint": str(chosen.path), "family": chosen.family,
                                       "epoch": chosen.epoch, "metrics": chosen.metrics, "config": chosen.config})
    if alias is not None:
        target.set_alias(alias, version.number)
    return version


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _listed(items: list) -> str:
    return ", ".join(map(str, items)) or "none"
