"""Commands for jobs on a Ray cluster: submit a job spec; list, follow and stop jobs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from genray.cli.errors import fail
from genray.config import ConfigError

ADDRESS_HELP = "Dashboard URL (default: $RAY_API_SERVER_ADDRESS or http://127.0.0.1:8265)."


def submit(
    spec: Path = typer.Argument(..., help="Job spec YAML under the working folder, e.g. jobs/vae-gpu.yaml."),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
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


job_app = typer.Typer(help="Jobs on a Ray cluster: list, status, logs, stop (see genray submit).", no_args_is_help=True)


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
    jobs = job_api(address)  # outside the try: its own refusal is an Exit, itself a RuntimeError
    try:
        info = jobs.get_job_info(job_id)
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
    jobs = job_api(address)
    try:
        stopped = jobs.stop_job(job_id)
    except RuntimeError as err:
        fail(str(err))
    typer.echo(f"job {job_id}: {'stop requested' if stopped else 'was not running'}")
