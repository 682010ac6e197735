"""`genray models`: the versions and aliases of exported models (genray.registry). A MODEL is
<store>/<name>, a folder or an s3:// URI, as `genray export --to` takes it."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import typer

from genray.cli.errors import fail

models_app = typer.Typer(help="List, show, alias and delete the versions of exported models.",
                         no_args_is_help=True)


@contextmanager
def refusals() -> Iterator[None]:
    """A registry's refusal (unknown model, version or alias, a bad name) as the command's error."""
    from genray.checkpoint import CheckpointError

    try:
        yield
    except (CheckpointError, FileNotFoundError, ValueError) as err:  # RegistryError is a ValueError
        fail(str(err))


@models_app.command("list")
def list_models(store: str = typer.Argument("models", help="Model store: a folder or s3:// prefix.")) -> None:
    """Every model in STORE with its versions and aliases."""
    from genray import registry

    with refusals():
        found = [(model, model.versions(), model.aliases()) for model in registry.models(store)]
    if not found:
        typer.echo(f"no models in {store} (genray export RUN --to {store.rstrip('/')}/NAME adds one)")
        return
    for model, versions, aliases in found:
        pointers = ", ".join(f"{alias} -> {number}" for alias, number in sorted(aliases.items()))
        typer.echo(f"{model.name}: versions {' '.join(map(str, versions)) or 'none'}"
                   + (f"; {pointers}" if pointers else ""))


@models_app.command()
def show(ref: str = typer.Argument(..., metavar="MODEL[@REF]",
                                   help="A model (its versions), or one version: @3, @production, @latest.")) -> None:
    """A model's versions, or everything version.json says of one version."""
    from genray import registry

    with refusals():
        model, selector = registry.parse(ref)
        if selector is not None:
            version = model.version(selector)
            aliases = model.aliases()
        else:
            model.check_exists()
            rows = [model.manifest(number) for number in model.versions()]
            aliases = model.aliases()
    if selector is not None:
        manifest = version.manifest
        pointing = sorted(alias for alias, number in aliases.items() if number == version.number)
        typer.echo(f"{version}  ({version.folder})")
        for key in ("family", "epoch", "created", "run", "checkpoint"):
            typer.echo(f"  {key + ':':12}{manifest[key]}")
        typer.echo(f"  {'aliases:':12}{', '.join(pointing) or 'none'}")
        typer.echo(f"  {'metrics:':12}" + ", ".join(f"{k} {v:.4g}" for k, v in sorted(manifest["metrics"].items())))
        for name, digest in sorted(manifest["files"].items()):
            typer.echo(f"  {'sha256:':12}{digest}  {name}")
        return
    typer.echo(f"{model}: {len(rows)} version{'s' * (len(rows) != 1)}")
    for manifest in rows:
        pointing = sorted(alias for alias, number in aliases.items() if number == manifest["version"])
        typer.echo(f"  {manifest['version']:>4}  {manifest['family']:<10} epoch {manifest['epoch']:<4} "
                   f"{manifest['created']}  {', '.join(pointing) or '-':<20} {manifest['run']}")


@models_app.command()
def alias(
    model: str = typer.Argument(..., help="The model: <store>/<name>, e.g. models/vae."),
    name: str = typer.Argument(..., metavar="ALIAS", help="The alias, e.g. production or canary."),
    version: str = typer.Argument(..., help="A version number, another alias (its version now), or latest."),
) -> None:
    """Point ALIAS at VERSION, moving it if it is set (one atomic write)."""
    from genray import registry

    with refusals():
        target = registry.Model(model)
        number = target.number(version)
        before = target.set_alias(name, number)
    moved = "set" if before is None else "unchanged" if before == number else f"moved from version {before}"
    typer.echo(f"{target}@{name} -> version {number} ({moved})")


@models_app.command()
def unalias(
    model: str = typer.Argument(..., help="The model: <store>/<name>, e.g. models/vae."),
    name: str = typer.Argument(..., metavar="ALIAS", help="The alias to remove."),
) -> None:
    """Remove ALIAS (the version it pointed at stays)."""
    from genray import registry

    with refusals():
        target = registry.Model(model)
        number = target.remove_alias(name)
    typer.echo(f"removed {target}@{name} (it pointed at version {number})")


@models_app.command()
def delete(
    model: str = typer.Argument(..., help="The model: <store>/<name>, e.g. models/vae."),
    version: str = typer.Argument(..., help="The version number to delete."),
) -> None:
    """Delete a version; refused while an alias points at it. Its number is never used again."""
    from genray import registry

    with refusals():
        target = registry.Model(model)
        number = registry.version_number(version)
        target.delete(number)
    typer.echo(f"deleted {target}@{number}")


def rollout(
    app_name: str = typer.Argument(..., metavar="APP", help="The application (its route prefix, e.g. vae); it must "
                                                             "serve an alias, e.g. models/vae@production."),
    to: Optional[int] = typer.Option(None, "--to", help="The version to roll out."),
    canary: Optional[float] = typer.Option(None, "--canary", help="Percent of the requests the new version takes "
                                                                   "(0 < P <= 100); without it, every request at once."),
    promote: bool = typer.Option(False, "--promote", help="Move the alias to the canary: all traffic."),
    rollback: bool = typer.Option(False, "--rollback", help="End the canary, or move the alias back a version."),
    model: Optional[str] = typer.Option(None, "--model", help="The app's model reference, MODEL@ALIAS (default: "
                                                                "what the running app's GET / says)."),
    url: str = typer.Option("http://127.0.0.1:8000", envvar="GENRAY_URL", help="Serve's HTTP address."),
    api_key: Optional[str] = typer.Option(None, envvar="GENRAY_API_KEY", help="The deployment's API key, if it has one."),
    wait: float = typer.Option(60.0, help="Seconds to wait until the app answers as asked (0: don't wait)."),
) -> None:
    """Move an app's traffic between versions of its model: a canary share, promotion, rollback.
    The replicas watch the registry: each loads and warms the new version before it takes requests."""
    from genray.deploy.versions import rollout_target, wait_for

    if canary is not None and to is None:
        fail("--canary goes with --to VERSION")
    if sum([to is not None, promote, rollback]) != 1:
        fail("give one of --to VERSION (with --canary PERCENT for a canary), --promote or --rollback")
    with refusals():
        target, alias = rollout_target(app_name, model, url, api_key)
        if promote:
            number = target.promote(alias)
            expect, said = {"version": f"{target.name}@{number}", "canary": None}, f"promoted {target.name}@{number}"
        elif rollback:
            number = target.rollback(alias)
            expect, said = {"version": f"{target.name}@{number}", "canary": None}, \
                f"rolled back: every request to {target.name}@{number}"
        elif canary is None:
            target.set_alias(alias, to)
            expect, said = {"version": f"{target.name}@{to}", "canary": None}, f"{alias} -> {target.name}@{to}"
        else:
            record = target.start_rollout(alias, to, canary)
            expect = {"canary": {"version": f"{target.name}@{to}", "percent": record["percent"]}}
            said = f"canary {target.name}@{to} takes {canary:g}% of {app_name}'s requests"
    typer.echo(said)
    if wait > 0 and model is None:
        if not wait_for(app_name, url, api_key, expect, wait):
            fail(f"the app did not answer as {expect} within {wait:g} s; the registry holds the change, the replicas "
                 "take it when they next read it")
        typer.echo("every replica asked answers so")
