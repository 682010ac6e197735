"""Serve deployment of a trained latent ODE: encode an irregular series, interpolate and extrapolate it.

POST /extrapolate {"times": [0.0, 0.3, 0.45, 1.2], "values": [[5.1, 0.2], [4.9, 0.9], [4.7, 1.1], [3.6, 2.4]],
                   "query_times": [0.0, 0.6, 1.5, 3.0, 4.5], "refine_steps": 0}
                  -> {"query_times", "mean": (m, obs_dim) nested lists, "z0_mean", "z0_std", "z0"}
GET  /            the model's family, epoch, metrics, sizes and request limits

`mean` is the posterior-mean trajectory decode(z(t; mu)), where mu is the mean of q(z0) given
the series. With "refine_steps": k > 0 (at most MAX_REFINE_STEPS) the trajectory starts instead
from z0 refined by k gradient steps on this series' own observations (LatentODEFamily.refine:
the mode of p(z0 | x), closer to the observations than the recognition net's one-shot guess;
each step is a solve and its backward pass, so a request costs about k times more). "z0" is the
code the trajectory was decoded from (z0_mean when k = 0). The model's clock starts at the first observed time, as in training: query times
before it extrapolate backwards, between observations interpolate, after the last extrapolate.
The model was trained on series spanning `obs_span` (6 pi / 10 = 1.885 by default) and scored up
to `obs_span + extrap_span` (3.77); much further out it is on its own.

Errors are JSON {"error": "...", "errors": [...]}: 400 for bad JSON; 422 naming the field for
non-increasing or non-finite times, NaN values, values whose size is not the model's
observation size, a values list of another length than times, too many points or a query
further than MAX_SPAN from the first observation; 422 "solver did not converge (<reason>)"
for a latent solve that exceeds the model's solver limits (bounded work; the replica carries on).
"""

from typing import Annotated

import torch
from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from genray.deploy.common import BadRequest, ModelReplica, StrictModel, deployment, make_api
from genray.families.ode import SolverError

MAX_OBSERVATIONS = 1000
MAX_QUERIES = 2000
MAX_SPAN = 100.0  # |query time - first observed time|; the model was trained on spans of 1.9 and scored to 3.8
MAX_VALUE = 1e4
MAX_OBS_DIM = 1024  # values per observation (the model's own size is checked with the model)
MAX_REFINE_STEPS = 200  # 50 already did most of the good on the held-out spirals

Time = Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)]
Value = Annotated[float, Field(ge=-MAX_VALUE, le=MAX_VALUE, allow_inf_nan=False)]


def _strictly_increasing(t: list[float]) -> list[float]:
    for i in range(1, len(t)):
        if not t[i] > t[i - 1]:
            raise ValueError(f"times must be strictly increasing; [{i}] = {t[i]} is not > [{i - 1}] = {t[i - 1]}")
    return t


Increasing = AfterValidator(_strictly_increasing)


class ExtrapolateRequest(StrictModel):
    times: Annotated[list[Time], Field(min_length=1, max_length=MAX_OBSERVATIONS), Increasing]
    values: list[Annotated[list[Value], Field(max_length=MAX_OBS_DIM)]] = Field(min_length=1, max_length=MAX_OBSERVATIONS)
    query_times: Annotated[list[Time], Field(min_length=1, max_length=MAX_QUERIES), Increasing]
    refine_steps: int = Field(0, ge=0, le=MAX_REFINE_STEPS)

    @field_validator("values")
    @classmethod
    def _one_value_per_time(cls, values: list[list[float]], info: ValidationInfo) -> list[list[float]]:
        times = info.data.get("times")
        if times is not None and len(values) != len(times):
            raise ValueError(f"expected one value per time ({len(times)}), got {len(values)}")
        sizes = sorted({len(v) for v in values})
        if len(sizes) != 1 or sizes[0] == 0:
            raise ValueError(f"every value must have the same non-zero size, got sizes {sizes}")
        return values

    @field_validator("query_times")
    @classmethod
    def _not_too_far(cls, query: list[float], info: ValidationInfo) -> list[float]:
        times = info.data.get("times")
        if times:
            for q in (query[0], query[-1]):
                if abs(q - times[0]) > MAX_SPAN:
                    raise ValueError(f"{q} is further than {MAX_SPAN} from the first observed time {times[0]}")
        return query


def check_sizes(req: ExtrapolateRequest, obs_dim: int) -> None:
    """The one check that needs the model: the observation size."""
    if len(req.values[0]) != obs_dim:
        got = len(req.values[0])
        raise BadRequest(f"values.0: expected {obs_dim} values (the model's observation size), got {got}")


def extrapolate_series(family, req: ExtrapolateRequest) -> dict:
    """The /extrapolate math, without HTTP."""
    check_sizes(req, family.cfg.obs_dim)
    t = torch.tensor(req.times, dtype=torch.float64)
    q = torch.tensor(req.query_times, dtype=torch.float64)
    # The model's clock: 0 at the first observation (in float64 first, then float32).
    t_rel, q_rel = (t - t[0]).float(), (q - t[0]).float()
    if not (t_rel[1:] > t_rel[:-1]).all() or not (q_rel[1:] > q_rel[:-1]).all():
        raise BadRequest("times: times are too close together to stay strictly increasing in float32")
    x = torch.tensor(req.values, dtype=torch.float32)
    try:
        mu, logvar = family.encode(t_rel[None], x[None])
        z0 = family.refine(t_rel[None], x[None], mu, req.refine_steps) if req.refine_steps else mu
        mean = family.trajectory(z0, q_rel[None])[0]  # (m, D)
    except SolverError as err:
        raise BadRequest(f"solver did not converge ({err.reason}): {err.message}", status_code=422) from None
    return {
        "query_times": req.query_times,
        "mean": mean.cpu().tolist(),
        "z0_mean": mu[0].cpu().tolist(),
        "z0_std": torch.exp(0.5 * logvar[0]).cpu().tolist(),
        "z0": z0[0].cpu().tolist(),
    }


api = make_api("genray latent_ode")


@deployment(api)
class LatentODEDeployment(ModelReplica):
    @api.get("/")
    def info(self) -> dict:
        cfg = self.family.cfg
        limits = {"observations": MAX_OBSERVATIONS, "queries": MAX_QUERIES, "span": MAX_SPAN,
                  "refine_steps": MAX_REFINE_STEPS}
        return self.describe(obs_dim=cfg.obs_dim, latent_dim=cfg.latent_dim, solver=cfg.solver.model_dump(),
                             limits=limits, endpoints=["/extrapolate"])

    @api.post("/extrapolate")
    def extrapolate(self, req: ExtrapolateRequest) -> dict:
        return extrapolate_series(self.family, req)
