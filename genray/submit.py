"""Job specs and `genray submit`: run a jobs/ entrypoint on a Ray cluster through its job API.

A job spec (jobs/*.yaml) says what to train and where: family, the run config's sections,
workers, GPUs per worker, run storage and, optionally, where to export the best model.
Storage and export must outlive the job (check_job_storage): s3:// or an absolute path, never
a path inside Ray's copy of the working folder, which Ray deletes with the session.
`genray submit SPEC --address URL` uploads the working folder (as `ray job submit
--working-dir .` does, skipping what .gitignore lists) and runs
`python jobs/<entrypoint> SPEC` there; the same command works with Ray's own CLI.

Ray's token authentication: the token is read as Ray reads it (RAY_AUTH_TOKEN, else the file
named by RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token) and sent as a bearer token.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genray.config import ConfigError, RunConfig, apply_override, build_config, format_errors, parse_override
from genray.storage import Location

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TOKEN_SOURCES = "RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# Ray's job supervisor gives a job's entrypoint its runtime_env in this variable (and only a
# job's: ray/_private/worker.py reads it to merge the job's runtime_env into ray.init's).
RAY_JOB_CONFIG = "RAY_JOB_CONFIG_JSON_ENV_VAR"
OUTLIVES_THE_JOB = "use s3://bucket/prefix or an absolute path every node of the cluster mounts (e.g. /mnt/shared/{})"


class JobAPIError(RuntimeError):
    """The cluster's job API could not be reached, refused the token, or refused the request."""


class JobSpec(BaseModel):
    """One job: a training run on the cluster, and optionally the export of its best model."""

    model_config = ConfigDict(extra="forbid")

    family: str
    entrypoint: str = "train.py"  # the script under jobs/ that runs this spec
    name: Optional[str] = None  # the run name; <storage>/<name> is the run folder
    config: dict[str, Any] = Field(default_factory=dict)  # model / data / train sections
    workers: int = Field(2, ge=1, le=4096)  # Ray Train workers (DDP processes)
    # Ray Train runs one worker process per GPU: more GPUs means more workers, not more per worker.
    gpus_per_worker: int = Field(0, ge=0, le=1)
    cpus_per_worker: float = Field(1.0, gt=0.0)
    # s3://bucket/prefix or an absolute path, shared on a multi-node cluster. Required: no default
    # outlives a job on every cluster (a relative one lands in Ray's copy of the working folder,
    # a /tmp one on whichever node ran each worker), so a spec says where its checkpoints go.
    storage: str
    resume: bool = False  # continue <storage>/<name> when it exists (a re-submitted job picks up)
    export: Optional[str] = None  # the model (<store>/<name>, genray.registry) the best checkpoint is a new version of
    runtime_env: dict[str, Any] = Field(default_factory=dict)  # e.g. env_vars: {AWS_ENDPOINT_URL: ...}

    def run_config(self) -> RunConfig:
        """The RunConfig the job trains: `config` plus the spec's own settings."""
        tree = {section: dict(value) for section, value in self.config.items()}
        unknown = set(tree) - {"model", "data", "train"}
        if unknown:
            raise ConfigError(f"config: unknown sections {sorted(unknown)}; expected model, data, train")
        train = tree.setdefault("train", {})
        train.update(workers=self.workers, use_gpu=self.gpus_per_worker > 0, cpus_per_worker=self.cpus_per_worker)
        overrides = [f"storage={self.storage}"] + ([f"name={self.name}"] if self.name else [])
        return build_config(self.family, base=tree, overrides=overrides)


def load_spec(path: str | Path, overrides: list[str] = ()) -> JobSpec:
    """Read a job spec, apply `key.path=value` overrides, and validate it and its run config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"job spec not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(tree).__name__}")
    for text in overrides:
        apply_override(tree, *parse_override(text))
    if "storage" not in tree:  # pydantic's "Field required" would not say what to give
        raise ConfigError(f"{path}: storage is required, where the job's checkpoints go; {OUTLIVES_THE_JOB.format('runs')}")
    try:
        spec = JobSpec.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"{path}: {format_errors(err)}") from None
    check_job_storage(spec)  # here, not after training: an export that would vanish fails first
    spec.run_config()  # a bad model/data/train key fails here, before anything is uploaded
    return spec


def job_working_copy() -> Optional[Path]:
    """The folder this process runs in when it is a Ray job's entrypoint in Ray's unpacked copy
    of the job's working_dir (under the session's runtime_resources, deleted with the session);
    None outside a job, and in a job without a copy (no working_dir, or a local:// one, which
    runs in the folder itself)."""
    injected = os.environ.get(RAY_JOB_CONFIG)
    if not injected:
        return None
    working_dir = (json.loads(injected).get("runtime_env") or {}).get("working_dir")
    if not working_dir or working_dir.startswith("local://"):
        return None
    return Path.cwd().resolve()


def check_job_storage(spec: JobSpec) -> None:
    """Refuse a storage or export that would not outlive the job: a relative path (it resolves
    in Ray's copy of the working folder) or, inside a job, an absolute one within that copy."""
    copy = job_working_copy()
    for key, where, lost, example in (("storage", spec.storage, "the checkpoints", "runs"),
                                      ("export", spec.export, "the exported model", "models")):
        if where is None:
            continue
        try:
            location = Location(where)
        except ValueError as err:  # s3:// without a bucket
            raise ConfigError(f"{key}: {err}") from None
        if location.on_s3:
            continue
        path = location.path.expanduser()  # ~ is the home of the node that runs the job
        if not path.is_absolute():
            problem = ("is a relative path: a job runs in Ray's copy of the working directory, "
                       "which Ray deletes with the session")
        elif copy is not None and path.resolve().is_relative_to(copy):
            problem = (f"lies inside this job's copy of the working directory ({copy}), "
                       "which Ray deletes with the session")
        else:
            continue
        raise ConfigError(f"{key} {where!r} {problem}, so {lost} would be lost; {OUTLIVES_THE_JOB.format(example)}")


def entrypoint_of(spec: JobSpec, spec_path: str, overrides: list[str] = ()) -> str:
    """The shell command the job runs, relative to the uploaded working folder."""
    args = ["python", f"jobs/{spec.entrypoint}", spec_path]
    for text in overrides:
        args += ["--set", text]
    return shlex.join(args)


# --- the cluster's job API -------------------------------------------------------------------

def read_token() -> Optional[str]:
    """Ray's token, looked up in Ray's order; None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        text = Path(path).expanduser().read_text().strip()  # a named file that is missing is an error
        if not text:
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH: {path} is empty")
        return text
    default = Path.home() / ".ray" / "auth_token"
    return default.read_text().strip() if default.is_file() else None


def client(address: Optional[str] = None, token: Optional[str] = None):
    """A JobSubmissionClient for `address` (default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS if it is
    an http(s) URL, else the local dashboard), authenticated with `token` (default: read_token())."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not address and os.environ.get("RAY_ADDRESS", "").startswith("http"):
        address = os.environ["RAY_ADDRESS"]
    address = address or DEFAULT_ADDRESS
    token = token if token is not None else read_token()
    # An explicit header: Ray adds its own only when none is given, from its process-wide cache.
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as err:
        said = str(err).strip().splitlines()[0]
        which = "no token was sent" if not token else "the token was refused"
        raise JobAPIError(f"{address}: {which} ({said}); genray reads it from {TOKEN_SOURCES}") from None
    except ConnectionError as err:
        raise JobAPIError(f"{err} Is the dashboard reachable there (ray dashboard CLUSTER.yaml, kubectl port-forward)?") from None


def submit(
    spec_path: str | Path,
    *,
    address: Optional[str] = None,
    working_dir: str | Path = ".",
    overrides: list[str] = (),
    submission_id: Optional[str] = None,
    token: Optional[str] = None,
) -> str:
    """Validate the spec here, then submit its entrypoint; returns the job's submission id."""
    working_dir = Path(working_dir).resolve()
    spec_path = Path(spec_path).resolve()
    if not spec_path.is_relative_to(working_dir):
        raise ConfigError(f"the job spec {spec_path} must be inside the working folder {working_dir} (it is uploaded with it)")
    spec = load_spec(spec_path, overrides)
    if not (working_dir / "jobs" / spec.entrypoint).is_file():
        raise ConfigError(f"entrypoint: no jobs/{spec.entrypoint} in {working_dir}")
    runtime_env = {**spec.runtime_env, "working_dir": str(working_dir)}
    relative = spec_path.relative_to(working_dir).as_posix()
    return client(address, token).submit_job(
        entrypoint=entrypoint_of(spec, relative, overrides),
        runtime_env=runtime_env,
        submission_id=submission_id,
        metadata={"genray_spec": relative, "family": spec.family, **({"name": spec.name} if spec.name else {})},
    )


def follow(job_id: str, *, address: Optional[str] = None, token: Optional[str] = None,
           write: Callable[[str], None] = print, poll_s: float = 1.0, timeout_s: Optional[float] = None) -> str:
    """Print a job's log as it grows until the job ends; returns its final status."""
    jobs = client(address, token)
    shown = 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = str(jobs.get_job_status(job_id).value)
        logs = jobs.get_job_logs(job_id)
        if len(logs) > shown:
            write(logs[shown:].rstrip("\n"))
            shown = len(logs)
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout_s} s")
        time.sleep(poll_s)


def wait_for(job_id: str, wanted: set[str], *, address: Optional[str] = None, token: Optional[str] = None,
             timeout_s: float = 120.0) -> str:
    """Poll until the job's status is one of `wanted` (or terminal); returns it."""
    jobs = client(address, token)
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(jobs.get_job_status(job_id).value)
        if status in wanted or status in TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout_s} s, waiting for {sorted(wanted)}")
        time.sleep(0.5)
