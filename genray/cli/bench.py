"""`genray bench ...`: each command runs one bench (genray.bench.<name>) and publishes its figures."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from genray.bench import previous_results, publish
from genray.bench.tune import BUDGET as TUNE_BUDGET
from genray.bench.tune import SEEDS as TUNE_SEEDS
from genray.cli.errors import fail
from genray.config import ConfigError

bench_app = typer.Typer(help="Measure quality and speed; figures go to JSON and Markdown files.",
                        no_args_is_help=True)


@bench_app.command("quality")
def bench_quality(
    families: str = typer.Option(",".join(["vae", "ae", "cvae", "gan", "vaegan", "aae"]),
                                 help="Comma-separated families to train and measure; `classifier` runs the "
                                      "classifier rows (augmentation, fine-tuning) and alone keeps the other rows."),
    epochs: int = typer.Option(30, help="The fixed budget every family gets (the claims are decided at 30)."),
    seeds: Optional[str] = typer.Option(None, help="train.seed values to train each row at (comma-separated; "
                                                   "default: 0,1,2, every seed the claims declare); they merge "
                                                   "with the stored seeds of the same budget."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for quality.json and quality.md."),
    storage: Path = typer.Option(Path("runs"), help="Where the bench's training runs go."),
    readme: Optional[Path] = typer.Option(None, help="Also replace the table between <!-- bench:quality --> markers."),
) -> None:
    """Train every generative family for the same budget, once per seed; table of IS, FID, coverage,
    ELBO, MSE; the declared claims decided over the seeds."""
    from genray.bench.quality import markdown_table, parse_seeds, run
    from genray.families import FAMILIES

    names = [f.strip() for f in families.split(",") if f.strip()]
    unknown = [f for f in names if f not in FAMILIES]
    if unknown:
        fail(f"unknown families {unknown}; known: {sorted(FAMILIES)}")
    try:
        chosen = parse_seeds(seeds)
    except ValueError as err:
        fail(str(err))
    result = run(names, epochs, out, storage.resolve(), seeds=chosen)
    publish("quality", result, markdown_table(result), out, readme, log=typer.echo)


@bench_app.command("heat")
def bench_heat(
    sizes: str = typer.Option("128,256,512", help="Grid sizes n."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for heat.json and heat.md."),
    threads: int = typer.Option(1, help="torch and BLAS threads for every method."),
    readme: Optional[Path] = typer.Option(None, help="Also replace the table between <!-- bench:heat --> markers."),
) -> None:
    """Seconds and CG iterations per step against scipy (splu, Jacobi CG) and pyamg; stencil bandwidth."""
    from genray.bench.heat import MissingBaseline, markdown_table, run

    try:
        result = run([int(v) for v in sizes.split(",")], out / "heat.json", threads=threads)
    except MissingBaseline as err:
        fail(str(err))
    publish("heat", result, markdown_table(result), out, readme, log=typer.echo)


@bench_app.command("ode")
def bench_ode(
    quick: bool = typer.Option(False, "--quick", help="Smoke-test sizes (seconds, no Ray run); the figures mean little."),
    path: Optional[str] = typer.Option(None, help="How genray's ode side runs: ray-train (default) or in-process "
                                                  "(the default with --quick)."),
    rounds: Optional[int] = typer.Option(None, help="Interleaved rounds of the ode comparison (3; 1 with --quick)."),
    parts: str = typer.Option("ode,latent_ode", help="Parts to run (comma-separated); a part not run is kept "
                                                     "from the previous ode.json in --out."),
    seeds: Optional[str] = typer.Option(None, help="Data seeds of the latent_ode part (comma-separated; default "
                                                   "0,1,2, the claims' seeds; 0 with --quick)."),
    rnn_widths: str = typer.Option("32,40,64", help="RNN widths the latent_ode part also trains (comma-separated); "
                                                    "the best-width claims use 32,40,64."),
    variant: List[str] = typer.Option([], "--variant", help="Also train the latent ODE with these model settings "
                                      "(KEY=VALUE,...; repeatable), e.g. --variant encoder=ode_rnn: not claims, a table beside them."),
    variant_points: str = typer.Option("30,50,100", help="Observed-point counts the --variant runs train at."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for ode.json and ode.md."),
    storage: Path = typer.Option(Path("runs"), help="Where the bench's Ray Train runs go."),
    readme: Optional[Path] = typer.Option(None, help="Also replace the table between <!-- bench:ode --> markers."),
) -> None:
    """ode vs the same loop in plain torchdiffeq (time, NFE, memory, error; adjoint on and off); latent_ode vs rnn."""
    from genray.bench.ode import PARTS, SERIES_SIZES, markdown_table, parse_variant, run

    if path not in (None, "ray-train", "in-process"):
        fail(f"--path must be ray-train or in-process, got {path!r}")
    chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
    if not chosen or set(chosen) - set(PARTS):
        fail(f"--parts takes {' and '.join(PARTS)} (comma-separated), got {parts!r}")
    try:
        data_seeds = tuple(int(v) for v in seeds.split(",") if v.strip()) if seeds else None
        widths = tuple(int(v) for v in rnn_widths.split(",") if v.strip())
    except ValueError:
        fail(f"--seeds and --rnn-widths take comma-separated integers, got {seeds!r}, {rnn_widths!r}")
    if (seeds is not None and not data_seeds) or not widths or min(widths) < 1:
        fail(f"--seeds and --rnn-widths need at least one value each, widths >= 1; got {seeds!r}, {rnn_widths!r}")
    try:
        variants = tuple(parse_variant(v) for v in variant)
        points = tuple(int(v) for v in variant_points.split(",") if v.strip())
    except ValueError as err:
        fail(str(err))
    if variants and "latent_ode" not in chosen:
        fail("--variant trains the latent_ode part: add latent_ode to --parts")
    if not points or set(points) - set(SERIES_SIZES):
        fail(f"--variant-points takes counts among {','.join(map(str, SERIES_SIZES))}, got {variant_points!r}")
    result = run(quick=quick, path=path, rounds=rounds, storage=storage, parts=chosen, seeds=data_seeds,
                 widths=widths, variants=variants, variant_points=points, previous=previous_results(out, "ode"),
                 log=typer.echo)
    publish("ode", result, markdown_table(result), out, readme, log=typer.echo)


@bench_app.command("tune")
def bench_tune(
    family: str = typer.Option(TUNE_BUDGET["family"], help="The family searched (its packaged space)."),
    num_samples: int = typer.Option(TUNE_BUDGET["num_samples"],
                                    help="Sampled configurations; the same ones for both searches."),
    epochs: int = typer.Option(TUNE_BUDGET["epochs"], help="Epochs per trial (ASHA's max_t)."),
    max_concurrent: int = typer.Option(TUNE_BUDGET["max_concurrent"], help="Trials at once, in both searches."),
    seeds: str = typer.Option(",".join(map(str, TUNE_SEEDS)),
                              help="Seeds of the sampled configurations (comma-separated); one pair of searches each."),
    tolerance: float = typer.Option(TUNE_BUDGET["tolerance"], help="Target: random search's best value within this fraction."),
    set_: List[str] = typer.Option(["train.quality_every=0", "train.preview_every=0"], "--set", "-s",
                                   help="Fixed override for every trial (repeatable)."),
    storage: Path = typer.Option(Path("searches"), help="Where the searches go."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for tune.json and tune.md."),
    readme: Optional[Path] = typer.Option(None, help="Also replace the table between <!-- bench:tune --> markers."),
) -> None:
    """Trial-seconds ASHA needs against random search without early stopping, per seed; the declared
    claims decided over the seeds (defaults: the declared budget and seeds)."""
    from genray.bench.tune import markdown_table, run

    try:
        chosen = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        fail(f"--seeds takes comma-separated integers, got {seeds!r}")
    if not chosen:
        fail("--seeds names no seed")
    try:
        result = run(family, num_samples=num_samples, epochs=epochs, max_concurrent=max_concurrent, seeds=chosen,
                     tolerance=tolerance, storage=storage.resolve(), overrides=list(set_), log=typer.echo)
    except ConfigError as err:
        fail(str(err))
    publish("tune", result, markdown_table(result), out, readme, log=typer.echo)


@bench_app.command("trials")
def bench_trials(
    parts: str = typer.Option("startup,large", help="startup (trials in their process vs nested), large (a "
                                                    "200-trial ASHA search), comma-separated."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Extra override for every trial (the claims are then "
                                                            "not decided)."),
    storage: Path = typer.Option(Path("searches"), help="Where the searches go."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for trials.json and trials.md."),
) -> None:
    """What a Tune trial costs outside its epochs: start-up of in-process and nested trials, and
    a 200-trial search's wall time against its trials' epoch time."""
    from genray.bench.trials import markdown_table, run

    chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
    if not chosen or set(chosen) - {"startup", "large"}:
        fail(f"--parts takes startup and/or large, got {parts!r}")
    result = run(chosen, storage.resolve(), list(set_), previous=previous_results(out, "trials"), log=typer.echo)
    publish("trials", result, markdown_table(result), out, None, log=typer.echo)


@bench_app.command("data")
def bench_data(
    quick: bool = typer.Option(False, "--quick", help="Tiny sets and one round: a smoke test, not figures."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for data.json and data.md."),
    storage: Path = typer.Option(Path("runs"), help="Where the bench's Ray Train runs go."),
    work: Optional[Path] = typer.Option(None, help="Where the bench writes its image files (default: a "
                                                   "temporary folder, removed afterwards)."),
    readme: Optional[Path] = typer.Option(None, help="Also replace the table between <!-- bench:data --> markers."),
) -> None:
    """Ray Data ingest of 64x64 RGB image files: images/s per CPU, streamed vs in-memory step time, peak memory."""
    import shutil
    import tempfile

    from genray.bench.data import markdown_table, run

    folder = work or Path(tempfile.mkdtemp(prefix="genray-bench-data-"))
    try:
        result = run(storage.resolve(), folder.resolve(), quick=quick, log=typer.echo)
    finally:
        if work is None:
            shutil.rmtree(folder, ignore_errors=True)
    publish("data", result, markdown_table(result), out, readme, log=typer.echo)


@bench_app.command("gnn")
def bench_gnn(
    quick: bool = typer.Option(False, "--quick", help="Tiny budgets, all runs at once: a smoke test, not figures."),
    parts: str = typer.Option("gcn,mpnn", help="Parts to run (comma-separated); a part not run is kept from the "
                                               "previous gnn.json in --out."),
    mpnn_seeds: Optional[str] = typer.Option(
        None, help="Seeds (train.seed) of the MPNN part, comma-separated, among the claims' 0,1,2 (default: all "
                   "three; 0 with --quick). Stored runs of the other seeds at the same budget are kept; the "
                   "throughput rows are measured beside seed 0."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for gnn.json and gnn.md."),
    storage: Path = typer.Option(Path("runs"), help="Where the bench's Ray Train runs go."),
    readme: Optional[Path] = typer.Option(None, help="Also replace the table between <!-- bench:gnn --> markers."),
) -> None:
    """GCN test accuracy over seeds (SBM, KarateClub); MPNN test MAE against baselines over seeds; 1- and 2-worker
    throughput."""
    from genray.bench.gnn import PARTS, check_mpnn_seeds, markdown_table, run

    chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
    if not chosen or set(chosen) - set(PARTS):
        fail(f"--parts takes {' and '.join(PARTS)} (comma-separated), got {parts!r}")
    seeds = None
    if mpnn_seeds is not None:
        if "mpnn" not in chosen:
            fail(f"--mpnn-seeds chooses seeds of the mpnn part, which --parts {parts!r} leaves out")
        try:
            values = [int(v) for v in mpnn_seeds.split(",") if v.strip()]
        except ValueError:
            fail(f"--mpnn-seeds takes comma-separated integers, got {mpnn_seeds!r}")
        try:
            seeds = check_mpnn_seeds(values)
        except ValueError as err:
            fail(f"--mpnn-seeds: {err}")
    result = run(storage.resolve(), quick=quick, parts=chosen, previous=previous_results(out, "gnn"), mpnn_seeds=seeds)
    publish("gnn", result, markdown_table(result), out, readme, log=typer.echo)


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
    publish("serve", result, markdown_table(result), out, readme, log=typer.echo)


@bench_app.command("cluster")
def bench_cluster(
    quick: bool = typer.Option(False, "--quick", help="One round of short runs: a smoke test, not figures."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for cluster.json and cluster.md."),
    storage: Path = typer.Option(Path("runs/bench-cluster"), help="Where the runs (and the drivers' logs) go."),
    readme: Optional[Path] = typer.Option(None, help="Also replace the table between <!-- bench:cluster --> markers."),
) -> None:
    """Lose a node under training on a simulated multi-node cluster: seconds back to a training step,
    epochs of work lost, for a fixed and an elastic run."""
    from genray.bench.cluster import markdown_table, run

    result = run(storage.resolve(), quick=quick, log=typer.echo)
    publish("cluster", result, markdown_table(result), out, readme, log=typer.echo)


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
    result = run(family=family, epochs=epochs, batch_size=batch_size, train_rounds=train_rounds, overrides=list(set_),
                 concurrencies=levels, requests=requests_, serve_rounds=serve_rounds, replicas=replica_counts, parts=chosen,
                 storage=storage.resolve(), previous=previous_results(out, "perf"), log=typer.echo)
    publish("perf", result, markdown_table(result), out, readme, log=typer.echo)


@bench_app.command("gpu")
def bench_gpu(
    device: Optional[str] = typer.Option(None, help="cuda (the default when torch sees a GPU) or cpu."),
    quick: bool = typer.Option(False, "--quick", help="Toy sizes (about a minute on a CPU): every row, no claim."),
    parts: str = typer.Option("training,serving,heat", help="Which parts to run (comma-separated)."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for gpu.json and gpu.md."),
) -> None:
    """One GPU: training samples/s (fp32, bf16) against plain PyTorch, Serve against a plain server,
    the heat solver against the CPU; at most 8 minutes."""
    from genray.bench.gpu import PARTS, markdown_table, run

    chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
    if not chosen or set(chosen) - set(PARTS):
        fail(f"--parts takes {', '.join(PARTS)} (comma-separated); got {parts!r}")
    try:
        result = run(device=device, quick=quick, parts=chosen, log=typer.echo)
    except ValueError as err:
        fail(str(err))
    publish("gpu", result, markdown_table(result), out, None, log=typer.echo)


@bench_app.command("compile")
def bench_compile(
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for compile.json and compile.md."),
) -> None:
    """What train.compile buys: the VAE and the GAN trained eager and compiled, 3 seeds."""
    from genray.bench.compile import markdown_table, run

    result = run(device=device, log=typer.echo)
    publish("compile", result, markdown_table(result), out, None, log=typer.echo)


@bench_app.command("dashboard")
def bench_dashboard(
    quick: bool = typer.Option(False, "--quick", help="Shorter runs (a smoke test)."),
    port: int = typer.Option(8766, help="Loopback port for Serve's HTTP proxy."),
    prometheus: Optional[str] = typer.Option(None, help="The Prometheus binary (default: `prometheus` on PATH)."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for dashboard.json, .md and .png."),
    redraw: bool = typer.Option(False, "--redraw", help="No run: draw dashboard.png again from <out>/dashboard.json."),
) -> None:
    """The Grafana dashboard (cluster/grafana/genray.json) drawn from a real run: apps under traffic,
    a training run, a search, every panel's query answered by a real Prometheus."""
    from genray.bench.dashboard import DashboardError, figure_of, markdown_table, run

    if redraw:
        result = previous_results(out, "dashboard")
        if result is None:
            fail(f"--redraw draws {out / 'dashboard.json'}, which is not there: run the bench first")
        figure = figure_of(result)
    else:
        try:
            result, figure = run(quick=quick, port=port, prometheus=prometheus, log=typer.echo)
        except DashboardError as err:
            fail(str(err))
    out.mkdir(parents=True, exist_ok=True)
    figure.savefig(out / "dashboard.png", dpi=80, facecolor=figure.get_facecolor())
    publish("dashboard", result, markdown_table(result), out, None, log=typer.echo)
    typer.echo(f"wrote {out / 'dashboard.png'}")
