"""Serve deployment of a trained character-level LSTM: generate text from a prompt.

POST /generate  {"prompt": "The ", "n": 200, "temperature": 0.8, "top_k": 20, "seed": 0}
                (all optional) -> {"text": the n generated characters, "prompt", ...}
                The same seed, prompt and settings always give the same text.
POST /score     {"text": "..."} -> bits per character the model needs for the text
GET  /          the model's family, epoch, metrics, vocabulary and request limits

Errors are JSON {"error": "...", "errors": [...]}: 422 for a temperature that is not > 0, n or
a prompt beyond the limits, top_k above the vocabulary size, or prompt characters outside the
model's vocabulary (each named, with its code point).
"""

from typing import Optional

from pydantic import Field

from genray.deploy.common import BadRequest, ModelReplica, StrictModel, deployment, make_api
from genray.families.charlm import describe_chars

MAX_CHARS = 2000  # generated characters per request: one LSTM step each
MAX_PROMPT = 2000  # prompt characters (read in one pass)
MAX_TEMPERATURE = 100.0  # beyond this the distribution is uniform to float precision
MAX_SCORE = 20_000  # characters per /score request


class GenerateRequest(StrictModel):
    prompt: str = Field("", max_length=MAX_PROMPT)
    n: int = Field(200, ge=1, le=MAX_CHARS)
    temperature: float = Field(1.0, gt=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_k: Optional[int] = Field(None, ge=1)
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)


class ScoreRequest(StrictModel):
    text: str = Field(min_length=1, max_length=MAX_SCORE)


def check_chars(family, field: str, text: str) -> None:
    unknown = family.unknown_chars(text)
    if unknown:
        raise BadRequest(f"{field}: characters not in the model's vocabulary: {describe_chars(unknown)}")


def generate_text(family, req: GenerateRequest) -> dict:
    """The /generate math, without HTTP."""
    check_chars(family, "prompt", req.prompt)
    vocab = len(family.cfg.vocab)
    if req.top_k is not None and req.top_k > vocab:
        raise BadRequest(f"top_k: must be <= {vocab} (the vocabulary size), got {req.top_k}")
    text = family.generate(req.prompt, req.n, temperature=req.temperature, top_k=req.top_k, seed=req.seed)
    return {"prompt": req.prompt, "text": text, "n": req.n, "temperature": req.temperature,
            "top_k": req.top_k, "seed": req.seed}


api = make_api("genray charlm")


@deployment(api)
class CharLMDeployment(ModelReplica):
    @api.get("/")
    def info(self) -> dict:
        limits = {"n": MAX_CHARS, "prompt": MAX_PROMPT, "temperature": MAX_TEMPERATURE, "score": MAX_SCORE}
        return self.describe(vocab=self.family.cfg.vocab, limits=limits, endpoints=["/generate", "/score"])

    @api.post("/generate")
    def generate(self, req: GenerateRequest) -> dict:
        return generate_text(self.family, req)

    @api.post("/score")
    def score(self, req: ScoreRequest) -> dict:
        check_chars(self.family, "text", req.text)
        return {"bits_per_char": self.family.bits_per_char(req.text), "chars": len(req.text)}
