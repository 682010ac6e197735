"""Commands that run a model: train, export, demo, tune, heat."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import List, Optional

import typer

from genray.cli.errors import fail
from genray.config import ConfigError


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


def train(
    family: Optional[str] = typer.Argument(None, help="Model family, e.g. vae (omit with --resume)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override: --set model.latent_dim=8 (repeatable)."),
    workers: Optional[int] = typer.Option(None, help="Ray Train workers (train.workers)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (train.epochs)."),
    name: Optional[str] = typer.Option(None, help="Run name; the run folder is <storage>/<name>."),
    storage: str = typer.Option("runs", help="Folder or s3://bucket/prefix that holds the runs."),
    resume: Optional[str] = typer.Option(None, help="Continue run NAME from its latest checkpoint."),
    tracker: Optional[str] = typer.Option(
        None, help="Also record the run in an experiment tracker: mlflow or none (tracking.tracker; "
                   "--set tracking.uri=http://host:5000 names a server, default ./mlruns)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)."),
) -> None:
    """Train a model family with Ray Train (N workers, DDP, checkpoints)."""
    from genray.config import build_config
    from genray.runs import load_run_config
    from genray.tracking import require as require_tracker
    from genray.train import fit

    overrides = list(set_)
    if workers is not None:
        overrides.append(f"train.workers={workers}")
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    if tracker is not None:
        overrides.append(f"tracking.tracker={tracker}")
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
        require_tracker(cfg.tracking)  # before Ray starts
        connect(address)
        summary = fit(cfg, resume=bool(resume))
    except (ConfigError, ValueError, FileExistsError) as err:
        fail(str(err))
    metric = summary.metric
    typer.echo(f"run:         {summary.run_dir}")
    typer.echo(f"best:        {summary.best_checkpoint}")
    typer.echo(f"{metric}: {summary.metrics.get(metric, float('nan')):.4f} (last epoch)")
    typer.echo(f"wall time:   {summary.wall_s:.1f} s")
    typer.echo(f"tensorboard: tensorboard --logdir {summary.run.tensorboard}")
    tracking = summary.run.read_config()["tracking"]  # as the run settled it: store and experiment
    if tracking["tracker"] != "none":
        typer.echo(f"tracking:    {tracking['tracker']} experiment {tracking['experiment']!r} at {tracking['uri']}")
    typer.echo(f"export:      genray export {summary.name} --storage {storage} --to models/{cfg.family}")


def export(
    run: str = typer.Argument(..., help="Run name (under --storage), run folder or s3:// URI; a search name with --best."),
    to: str = typer.Option(..., "--to", help="The model, <store>/<name> (a folder or s3:// URI), e.g. models/vae."),
    storage: Optional[str] = typer.Option(None, help="Folder or s3:// prefix that holds the runs (default runs, or searches with --best)."),
    which: str = typer.Option("best", help="best (by the family's metric) or latest."),
    best: bool = typer.Option(False, "--best", help="RUN is a Tune search: export its best trial's best checkpoint."),
    alias: Optional[str] = typer.Option(None, help="Point this alias (e.g. production) at the new version."),
) -> None:
    """Add a run's (or a search's) best checkpoint to the model store as the model's next version,
    which deployments load (see `genray models`)."""
    from genray.checkpoint import CheckpointError
    from genray.registry import publish
    from genray.store import named_run
    from genray.tracking import VERSION_TAG, tag_export

    try:
        source, options = named_run(run, storage, search=best)
        version = publish(source, to, which=which, alias=alias, **options)
    except (CheckpointError, FileExistsError, ValueError) as err:
        fail(str(err))
    manifest = version.manifest
    typer.echo(f"exported {manifest['family']} (epoch {manifest['epoch']}) from {source} as version "
               f"{version.number}: {version}" + (f", alias {alias}" if alias else ""))
    try:
        tracked = tag_export(version)
    except Exception as err:  # the version is made: a tracker that does not take the tag only warns
        typer.secho(f"warning: could not tag the tracked run with {VERSION_TAG}={version}: {err}",
                    fg=typer.colors.YELLOW, err=True)
    else:
        if tracked is not None:
            typer.echo(f"tracked run {tracked}: tag {VERSION_TAG}={version}")


def demo(
    workers: int = typer.Option(2, help="Ray Train workers."),
    epochs: int = typer.Option(20, help="Epochs."),
    out: Path = typer.Option(Path("demo_out"), help="Where the PNGs go."),
    storage: str = typer.Option("runs", help="Folder that holds the runs."),
    store: Path = typer.Option(Path("models/vae"), help="The model to add the run to as a version: <store>/<name>."),
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


def tune(
    family: Optional[str] = typer.Argument(None, help="Model family, e.g. vae or gan (omit with --resume)."),
    space: Optional[str] = typer.Option(None, help="Search-space YAML (default: the family's packaged one)."),
    scheduler: Optional[str] = typer.Option(
        None, help="fifo, asha, hyperband, pbt or pb2 (default: the space YAML's `scheduler`, else asha)."),
    searcher: Optional[str] = typer.Option(
        None, help="random, grid or optuna (default: the space YAML's `searcher`, else random)."),
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
    status: Optional[str] = typer.Option(None, help="Show search NAME's progress (while it runs, too); no Ray."),
    report: Optional[str] = typer.Option(None, help="Write search NAME's report: parallel coordinates (report.png) "
                                                    "and parameter importance (report.md), in <storage>/<NAME>/report."),
    perturbation_interval: int = typer.Option(1, help="PBT/PB2: epochs between exploit/explore steps."),
    tracker: Optional[str] = typer.Option(
        None, help="Record every trial in an experiment tracker: mlflow or none (tracking.tracker; the "
                   "experiment is the search's name unless tracking.experiment is set)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)."),
) -> None:
    """Search hyperparameters with Ray Tune: random, grid or Optuna TPE sampling; ASHA,
    HyperBand, PBT or PB2 scheduling. One-worker trials train in the trial's own process."""
    from genray.runs import RunDir
    from genray.searches import format_status, search_status, write_hparams, write_report
    from genray.tune import TRIALS_FOLDER, build_tuner, plan_search, restore_tuner, summarize

    if status or report:
        try:
            if status:
                typer.echo(format_status(search_status(status, storage)))
            if report:
                search = RunDir(storage, report).location
                if search.on_s3:
                    fail("--report writes local files: run it on a search in a local folder "
                         "(genray export can fetch a trial's model from S3)")
                for path in write_report(report, storage, search.path / "report"):
                    typer.echo(f"wrote {path}")
        except ConfigError as err:
            fail(str(err))
        return
    try:
        if resume:
            if tracker is not None:
                fail("--tracker: a resumed search keeps the tracking it started with")
            connect(address)
            tuner, meta = restore_tuner(resume, storage)
            search_name, metric_name, metric_mode = resume, meta["metric"], meta["mode"]
        else:
            if family is None:
                fail("name a FAMILY (e.g. `genray tune vae`) or --resume NAME")
            overrides = list(set_) + [f"train.workers={workers}"] + ([f"train.epochs={epochs}"] if epochs else [])
            if tracker is not None:
                overrides.append(f"tracking.tracker={tracker}")
            spec, base, planned = plan_search(family, space=space, scheduler=scheduler, searcher=searcher,
                                              overrides=overrides, storage=storage, name=name, metric=metric,
                                              mode=mode)
            connect(address)
            search_name, metric_name, metric_mode = planned.name, spec.metric, spec.mode
            tuner = build_tuner(family, name=search_name, storage=storage, spec=spec, base=base,
                                num_samples=num_samples, max_concurrent=max_concurrent,
                                perturbation_interval=perturbation_interval)
        results = tuner.fit()
    except (ConfigError, ValueError) as err:
        fail(str(err))
    search = RunDir(storage, search_name).location
    rows = summarize(results, metric_name, metric_mode, search)
    hparams = write_hparams(search, rows, metric_name, metric_mode)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{search_name}: trials by best {metric_name} ({metric_mode})")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    for k in keys:
        table.add_column(k)
    for r in rows:
        table.add_row(*[f"{r.get(k):.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys])
    Console().print(table)
    typer.echo(f"results:     {search / 'results.csv'} and results.json")
    typer.echo(f"tensorboard: tensorboard --logdir {search / TRIALS_FOLDER} (training curves), "
               f"--logdir {hparams} (HParams: parameters against {metric_name})")
    typer.echo(f"report:      genray tune --report {search_name} --storage {storage}")
    typer.echo(f"export best: genray export {search_name} --best --storage {storage} --to models/<name>")


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
