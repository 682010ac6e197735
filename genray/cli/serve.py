"""Commands around a served model: serve a config, query an endpoint, draw a picture."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from genray import serve_config
from genray.cli.errors import fail
from genray.config import ConfigError


def serve(
    config: Path = typer.Argument(..., help="Serve config YAML, e.g. serve/vae.yaml."),
    throughput: bool = typer.Option(serve_config.DEFAULT_THROUGHPUT, "--throughput/--no-throughput",
                                    help="Ray Serve's throughput mode: HAProxy in front, replicas answering HTTP "
                                    "directly; off: Serve's Python proxy (see README)."),
    access_log: bool = typer.Option(serve_config.DEFAULT_ACCESS_LOG, "--access-log/--no-access-log",
                                    help="Log a line per request in the replicas' logs (serve/*.yaml turn it off)."),
) -> None:
    """Start the applications of a Serve config (the same file `serve run` takes); Ctrl-C stops.
    The fast path is the default whatever the file says: throughput mode, no access log."""
    try:
        spec = serve_config.load(config, throughput=throughput)
    except ValueError as err:
        fail(str(err))
    serve_config.run(config, spec, throughput=throughput, access_log=access_log)


def query(
    app_name: str = typer.Argument(..., metavar="APP", help="Application: its route prefix, e.g. vae."),
    endpoint: str = typer.Argument(..., metavar="ENDPOINT", help="Endpoint, e.g. sample (POST), or info (GET /)."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Request field: --set n=8 (YAML; @digit.png reads an image)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the answer's images here: one PNG, or a grid of several."),
    url: str = typer.Option("http://127.0.0.1:8000", envvar="GENRAY_URL", help="Serve's HTTP address."),
    api_key: Optional[str] = typer.Option(None, envvar="GENRAY_API_KEY", help="The deployment's API key, if it has one."),
    timeout: float = typer.Option(60.0, help="Seconds to wait for an answer."),
    model: Optional[str] = typer.Option(None, "--model", help="For an app of many models: which one (NAME, NAME@N, "
                                                             "NAME@ALIAS)."),
) -> None:
    """Query a deployed model: POST the --set fields as JSON to URL/APP/ENDPOINT; print the answer
    (images abbreviated) and write its images with --out. Example: genray query vae sample --set n=16 --out s.png"""
    from genray.client import APIError, Client, response_images
    from genray.query_files import parse_sets, shown, write_images

    try:
        body = parse_sets(set_)
        client = Client(f"{url.rstrip('/')}/{app_name.strip('/')}", api_key=api_key, timeout=timeout, model=model)
        answer = client.request("GET", "/") if endpoint in ("info", "/") and not body else client.post(endpoint, body)
    except (ConfigError, ValueError) as err:
        fail(str(err))
    except APIError as err:
        fail(f"{err.status}: {err.message}" if err.status else str(err))
    pngs = response_images(answer)
    if out is not None:
        try:
            write_images(pngs, out)
        except ValueError as err:
            fail(str(err))
    typer.echo(shown(answer, pngs))
    if client.version:
        typer.echo(f"answered by {client.version}")
    if out is not None:
        typer.echo(f"wrote {out} ({len(pngs)} image{'s' * (len(pngs) != 1)})")


def picture(
    kind: str = typer.Argument(..., help="codes, manifold, interpolation, style, portrait or heat."),
    model: Optional[str] = typer.Argument(None, help="Model store folder, checkpoint or s3:// URI (none for heat)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="File: .png, .svg, .pdf; for heat also .gif (an animation)."),
    logdir: Optional[str] = typer.Option(None, help="Also write the figure to TensorBoard under this folder."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Picture option, e.g. --set n=20 (an unknown one lists them)."),
) -> None:
    """Draw a model: 2-D latent codes coloured by digit, the decoded manifold, interpolation strips,
    CVAE style-transfer sheets, ODE phase portraits, heat maps (and a GIF over time)."""
    from genray import pictures
    from genray.query_files import parse_sets

    if out is None and logdir is None:
        fail("say where the picture goes: --out FILE and/or --logdir DIR")
    try:
        options = parse_sets(set_)
        if kind == "heat" and out is not None and out.suffix.lower() == ".gif":
            out.parent.mkdir(parents=True, exist_ok=True)
            pictures.heat_animation(out, **options)
            typer.echo(f"wrote {out}")
            return
        figure = pictures.draw(kind, model, **options)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
        pictures.save(figure, out, kind=kind, logdir=logdir)
    except (ConfigError, ValueError, TypeError) as err:
        fail(str(err))
    for target in ([str(out)] if out else []) + ([f"TensorBoard {logdir} (pictures/{kind})"] if logdir else []):
        typer.echo(f"wrote {target}")
