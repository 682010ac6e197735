"""`genray models`: the versions and aliases of exported models (genray.registry). A MODEL is
<store>/<name>, a folder or an s3:// URI, as `genray export --to` takes it."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

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
