"""The `genray` command: train, export, serve, demo."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from genray.config import ConfigError, build_config

app = typer.Typer(
    help="Train, search and serve classic generative and scientific models on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def connect(address: Optional[str]) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS); otherwise start an embedded local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        from genray.train import start_local_ray

        start_local_ray(log_to_driver=True)


@app.command()
def train(
    family: Optional[str] = typer.Argument(None, help="Model family, e.g. vae (omit with --resume)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override: --set model.latent_dim=8 (repeatable)."),
    workers: Optional[int] = typer.Option(None, help="Ray Train workers (train.workers)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (train.epochs)."),
    name: Optional[str] = typer.Option(None, help="Run name; the run folder is <storage>/<name>."),
    storage: str = typer.Option("runs", help="Folder or s3://bucket/prefix that holds the runs."),
    resume: Optional[str] = typer.Option(None, help="Continue run NAME from its latest checkpoint."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)."),
) -> None:
    """Train a model family with Ray Train (N workers, DDP, checkpoints)."""
    from genray.config import build_config
    from genray.train import fit, load_run_config

    overrides = list(set_)
    if workers is not None:
        overrides.append(f"train.workers={workers}")
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    try:
        if resume:
            if family or config or name:
                fail("--resume takes the run's stored config; give no FAMILY, --config or --name with it")
            cfg = load_run_config(resume, storage, overrides)
        else:
            if family is None and config is None:
                fail("name a FAMILY (e.g. `genray train vae`) or a --config file")
            overrides += [f"storage={storage}"] + ([f"name={name}"] if name else [])
            cfg = build_config(family, config, overrides)
        connect(address)
        summary = fit(cfg, resume=bool(resume))
    except (ConfigError, ValueError, FileExistsError) as err:
        fail(str(err))
    from genray.families import get_family

    metric = get_family(cfg.family).metric
    typer.echo(f"run:         {summary.run_dir}")
    typer.echo(f"best:        {summary.best_checkpoint}")
    typer.echo(f"{metric}: {summary.metrics.get(metric, float('nan')):.4f} (last epoch)")
    typer.echo(f"wall time:   {summary.wall_s:.1f} s")
    typer.echo(f"tensorboard: tensorboard --logdir {summary.run_dir / 'tensorboard'}")
    typer.echo(f"export:      genray export {summary.name} --storage {storage} --to models/{cfg.family}")


@app.command()
def export(
    run: str = typer.Argument(..., help="Run name (under --storage), run folder or s3:// URI; a search name with --best."),
    to: str = typer.Option(..., "--to", help="Model store folder or s3:// URI to write, e.g. models/vae."),
    storage: Optional[str] = typer.Option(None, help="Folder or s3:// prefix that holds the runs (default runs, or searches with --best)."),
    which: str = typer.Option("best", help="best (by the family's metric) or latest."),
    best: bool = typer.Option(False, "--best", help="RUN is a Tune search: export its best trial's best checkpoint."),
    replace: bool = typer.Option(False, help="Replace an existing model (the old one is kept beside it)."),
) -> None:
    """Copy a run's (or a search's) best checkpoint into the model store that deployments load."""
    import json

    from genray.checkpoint import CheckpointError
    from genray.store import export as export_model

    from genray.data.uri import is_s3, join

    storage = storage or ("searches" if best else "runs")
    run_dir = run if is_s3(run) else Path(run) if Path(run).is_dir() else join(storage, run) if is_s3(storage) else Path(storage) / run
    options = {}
    if best:
        from genray.tune import SPEC_FILE

        from genray.data import uri

        spec = uri.join(run_dir, SPEC_FILE)
        if not uri.exists(spec):
            fail(f"{run_dir} is not a genray search (no {SPEC_FILE})")
        meta = json.loads(uri.read_text(spec))
        options = {"pattern": "*/checkpoint_*", "metric": meta["metric"], "mode": meta["mode"]}
    try:
        dest = export_model(run_dir, to, which=which, replace=replace, **options)
    except (CheckpointError, FileExistsError, ValueError) as err:
        fail(str(err))
    from genray.checkpoint import read_manifest

    manifest = read_manifest(dest)
    typer.echo(f"exported {manifest['family']} (epoch {manifest['epoch']}) from {run_dir} to {dest}")


@app.command()
def serve(
    config: Path = typer.Argument(..., help="Serve config YAML, e.g. serve/vae.yaml."),
    throughput: bool = typer.Option(False, "--throughput", help="Ray Serve's throughput mode on the local Ray this "
                                    "starts: HAProxy in front, replicas answering HTTP directly (see README)."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="Log every request in the replicas' "
                                    "logs (Serve's default); off is what `genray bench perf` measures."),
) -> None:
    """Start the applications of a Serve config (the same file `serve run` takes); Ctrl-C stops."""
    from genray import serve_config

    try:
        spec = serve_config.load(config)
    except ValueError as err:
        fail(str(err))
    serve_config.run(config, spec, throughput=throughput, access_log=access_log)


@app.command()
def demo(
    workers: int = typer.Option(2, help="Ray Train workers."),
    epochs: int = typer.Option(20, help="Epochs."),
    out: Path = typer.Option(Path("demo_out"), help="Where the PNGs go."),
    storage: str = typer.Option("runs", help="Folder that holds the runs."),
    store: Path = typer.Option(Path("models/vae"), help="Model store folder to export to."),
    port: int = typer.Option(8000, help="HTTP port for Serve."),
    keep_serving: bool = typer.Option(False, help="Keep the endpoint up after the demo (Ctrl-C stops)."),
) -> None:
    """Train a VAE on Ray, export it, serve it, query it: the whole path on one machine."""
    from genray.demo import run_demo

    try:
        run_demo(workers=workers, epochs=epochs, out=out, storage=storage, store=store, port=port,
                 keep_serving=keep_serving)
    except (ConfigError, ValueError) as err:
        fail(str(err))


@app.command("tune")
def tune_cmd(
    family: Optional[str] = typer.Argument(None, help="Model family, e.g. vae or gan (omit with --resume)."),
    space: Optional[str] = typer.Option(None, help="Search-space YAML (default: the family's packaged one)."),
    scheduler: str = typer.Option("asha", help="asha, pbt or fifo."),
    num_samples: int = typer.Option(8, help="Trials to sample."),
    max_concurrent: int = typer.Option(2, help="Trials running at once (waiting ones never starve running ones)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs per trial (the scheduler's max_t)."),
    workers: int = typer.Option(1, help="Ray Train workers per trial."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Fixed override for every trial (repeatable)."),
    metric: Optional[str] = typer.Option(None, help="Override the family's metric."),
    mode: Optional[str] = typer.Option(None, help="min or max, with --metric."),
    name: Optional[str] = typer.Option(None, help="Search name; its folder is <storage>/<name>."),
    storage: str = typer.Option("searches", help="Folder or s3:// prefix that holds searches."),
    resume: Optional[str] = typer.Option(None, help="Continue an interrupted search NAME (Tuner.restore)."),
    perturbation_interval: int = typer.Option(1, help="PBT: epochs between exploit/explore steps."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)."),
) -> None:
    """Search hyperparameters with Ray Tune (ASHA, PBT) over the same Ray Train trainer."""
    from genray.data import uri
    from genray.tune import SPEC_FILE, build_tuner, load_space, restore_tuner, search_location, summarize

    try:
        if resume:
            connect(address)
            tuner, meta = restore_tuner(resume, storage)
            search_name, metric_name, metric_mode = resume, meta["metric"], meta["mode"]
        else:
            if family is None:
                fail("name a FAMILY (e.g. `genray tune vae`) or --resume NAME")
            spec = load_space(family, space)
            if metric:
                spec.metric, spec.mode = metric, mode or spec.mode
            overrides = list(set_) + [f"train.workers={workers}"] + ([f"train.epochs={epochs}"] if epochs else [])
            base = build_config(family, None, overrides)
            search_name = name or f"{family}-{scheduler}-{time.strftime('%Y%m%d-%H%M%S')}"
            if uri.exists(uri.join(search_location(storage, search_name), SPEC_FILE)):
                fail(f"search {search_name!r} exists in {storage}; continue it with --resume {search_name}")
            connect(address)
            tuner = build_tuner(family, name=search_name, storage=storage, spec=spec, base=base,
                                scheduler=scheduler, num_samples=num_samples, max_concurrent=max_concurrent,
                                perturbation_interval=perturbation_interval)
            metric_name, metric_mode = spec.metric, spec.mode
        results = tuner.fit()
    except (ConfigError, ValueError) as err:
        fail(str(err))
    search = search_location(storage, search_name)
    rows = summarize(results, metric_name, metric_mode, search)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{search_name}: trials by best {metric_name} ({metric_mode})")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    for k in keys:
        table.add_column(k)
    for r in rows:
        table.add_row(*[f"{r.get(k):.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys])
    Console().print(table)
    typer.echo(f"results:     {uri.join(search, 'results.csv')} and results.json")
    typer.echo(f"tensorboard: tensorboard --logdir {uri.join(search, 'train')}")
    typer.echo(f"export best: genray export {search_name} --best --storage {storage} --to models/<name>")


@app.command()
def heat(
    n: int = typer.Option(64, help="Grid: x_i = i/n, i = 0..n."),
    dt: float = typer.Option(1e-3, help="Time step (backward Euler)."),
    t_end: float = typer.Option(0.1, help="Final time."),
    omega: float = typer.Option(20.0, help="Boundary ramp rate: u = 1 - exp(-omega t) on x1 = 0 and x2 = 0."),
    k_in: float = typer.Option(50.0, help="Conductivity inside the triangle."),
    k_out: float = typer.Option(1.0, help="Conductivity outside."),
    probe: List[str] = typer.Option(["0.25,0.25", "0.5,0.5", "0.5,0.6"], help="Points x1,x2 to print u at."),
    frames: int = typer.Option(21, help="Frames in the animation."),
    out: Path = typer.Option(Path("heat_out"), help="Folder for heat.png and heat.gif."),
) -> None:
    """Solve the 2-D heat problem; print probe values, write a PNG and an animated GIF."""
    from genray.deploy.heat import probe as probe_values
    from genray.heat import render_gif, render_png, solve_frames

    try:
        points = [tuple(float(v) for v in text.split(",")) for text in probe]
        if any(len(pt) != 2 or not all(0.0 <= v <= 1.0 for v in pt) for pt in points):
            raise ValueError(f"probe points must be x1,x2 in [0, 1], got {probe}")
        t0 = time.perf_counter()
        times, fields = solve_frames(n, dt, t_end, omega, k_in, k_out, num_frames=frames)
        wall = time.perf_counter() - t0
    except ValueError as err:
        fail(str(err))
    u = fields[-1]
    out.mkdir(parents=True, exist_ok=True)
    render_png(u, out / "heat.png", title=f"u(x, t={t_end:g})")
    render_gif(times, fields, out / "heat.gif")
    typer.echo(f"solved n={n}, dt={dt:g}, t_end={t_end:g} in {wall:.2f} s; max u = {float(u.max()):.6f}")
    for (x1, x2), value in zip(points, probe_values(u, points)):
        typer.echo(f"u({x1:g}, {x2:g}) = {value:.6f}")
    typer.echo(f"wrote {out / 'heat.png'} and {out / 'heat.gif'}")


@app.command()
def submit(
    spec: Path = typer.Argument(..., help="Job spec YAML under the working folder, e.g. jobs/vae-gpu.yaml."),
    address: Optional[str] = typer.Option(None, help="Dashboard URL (default: $RAY_API_SERVER_ADDRESS or http://127.0.0.1:8265)."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override a spec key: --set config.train.epochs=5 (repeatable)."),
    working_dir: Path = typer.Option(Path("."), help="Folder uploaded with the job (.gitignore'd files are skipped)."),
    follow: bool = typer.Option(True, help="Print the job's log until it ends; exit 1 unless it succeeded."),
    job_id: Optional[str] = typer.Option(None, "--id", help="Submission id (default: Ray picks one)."),
) -> None:
    """Run a job spec on a Ray cluster through its job API (token from RAY_AUTH_TOKEN or ~/.ray/auth_token)."""
    from genray import submit as jobs

    try:
        submitted = jobs.submit(spec, address=address, working_dir=working_dir, overrides=list(set_),
                                submission_id=job_id)
    except (ConfigError, ValueError, RuntimeError, ConnectionError) as err:
        fail(str(err))
    typer.echo(f"submitted {submitted}")
    if not follow:
        typer.echo(f"follow it:   genray job logs {submitted} --follow" + (f" --address {address}" if address else ""))
        return
    status = jobs.follow(submitted, address=address, write=typer.echo)
    typer.echo(f"job {submitted}: {status}")
    if status != "SUCCEEDED":
        raise typer.Exit(1)


def parse_sets(items: List[str]) -> dict:
    """--set key=value items -> a dict; values read as YAML (--set n=8, --set 'y0=[[2, 0]]',
    --set 'prompt="def "'); a value @file, also inside a list (--set 'images=["@a.png", "@b.png"]'),
    reads the file: an image as a base64 PNG, .json as JSON, anything else as text."""
    from genray.config import apply_override, parse_override

    body: dict = {}
    for item in items:
        path, value = parse_override(item)
        apply_override(body, path, read_files(value, ".".join(path)))
    return body


def read_files(value, field: str):
    import json

    if isinstance(value, list):
        return [read_files(v, field) for v in value]
    if not (isinstance(value, str) and value.startswith("@")):
        return value
    source = Path(value[1:])
    if not source.is_file():
        raise ConfigError(f"{field}: no file {source}")
    if source.suffix.lower() == ".json":
        return json.loads(source.read_text())
    if source.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".gif"):
        from genray.client import png_base64

        return png_base64(str(source))
    return source.read_text()


@app.command()
def query(
    app_name: str = typer.Argument(..., metavar="APP", help="Application: its route prefix, e.g. vae."),
    endpoint: str = typer.Argument(..., metavar="ENDPOINT", help="Endpoint, e.g. sample (POST), or info (GET /)."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Request field: --set n=8 (YAML; @digit.png reads an image)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the answer's images here: one PNG, or a grid of several."),
    url: str = typer.Option("http://127.0.0.1:8000", envvar="GENRAY_URL", help="Serve's HTTP address."),
    api_key: Optional[str] = typer.Option(None, envvar="GENRAY_API_KEY", help="The deployment's API key, if it has one."),
    timeout: float = typer.Option(60.0, help="Seconds to wait for an answer."),
) -> None:
    """Query a deployed model: POST the --set fields as JSON to URL/APP/ENDPOINT; print the answer
    (images abbreviated) and write its images with --out. Example: genray query vae sample --set n=16 --out s.png"""
    import json

    from genray.client import APIError, Client, response_images

    try:
        body = parse_sets(set_)
        client = Client(f"{url.rstrip('/')}/{app_name.strip('/')}", api_key=api_key, timeout=timeout)
        answer = client.request("GET", "/") if endpoint in ("info", "/") and not body else client.post(endpoint, body)
    except (ConfigError, ValueError) as err:
        fail(str(err))
    except APIError as err:
        fail(f"{err.status or 'no answer'}: {err.message}" if err.status else str(err))
    pngs = response_images(answer)
    if out is not None:
        if not pngs:
            fail("the answer has no images to write (ask for format png or grid, e.g. --set format=png)")
        write_images(pngs, out)
    shown = json.dumps(answer, indent=1, default=str)
    for png in pngs:
        shown = shown.replace(png, f"<base64 PNG, {len(png) * 3 // 4} bytes>")
    typer.echo(shown)
    if out is not None:
        typer.echo(f"wrote {out} ({len(pngs)} image{'s' * (len(pngs) != 1)})")


def write_images(pngs: list[str], out: Path) -> None:
    """One base64 PNG as it is; several as a grid (genray.images.grid)."""
    import base64

    from genray.client import as_output
    from genray.images import grid, save_png

    out.parent.mkdir(parents=True, exist_ok=True)
    if len(pngs) == 1:
        out.write_bytes(base64.b64decode(pngs[0]))
        return
    try:
        batch = as_output(pngs, "torch")  # (B, C, H, W)
    except ValueError:
        fail("the answer's images differ in size; write them one by one with genray.client")
    save_png(grid(batch), out)


@app.command()
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


job_app = typer.Typer(help="Jobs on a Ray cluster: list, status, logs, stop (see genray submit).", no_args_is_help=True)
app.add_typer(job_app, name="job")
ADDRESS_HELP = "Dashboard URL (default: $RAY_API_SERVER_ADDRESS or http://127.0.0.1:8265)."


def job_api(address: Optional[str]):
    """The cluster's job client, or a clear error (unreachable, token refused)."""
    from genray.submit import client

    try:
        return client(address)
    except (RuntimeError, ConnectionError) as err:
        fail(str(err))


@job_app.command("list")
def job_list(address: Optional[str] = typer.Option(None, help=ADDRESS_HELP)) -> None:
    """Every job the cluster knows, oldest first: id, status, entrypoint."""
    for job in sorted(job_api(address).list_jobs(), key=lambda j: j.start_time or 0):
        typer.echo(f"{job.submission_id or job.job_id}\t{job.status.value}\t{job.entrypoint}")


@job_app.command("status")
def job_status(job_id: str = typer.Argument(..., help="Submission id."),
               address: Optional[str] = typer.Option(None, help=ADDRESS_HELP)) -> None:
    """A job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED) and message."""
    try:
        info = job_api(address).get_job_info(job_id)
    except RuntimeError as err:  # an unknown id
        fail(str(err))
    typer.echo(f"{info.status.value}" + (f": {info.message}" if info.message else ""))


@job_app.command("logs")
def job_logs(job_id: str = typer.Argument(..., help="Submission id."),
             follow: bool = typer.Option(False, help="Keep printing until the job ends."),
             address: Optional[str] = typer.Option(None, help=ADDRESS_HELP)) -> None:
    """A job's log so far (or, with --follow, until it ends)."""
    from genray.submit import follow as follow_job

    jobs = job_api(address)
    try:
        if follow:
            typer.echo(f"job {job_id}: {follow_job(job_id, address=address, write=typer.echo)}")
        else:
            typer.echo(jobs.get_job_logs(job_id))
    except RuntimeError as err:
        fail(str(err))


@job_app.command("stop")
def job_stop(job_id: str = typer.Argument(..., help="Submission id."),
             address: Optional[str] = typer.Option(None, help=ADDRESS_HELP)) -> None:
    """Stop a running job (its driver, and with it its Train workers)."""
    try:
        stopped = job_api(address).stop_job(job_id)
    except RuntimeError as err:
        fail(str(err))
    typer.echo(f"job {job_id}: {'stop requested' if stopped else 'was not running'}")


bench_app = typer.Typer(help="Measure quality and speed; figures go to JSON and Markdown files.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def finish_bench(name: str, result: dict, markdown: str, out: Path, readme: Optional[Path]) -> None:
    from genray.bench import update_readme, write_results

    json_path, md_path = write_results(out, name, result, markdown)
    typer.echo(markdown)
    typer.echo(f"wrote {json_path} and {md_path}")
    if readme is not None:
        updated = update_readme(readme, name, markdown)
        typer.echo(f"README table {'updated' if updated else 'not found'} in {readme}")


def previous_results(out: Path, name: str) -> Optional[dict]:
    """The last <out>/<name>.json, whose parts a bench run with --parts keeps; None if there is none."""
    import json

    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


@bench_app.command("quality")
def bench_quality(
    families: str = typer.Option(",".join(["vae", "ae", "cvae", "gan", "vaegan", "aae"]),
                                 help="Comma-separated families to train and measure; `classifier` runs the "
                                      "classifier rows (augmentation, fine-tuning) and alone keeps the other rows."),
    epochs: int = typer.Option(30, help="The fixed budget every family gets."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for quality.json and quality.md."),
    storage: Path = typer.Option(Path("runs"), help="Where the bench's training runs go."),
    readme: Optional[Path] = typer.Option(None, help="Also replace the table between <!-- bench:quality --> markers."),
) -> None:
    """Train every generative family for the same budget; table of IS, FID, coverage, ELBO, MSE."""
    from genray.bench.quality import markdown_table, run
    from genray.families import FAMILIES

    names = [f.strip() for f in families.split(",") if f.strip()]
    unknown = [f for f in names if f not in FAMILIES]
    if unknown:
        fail(f"unknown families {unknown}; known: {sorted(FAMILIES)}")
    result = run(names, epochs, out, storage.resolve())
    finish_bench("quality", result, markdown_table(result), out, readme)


@bench_app.command("heat")
def bench_heat(
    sizes: str = typer.Option("128,256,512", help="Grid sizes n."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for heat.json and heat.md."),
    threads: int = typer.Option(1, help="torch and BLAS threads for every method."),
    readme: Optional[Path] = typer.Option(None, help="Also replace the table between <!-- bench:heat --> markers."),
) -> None:
    """Seconds and CG iterations per step against scipy (splu, Jacobi CG) and pyamg; stencil bandwidth."""
    from genray.bench.heat import markdown_table, run

    result = run([int(v) for v in sizes.split(",")], out / "heat.json", threads=threads)
    finish_bench("heat", result, markdown_table(result), out, readme)


@bench_app.command("ode")
def bench_ode(
    quick: bool = typer.Option(False, "--quick", help="Smoke-test sizes (seconds, no Ray run); the figures mean little."),
    path: Optional[str] = typer.Option(None, help="How genray's ode side runs: ray-train (default) or in-process "
                                                  "(the default with --quick)."),
    rounds: Optional[int] = typer.Option(None, help="Interleaved rounds of the ode comparison (3; 1 with --quick)."),
    parts: str = typer.Option("ode,latent_ode", help="Parts to run (comma-separated); a part not run is kept "
                                                     "from the previous ode.json in --out."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for ode.json and ode.md."),
    storage: Path = typer.Option(Path("runs"), help="Where the bench's Ray Train runs go."),
    readme: Optional[Path] = typer.Option(None, help="Also replace the table between <!-- bench:ode --> markers."),
) -> None:
    """ode vs the same loop in plain torchdiffeq (time, NFE, memory, error; adjoint on and off); latent_ode vs rnn."""
    from genray.bench.ode import PARTS, markdown_table, run

    if path not in (None, "ray-train", "in-process"):
        fail(f"--path must be ray-train or in-process, got {path!r}")
    chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
    if not chosen or set(chosen) - set(PARTS):
        fail(f"--parts takes {' and '.join(PARTS)} (comma-separated), got {parts!r}")
    previous = previous_results(out, "ode")
    result = run(quick=quick, path=path, rounds=rounds, storage=storage, parts=chosen, previous=previous,
                 log=typer.echo)
    finish_bench("ode", result, markdown_table(result), out, readme)


@bench_app.command("tune")
def bench_tune(
    family: str = typer.Option("vae", help="The family searched (its packaged space)."),
    num_samples: int = typer.Option(8, help="Sampled configurations; the same ones for both searches."),
    epochs: int = typer.Option(32, help="Epochs per trial (ASHA's max_t)."),
    max_concurrent: int = typer.Option(2, help="Trials at once, in both searches."),
    seed: int = typer.Option(0, help="Seed of the sampled configurations."),
    tolerance: float = typer.Option(0.02, help="Target: random search's best value within this fraction."),
    set_: List[str] = typer.Option(["train.quality_every=0", "train.preview_every=0"], "--set", "-s",
                                   help="Fixed override for every trial (repeatable)."),
    storage: Path = typer.Option(Path("searches"), help="Where the two searches go."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for tune.json and tune.md."),
    readme: Optional[Path] = typer.Option(None, help="Also replace the table between <!-- bench:tune --> markers."),
) -> None:
    """Trial-seconds ASHA needs to return a config at a target against random search without early stopping."""
    from genray.bench.tune import markdown_table, run

    try:
        result = run(family, num_samples=num_samples, epochs=epochs, max_concurrent=max_concurrent, seed=seed,
                     tolerance=tolerance, storage=storage.resolve(), overrides=list(set_))
    except ConfigError as err:
        fail(str(err))
    finish_bench("tune", result, markdown_table(result), out, readme)


@bench_app.command("gnn")
def bench_gnn(
    quick: bool = typer.Option(False, "--quick", help="Tiny budgets, all runs at once: a smoke test, not figures."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for gnn.json and gnn.md."),
    storage: Path = typer.Option(Path("runs"), help="Where the bench's Ray Train runs go."),
    readme: Optional[Path] = typer.Option(None, help="Also replace the table between <!-- bench:gnn --> markers."),
) -> None:
    """GCN test accuracy (SBM, KarateClub); MPNN test MAE against baselines; 1- and 2-worker throughput."""
    from genray.bench.gnn import markdown_table, run

    result = run(storage.resolve(), quick=quick)
    finish_bench("gnn", result, markdown_table(result), out, readme)


@bench_app.command("serve")
def bench_serve(
    requests_: int = typer.Option(2000, "--requests", help="Requests per endpoint."),
    concurrency: int = typer.Option(32, help="Client threads sending at once."),
    warmup: int = typer.Option(100, help="Requests sent first and not counted."),
    gan: Optional[str] = typer.Option(None, help="GAN model to serve (default: freshly initialised weights)."),
    port: int = typer.Option(8000, help="Serve's HTTP port on 127.0.0.1."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for serve.json and serve.md."),
    readme: Optional[Path] = typer.Option(None, help="Also replace the table between <!-- bench:serve --> markers."),
) -> None:
    """Load test on loopback: errors, throughput, p50/p99 of gan/sample and heat/solve."""
    from genray.bench.serve import markdown_table, run

    result = run(total=requests_, concurrency=concurrency, warmup=warmup, gan_model=gan, port=port)
    finish_bench("serve", result, markdown_table(result), out, readme)


@bench_app.command("perf")
def bench_perf(
    parts: str = typer.Option("training,inference,serving",
                              help="Which parts to run (comma-separated); the others are kept from the previous "
                                   "perf.json in --out."),
    family: str = typer.Option("vae", help="The family trained in the training part."),
    epochs: int = typer.Option(8, help="Epochs per training run (the first is warm-up)."),
    batch_size: int = typer.Option(64, help="Batch size per worker / process."),
    train_rounds: int = typer.Option(2, help="Interleaved rounds of the four training runs."),
    set_: List[str] = typer.Option(["train.quality_every=0"], "--set", "-s",
                                   help="Config override for every training run, genray's and plain (repeatable)."),
    concurrency: str = typer.Option("1,8,32", help="Client concurrencies for the serving part."),
    requests_: int = typer.Option(1000, "--requests", help="Requests per serving measurement."),
    serve_rounds: int = typer.Option(2, help="Interleaved rounds of each serving measurement."),
    replicas: str = typer.Option("1,2", help="Serve replicas per app, each setting measured in turn (comma-separated)."),
    storage: Path = typer.Option(Path("runs"), help="Where the bench's training runs go."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for perf.json and perf.md."),
    readme: Optional[Path] = typer.Option(None, help="Also replace the table between <!-- bench:perf --> markers."),
) -> None:
    """Ray's overhead: Ray Train vs plain PyTorch and torchrun; Ray Serve vs plain FastAPI; math alone."""
    from genray.bench.perf import PARTS, markdown_table, run

    chosen = [p.strip() for p in parts.split(",") if p.strip()]
    if not chosen or set(chosen) - set(PARTS):
        fail(f"--parts takes {', '.join(PARTS)} (comma-separated); got {parts!r}")
    try:
        levels = [int(c) for c in concurrency.split(",")]
        replica_counts = [int(n) for n in replicas.split(",")]
    except ValueError:
        fail(f"--concurrency and --replicas take comma-separated integers, got {concurrency!r}, {replicas!r}")
    previous = previous_results(out, "perf")
    result = run(family=family, epochs=epochs, batch_size=batch_size, train_rounds=train_rounds, overrides=list(set_),
                 concurrencies=levels, requests=requests_, serve_rounds=serve_rounds, replicas=replica_counts, parts=chosen,
                 storage=storage.resolve(), previous=previous, log=typer.echo)
    finish_bench("perf", result, markdown_table(result), out, readme)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
