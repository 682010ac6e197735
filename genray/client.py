"""Python client for genray's deployments: one typed method per endpoint, no hand-written curl.

    >>> from genray.client import Client
    >>> vae = Client("http://127.0.0.1:8000/vae")            # the app's route prefix
    >>> images = vae.sample(n=8, seed=0)                       # (8, 28, 28) float32 in [0, 1]
    >>> vae.sample(n=8, seed=0, output="pil")[0].save("0.png")
    >>> Client("http://127.0.0.1:8000/shapes").sample(n=8, label="circle").shape   # (8, 3, 64, 64)
    >>> Client("http://127.0.0.1:8000/heat").solve_heat(n=32, t_end=0.05).shape   # (33, 33)

A Client talks to one application (its URL ends in the route prefix); calling a method the app
does not have is the server's 404, raised as an APIError like any other. Images go up as PNGs
(8 bits a channel, the same as an image file) and come back as numpy arrays, torch tensors or
PIL images, in the model's shape (info()["image_shape"]): channels first, (B, C, S, S), except
that a grey model's numpy images are (B, S, S). A 503 (Serve sheds load or the app is still starting), a
refused or dropped connection, and a 500, 502 or 504 that a proxy wrote rather than the app (a
request lost with its replica's node) are retried with backoff: every endpoint is a pure function
of its request, so a retry is safe.
"""

from __future__ import annotations

import base64
import io
import os
import time
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence

import numpy as np
import requests

Output = Literal["numpy", "torch", "pil"]
RETRY_STATUS = (503,)
# A proxy's answers for a request it could not get answered, never the app's: genray's apps answer
# each error of their own as JSON (genray.deploy.common), while Serve's proxy (its own, or HAProxy in
# throughput mode, which writes its 502, 503 and 504 so) answers a request whose replica died under
# it, its node lost, with a plain-text 500, and a load balancer in front with a 502 or 504.
PROXY_STATUS = (500, 502, 504)
# An image family's capability (genray.families.base.CAPABILITIES) -> the Client methods that
# call its endpoint; which ones a served family has is genray.deploy.client_methods(family).
CAPABILITY_METHODS: dict[str, tuple[str, ...]] = {
    "sample": ("sample",),
    "sample_digit": ("sample",),
    "encode": ("encode", "encode_distribution"),
    "decode": ("decode",),
    "reconstruct": ("reconstruct",),
    "denoise": ("denoise",),
    "interpolate": ("interpolate",),
    "style_transfer": ("style_transfer",),
}


class APIError(Exception):
    """A request the server refused or could not answer: `status` (None when no answer came),
    the server's own `message` and its per-field `errors`."""

    def __init__(self, message: str, status: Optional[int] = None, errors: Optional[list] = None, url: str = ""):
        super().__init__(f"{status} from {url}: {message}" if status else f"{url}: {message}")
        self.message, self.status, self.errors, self.url = message, status, errors or [], url


class RequestTimeout(APIError, TimeoutError):
    """No answer within the client's timeout."""


@dataclass
class Extrapolation:
    """A latent ODE's answer: the trajectory at the query times, q(z0), and the z0 it started from
    (z0_mean, or the refined code when refine_steps was asked)."""

    query_times: np.ndarray  # (m,)
    mean: np.ndarray  # (m, obs_dim)
    z0_mean: np.ndarray  # (latent,)
    z0_std: np.ndarray  # (latent,)
    z0: np.ndarray  # (latent,)


@dataclass
class NodePrediction:
    """A GCN's answer for one graph: a class and the class probabilities of every node."""

    classes: np.ndarray  # (N,) int
    probabilities: np.ndarray  # (N, C)


# --- images in and out ----------------------------------------------------------------------


def png_base64(image: Any) -> str:
    """One image (numpy / torch (H, W), (1, H, W) or (3, H, W) in [0, 1], a PIL image, PNG or
    JPEG bytes or a path) -> base64, the form every image-taking endpoint accepts."""
    from PIL import Image

    if isinstance(image, (bytes, bytearray)):
        return base64.b64encode(bytes(image)).decode("ascii")
    if isinstance(image, (str, os.PathLike)):
        if os.path.isfile(image):
            with open(image, "rb") as f:
                return base64.b64encode(f.read()).decode("ascii")
        return str(image)  # already base64; the server says so if it is not
    if not isinstance(image, Image.Image):
        array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image, dtype=np.float32)
        if array.ndim == 3 and array.shape[0] in (1, 3):
            array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)  # PIL's (H, W, 3)
        elif array.ndim != 2:
            raise ValueError(f"an image must be (H, W), (1, H, W) or (3, H, W) values in [0, 1], got shape "
                             f"{array.shape}")
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise ValueError("image values must be finite and in [0, 1]")
        image = Image.fromarray((array * 255).round().astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def many_png_base64(images: Any) -> list[str]:
    """A batch (B, H, W) / (B, C, H, W) array or tensor, or a sequence of single images."""
    if hasattr(images, "ndim") and images.ndim in (3, 4):
        return [png_base64(img) for img in images]
    if isinstance(images, (str, bytes)) or hasattr(images, "mode"):
        raise ValueError("images must be a batch: a (B, H, W) array or a list of images")
    return [png_base64(img) for img in images]


def decode_png(data: str) -> "Any":
    """A base64 PNG -> PIL image."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def as_output(pngs: Sequence[str], output: Output):
    """Base64 PNGs -> float32 in [0, 1]: numpy (B, H, W) grey or (B, 3, H, W) colour, torch
    (B, C, H, W); or PIL images."""
    if output not in ("numpy", "torch", "pil"):
        raise ValueError(f"output must be 'numpy', 'torch' or 'pil', got {output!r}")
    images = [decode_png(p) for p in pngs]
    if output == "pil":
        return images
    arrays = [np.asarray(img.convert("L") if img.mode in ("L", "LA", "I") else img.convert("RGB"),
                         dtype=np.float32) / 255.0 for img in images]
    batch = np.stack(arrays)  # (B, H, W) grey or (B, H, W, 3) colour
    if batch.ndim == 4:
        batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))  # (B, 3, H, W), the server's layout
    if output == "numpy":
        return batch
    import torch

    t = torch.from_numpy(batch)
    return t.unsqueeze(1) if t.dim() == 3 else t


def response_images(answer: dict) -> list[str]:
    """Every base64 PNG in an answer: {"images": [...]}, {"image": ...} (grid, heat, inpaint,
    portrait), or nested one level ({"noisy": {...}, "denoised": {...}})."""
    if answer.get("format") == "png" and isinstance(answer.get("images"), list):
        return answer["images"]
    if isinstance(answer.get("image"), str):
        return [answer["image"]]
    found = []
    for value in answer.values():
        if isinstance(value, dict):
            found += response_images(value)
    return found


def _class(value) -> int | str:
    """A class as JSON: its name as it is, its index (a Python, numpy or torch integer) as an int."""
    return value if isinstance(value, str) else int(value)


def _plain(x) -> Any:
    """numpy / torch -> nested lists for JSON; anything else unchanged."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return x.tolist() if isinstance(x, np.ndarray) else x


# --- the client -----------------------------------------------------------------------------


class Client:
    """One genray application at `url`, e.g. http://127.0.0.1:8000/vae.

    api_key: sent as `Authorization: Bearer <key>` (what genray.deploy.guard reads).
    model: for an app that serves many models, the one to query (NAME, NAME@N or NAME@ALIAS;
    sent in Serve's serve_multiplexed_model_id header). `version` is the model version that
    answered the last request (its x-genray-model-version header), e.g. "vae@3".
    timeout: seconds for one request. retries: further tries after a 503, a proxy's 5xx or a
    refused connection, `backoff` * 2^i seconds apart (or the server's Retry-After). `retried` counts
    the tries this client has made after a request's first, over all its requests."""

    def __init__(self, url: str, api_key: Optional[str] = None, *, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 0.5, session: Optional[requests.Session] = None, model: Optional[str] = None):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError(f"need timeout > 0, retries >= 0, backoff >= 0; got {timeout}, {retries}, {backoff}")
        self.url = url.rstrip("/")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.retried = 0
        self.session = session or requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        if model:
            self.session.headers["serve_multiplexed_model_id"] = model
        self.version: Optional[str] = None

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # --- raw HTTP: every typed method ends here --------------------------------------------
    def request(self, method: str, path: str, body: Optional[dict] = None) -> dict:
        """Send one request, retrying 503s, a proxy's 5xx and refused connections; the JSON answer,
        or APIError carrying the server's `error` message."""
        url = f"{self.url}/{path.lstrip('/')}" if path.strip("/") else self.url + "/"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self.session.request(method, url, json=body, timeout=self.timeout)
            except requests.Timeout:
                raise RequestTimeout(f"no answer within {self.timeout:g} s", url=url) from None
            except requests.ConnectionError as err:
                if last:
                    raise APIError(f"cannot connect ({type(err).__name__}); is the app deployed?", url=url) from None
                self.retried += 1
                time.sleep(self.backoff * 2**attempt)
                continue
            if self._transient(response) and not last:
                self.retried += 1
                time.sleep(self._retry_after(response, attempt))
                continue
            self.version = response.headers.get("x-genray-model-version", self.version)
            return self._answer(response, url)
        raise AssertionError("unreachable")

    def post(self, path: str, body: Optional[dict] = None) -> dict:
        return self.request("POST", path, body or {})

    @staticmethod
    def _transient(response: requests.Response) -> bool:
        """A 503, or a 500, 502 or 504 that a proxy wrote (not the app's JSON)."""
        if response.status_code in RETRY_STATUS:
            return True
        return response.status_code in PROXY_STATUS and "json" not in response.headers.get("content-type", "")

    def _retry_after(self, response: requests.Response, attempt: int) -> float:
        value = response.headers.get("retry-after", "")
        return min(float(value), 30.0) if value.replace(".", "", 1).isdigit() else self.backoff * 2**attempt

    @staticmethod
    def _answer(response: requests.Response, url: str) -> dict:
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.ok and isinstance(payload, dict):
            return payload
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            raise APIError(payload["error"], response.status_code, payload.get("errors"), url)
        text = response.text.strip().replace("\n", " ")[:300] or response.reason
        raise APIError(text if not response.ok else f"answer is not a JSON object: {text}", response.status_code,
                       url=url)

    # --- every app --------------------------------------------------------------------------
    def info(self) -> dict:
        """The app's family, checkpoint epoch, metrics, limits and endpoints (GET /)."""
        return self.request("GET", "/")

    def healthz(self) -> bool:
        return bool(self.request("GET", "/healthz").get("ok"))

    # --- image families, by capability (CAPABILITY_METHODS) -------------------------------------
    def sample(self, n: int = 16, seed: Optional[int] = None, *, label: Optional[int | str] = None,
               digit: Optional[int] = None, output: Output = "numpy"):
        """n images from the prior (sample), or of one class (sample_digit): `label`, its index or
        its name (info()["labels"]), or `digit`, its index."""
        body = {"n": n, "seed": seed, "format": "png"}
        if label is not None:
            body["label"] = _class(label)
        if digit is not None:
            body["digit"] = digit
        return as_output(self.post("/sample", body)["images"], output)

    def encode(self, images) -> np.ndarray:
        """Codes (B, latent) of images (encode): the posterior mean of q(z | x), or a deterministic z."""
        answer = self.post("/encode", {"images": many_png_base64(images)})
        return np.asarray(answer["mu"] if "mu" in answer else answer["z"], dtype=np.float32)

    def encode_distribution(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(mu, logvar), each (B, latent), of q(z | x) (encode, where the encoder gives a distribution)."""
        answer = self.post("/encode", {"images": many_png_base64(images)})
        if "logvar" not in answer:
            raise APIError("this model's encoder is deterministic (no logvar); use encode()", url=self.url)
        return np.asarray(answer["mu"], dtype=np.float32), np.asarray(answer["logvar"], dtype=np.float32)

    def decode(self, z, *, output: Output = "numpy"):
        """Images decoded from codes z (B, latent) (decode)."""
        return as_output(self.post("/decode", {"z": _plain(z), "format": "png"})["images"], output)

    def interpolate(self, a, b, steps: int = 8, *, output: Output = "numpy"):
        """`steps` images decoded along the line between the codes of images a and b (interpolate)."""
        body = {"a": png_base64(a), "b": png_base64(b), "steps": steps, "format": "png"}
        return as_output(self.post("/interpolate", body)["images"], output)

    def style_transfer(self, images, labels: Sequence[int | str], digit: Optional[int | str] = None,
                       digits: Optional[Sequence[int | str]] = None, *, output: Output = "numpy"):
        """Each image's style drawn as class `digit` (or image i as digits[i]) (style_transfer);
        labels are the classes the images show. A class is its index or its name."""
        body = {"images": many_png_base64(images), "labels": [_class(v) for v in labels], "format": "png"}
        if digit is not None:
            body["digit"] = _class(digit)
        if digits is not None:
            body["digits"] = [_class(v) for v in digits]
        return as_output(self.post("/style_transfer", body)["images"], output)

    def reconstruct(self, images, *, output: Output = "numpy"):
        """The autoencoder's reconstructions (reconstruct)."""
        return as_output(self.post("/reconstruct", {"images": many_png_base64(images), "format": "png"})["images"],
                         output)

    def denoise(self, images, *, add_noise: bool = False, seed: Optional[int] = None, noise: Optional[str] = None,
                noise_level: Optional[float] = None, output: Output = "numpy"):
        """(the network's input, its output) (denoise): clean noisy images, or corrupt them first."""
        body = {"images": many_png_base64(images), "add_noise": add_noise, "seed": seed, "noise": noise,
                "noise_level": noise_level, "format": "png"}
        answer = self.post("/denoise", body)
        return as_output(answer["noisy"]["images"], output), as_output(answer["denoised"]["images"], output)

    # --- neural ODEs ----------------------------------------------------------------------------
    def integrate(self, y0, t: Sequence[float], method: Optional[str] = None) -> np.ndarray:
        """The learned field's trajectories (T, B, 2) from states y0 (B, 2) at times t (ode)."""
        body = {"y0": _plain(y0), "t": _plain(t), "method": method}
        return np.asarray(self.post("/integrate", body)["y"], dtype=np.float32)

    def portrait(self, y0=None, t_end: float = 25.0, points: int = 500):
        """Phase portrait, learned vs true trajectories from states y0 (B, 2), as a PIL image (ode)."""
        body = {"y0": [[2.0, 0.0]] if y0 is None else _plain(y0), "t_end": t_end, "points": points}
        return decode_png(self.post("/portrait", body)["image"])

    def extrapolate(self, times: Sequence[float], values, query_times: Sequence[float],
                    refine_steps: int = 0) -> Extrapolation:
        """Encode an irregular series (times (n,), values (n, obs_dim)) and read the posterior-mean
        trajectory at query_times (latent_ode); refine_steps > 0 first fits z0 to the observations."""
        body = {"times": _plain(times), "values": _plain(values), "query_times": _plain(query_times)}
        if refine_steps:
            body["refine_steps"] = int(refine_steps)
        answer = self.post("/extrapolate", body)
        answer.setdefault("z0", answer["z0_mean"])  # a server from before refine_steps
        return Extrapolation(*(np.asarray(answer[k], dtype=np.float32)
                               for k in ("query_times", "mean", "z0_mean", "z0_std", "z0")))

    # --- heat -------------------------------------------------------------------------------
    def solve_heat(self, n: int = 64, dt: float = 1e-3, t_end: float = 0.1, omega: float = 20.0, k_in: float = 50.0,
                   k_out: float = 1.0, points: Optional[Sequence[Sequence[float]]] = None) -> np.ndarray:
        """The field u (n+1, n+1) at t_end, indexed [i1, i2]; with points, u at those (x1, x2) (heat)."""
        body = {"n": n, "dt": dt, "t_end": t_end, "omega": omega, "k_in": k_in, "k_out": k_out,
                "format": "probe" if points is not None else "json"}
        if points is not None:
            body["points"] = _plain(points)
            return np.asarray(self.post("/solve", body)["values"], dtype=np.float64)
        return np.asarray(self.post("/solve", body)["u"], dtype=np.float64)

    def heat_map(self, n: int = 64, dt: float = 1e-3, t_end: float = 0.1, omega: float = 20.0, k_in: float = 50.0,
                 k_out: float = 1.0):
        """The field at t_end drawn as a heat map with the triangle outlined, a PIL image (heat)."""
        body = {"n": n, "dt": dt, "t_end": t_end, "omega": omega, "k_in": k_in, "k_out": k_out, "format": "png"}
        return decode_png(self.post("/solve", body)["image"])

    # --- graphs -----------------------------------------------------------------------------
    def _graph(self, x, edge_index, edge_attr, undirected: bool) -> dict:
        body = {"x": _plain(x), "edge_index": _plain(edge_index), "undirected": undirected}
        if edge_attr is not None:
            body["edge_attr"] = _plain(edge_attr)
        return self.post("/predict", body)

    def predict_nodes(self, x, edge_index, *, undirected: bool = False) -> NodePrediction:
        """Node classes of one graph: x (N, F), edge_index (2, E) (gcn)."""
        answer = self._graph(x, edge_index, None, undirected)
        return NodePrediction(np.asarray(answer["classes"], dtype=np.int64),
                              np.asarray(answer["probabilities"], dtype=np.float32))

    def predict_graph(self, x, edge_index, edge_attr=None, *, undirected: bool = False) -> dict[str, float]:
        """Graph-level targets of one graph, by name (mpnn): x (N, F), edge_index (2, E), edge_attr (E, D)."""
        return self._graph(x, edge_index, edge_attr, undirected)["prediction"]

    # --- text -------------------------------------------------------------------------------
    def generate(self, prompt: str = "", n: int = 200, temperature: float = 1.0, top_k: Optional[int] = None,
                 seed: Optional[int] = None) -> str:
        """n characters that follow `prompt` (charlm); the same seed gives the same text."""
        body = {"prompt": prompt, "n": n, "temperature": temperature, "top_k": top_k, "seed": seed}
        return self.post("/generate", body)["text"]

    def score(self, text: str) -> float:
        """Bits per character the model needs for `text` (charlm)."""
        return float(self.post("/score", {"text": text})["bits_per_char"])

    # --- inpainting -------------------------------------------------------------------------
    def inpaint(self, image, mask, method: str = "unet", *, output: Output = "numpy"):
        """The image with its masked pixels (mask >= 0.5) filled (unet); "mean" and "blur" are
        the baselines. Returns one image: (H, W) numpy, (1, H, W) torch or PIL."""
        body = {"image": png_base64(image), "mask": png_base64(mask), "method": method, "format": "png"}
        return as_output([self.post("/inpaint", body)["image"]], output)[0]
