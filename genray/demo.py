"""`genray demo`: train a VAE on an embedded Ray, export it, serve it, and query it over HTTP."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import requests


def run_demo(*, workers: int, epochs: int, out: Path, storage: str, store: Path, port: int,
             keep_serving: bool = False) -> dict:
    import ray
    from ray import serve

    from genray.config import build_config
    from genray.deploy import build_app
    from genray.registry import publish
    from genray.train import fit, start_local_ray

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    name = f"vae-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = build_config("vae", overrides=[f"train.workers={workers}", f"train.epochs={epochs}",
                                         f"name={name}", f"storage={storage}"])
    started_ray = not ray.is_initialized()
    if started_ray:
        start_local_ray()
    try:
        print(f"== 1/4 training {cfg.family} with {workers} Ray Train workers for {epochs} epochs")
        summary = fit(cfg)
        print(f"== 2/4 exporting the best checkpoint to {store} as its next version")
        model = publish(summary.run, store)
        print(f"== 3/4 serving {model} on http://127.0.0.1:{port}/vae")
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"model": str(model)}), name="vae", route_prefix="/vae")
        url = f"http://127.0.0.1:{port}/vae"
        print("== 4/4 querying it over HTTP")
        samples = requests.post(f"{url}/sample", json={"n": 64, "seed": 0, "format": "grid"}, timeout=60)
        samples.raise_for_status()
        samples_png = out / "samples.png"
        samples_png.write_bytes(base64.b64decode(samples.json()["image"]))
        bad = requests.post(f"{url}/sample", json={"n": 0}, timeout=60)
        wall = time.perf_counter() - t0
        metrics = summary.metrics
        print()
        print(f"run folder:       {summary.run_dir}")
        print(f"tensorboard:      tensorboard --logdir {summary.run.tensorboard}")
        print(f"exported model:   {model} ({model.folder})")
        print(f"samples (PNG):    {samples_png.resolve()}")
        print(f"val -ELBO:        {metrics['val_neg_elbo']:.2f} nats/image after {epochs} epochs "
              f"(recon {metrics['val_recon']:.2f} + KL {metrics['val_kl']:.2f})")
        if "sample_fid" in metrics:
            print(f"sample quality:   classifier-FID {metrics['sample_fid']:.1f}, classifier-IS "
                  f"{metrics['sample_is']:.2f}, {metrics['sample_classes_covered']:.0f}/10 classes covered")
        print(f"bad request:      POST /sample {{\"n\": 0}} -> {bad.status_code} {bad.json()['error']}")
        print(f"training time:    {summary.wall_s:.1f} s")
        print(f"demo wall time:   {wall:.1f} s")
        if keep_serving:
            print(f"serving at {url} (Ctrl-C stops)")
            while True:
                time.sleep(3600)
        return {"wall_s": wall, "val_neg_elbo": metrics["val_neg_elbo"], "samples_png": str(samples_png)}
    finally:
        if serve_is_running():
            serve.shutdown()
        if started_ray:
            ray.shutdown()


def serve_is_running() -> bool:
    from ray import serve

    try:
        serve.status()
        return True
    except Exception:
        return False
