"""The baseline `genray bench perf` measures Serve against: the same GAN and VAE checkpoints behind
a plain FastAPI app in one uvicorn process, with no Ray and no batching (every request runs its
own forward pass). Same request models, same math, same encoders as genray's deployments, so the
difference is the serving stack alone.

    python -m genray.bench.plain_server --gan models/gan --vae models/vae --port 8100
"""

from __future__ import annotations

import argparse

import torch
from fastapi import FastAPI

from genray.checkpoint import load_family
from genray.deploy.common import BadRequest, DecodeRequest, SampleRequest, bad_request, codes_to_tensor, encode_images


def build(gan_path: str, vae_path: str, threads: int = 1, device: str = "cpu") -> FastAPI:
    torch.set_num_threads(threads)
    gan, _ = load_family(gan_path, device)
    vae, _ = load_family(vae_path, device)
    api = FastAPI(title="plain baseline")  # no genray middleware: the plain stack
    api.add_exception_handler(BadRequest, bad_request)  # a wrong-sized code is a 422, as in genray

    @api.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    # `-> dict`, as genray's endpoints are annotated, has FastAPI serialise a JSON answer through
    # pydantic; unannotated, its jsonable_encoder took 9x as long on 16 images as JSON lists.
    @api.post("/gan/sample")
    def sample(req: SampleRequest) -> dict:
        with torch.inference_mode():
            images = gan.decode(gan.prior_codes(req.n, req.seed))
        return encode_images(images, req.format)

    @api.post("/vae/decode")
    def decode(req: DecodeRequest) -> dict:
        z = codes_to_tensor(req.z, vae.cfg.latent_dim)
        with torch.inference_mode():
            images = vae.decode(z)
        return encode_images(images, req.format)

    return api


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gan", required=True)
    parser.add_argument("--vae", required=True)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu", help="where the models run: cpu or cuda")
    args = parser.parse_args()
    uvicorn.run(build(args.gan, args.vae, args.threads, args.device), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
