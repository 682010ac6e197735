"""Job entrypoint: train (and optionally export) what a job spec describes, on the cluster
this job runs on.

    python jobs/train.py jobs/vae-gpu.yaml [--set workers=2 --set config.train.epochs=5]

It is what `genray submit SPEC` and `ray job submit --working-dir . -- python jobs/train.py SPEC`
run on the head node; run locally, it starts an embedded Ray.
"""

from __future__ import annotations

import argparse
import sys

import ray

from genray.config import ConfigError
from genray.families import get_family
from genray.submit import load_spec
from genray.runs import RunDir, load_run_config
from genray.train import fit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="job spec YAML (jobs/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override a spec key, e.g. --set config.train.epochs=5 (repeatable)")
    args = parser.parse_args(argv)
    try:
        # Also refuses a storage or export that would vanish with this job's working folder copy.
        spec = load_spec(args.spec, args.overrides)
        cfg = spec.run_config()
        resume = bool(spec.resume and cfg.name and RunDir(cfg.storage, cfg.name).exists())
        if resume:
            # The stored run keeps its model and data; the spec may change how it trains.
            stored = load_run_config(cfg.name, cfg.storage)
            cfg = stored.model_copy(update={"train": cfg.train})
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    ray.init()  # inside a Ray job: the cluster that runs it
    print(f"cluster: {ray.cluster_resources()}", flush=True)
    print(f"{'resuming' if resume else 'starting'} run {cfg.name or '(new)'} in {cfg.storage}: "
          f"{cfg.family}, {cfg.train.workers} workers, GPUs: {spec.gpus_per_worker}", flush=True)
    try:
        # Refuses storage on this node's disk when the cluster has other nodes.
        summary = fit(cfg, resume=resume)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    metric = get_family(cfg.family).metric
    print(f"run:  {summary.run_uri}")
    print(f"best: {summary.best_checkpoint}")
    print(f"{metric}: {summary.metrics.get(metric, float('nan')):.4f} (last epoch); {summary.wall_s:.1f} s")
    if spec.export:
        from genray.registry import publish

        model = publish(summary.run_uri, spec.export)
        print(f"exported: {model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
