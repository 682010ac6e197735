"""The `genray` command: the typer app, built from thin commands that read their options, call
genray's modules and print. run.py: train, export, demo, tune, heat; serve.py: serve, query,
picture; jobs.py: submit and `genray job`; bench.py: `genray bench`; models.py: `genray models`."""

import typer

from genray.cli import bench, jobs, models, run, serve

app = typer.Typer(
    help="Train, search and serve classic generative and scientific models on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# In this order in `genray --help`.
app.command()(run.train)
app.command()(run.export)
app.command()(models.rollout)
app.command()(serve.serve)
app.command()(run.demo)
app.command()(run.tune)
app.command()(run.heat)
app.command()(jobs.submit)
app.command()(serve.query)
app.command()(serve.picture)
app.add_typer(jobs.job_app, name="job")
app.add_typer(bench.bench_app, name="bench")
app.add_typer(models.models_app, name="models")
