"""Serve deployment of a trained neural ODE: integrate the learned field, draw phase portraits.

POST /integrate  {"y0": [[2, 0], [1, 1]], "t": [0, 0.5, 1.0], "method": "rk4"}  (method optional)
                 -> {"t", "y": (T, B, 2) nested lists, "shape", "method", "evals"}
                 y0 may also be one state [2, 0]; y is (T, 1, 2) then.
POST /portrait   {"y0": [[2, 0]], "t_end": 25, "points": 500}  (all optional)
                 -> {"format": "png", "image": base64 PNG of learned vs true trajectories}
GET  /           the model's family, epoch, metrics, solver settings and request limits

Errors are JSON {"error": "...", "errors": [...]}: 400 for bad JSON, 422 for a request that
breaks the schema (non-increasing or non-finite times, NaN, a state that is not 2 values,
too many points) naming the field, and 422 for a solve that does not converge within the
model's solver limits (max_num_steps, max_evals, step-size underflow, blow-up):
"solver did not converge (<reason>): ...". The solve is bounded by max_evals, so such a
request costs at most that many field evaluations and the replica carries on.
"""

from typing import Annotated, Optional

import torch
from pydantic import AfterValidator, Field, field_validator

from genray.deploy.common import BadRequest, ModelReplica, StrictModel, deployment, make_api
from genray.families.ode import Method, SolverError
from genray.images import to_base64_png

MAX_TIMES = 5000  # output times per /integrate request
MAX_STATES = 64  # initial states per /integrate request
MAX_PORTRAIT_STATES = 16
MAX_PORTRAIT_POINTS = 2000
MAX_STATE = 1e3  # |coordinate| of an initial state
MAX_TIME = 1e4  # |t|

Coordinate = Annotated[float, Field(ge=-MAX_STATE, le=MAX_STATE, allow_inf_nan=False)]
Time = Annotated[float, Field(ge=-MAX_TIME, le=MAX_TIME, allow_inf_nan=False)]


def _two_values(state: list[float]) -> list[float]:
    if len(state) != 2:
        raise ValueError(f"a state is 2 values (y1, y2), got {len(state)}")
    return state


def _strictly_increasing(t: list[float]) -> list[float]:
    for i in range(1, len(t)):
        if not t[i] > t[i - 1]:
            raise ValueError(f"times must be strictly increasing; t[{i}] = {t[i]} is not > t[{i - 1}] = {t[i - 1]}")
    return t


State = Annotated[list[Coordinate], AfterValidator(_two_values)]
Times = Annotated[list[Time], Field(min_length=2, max_length=MAX_TIMES), AfterValidator(_strictly_increasing)]


def _one_or_many(value):
    """Accept one state [y1, y2] as well as a list of states."""
    if isinstance(value, list) and value and not isinstance(value[0], (list, tuple)):
        return [value]
    return value


class IntegrateRequest(StrictModel):
    y0: list[State] = Field(min_length=1, max_length=MAX_STATES)
    t: Times
    method: Optional[Method] = None  # default: the model's own solver

    one_state_or_many = field_validator("y0", mode="before")(_one_or_many)


class PortraitRequest(StrictModel):
    y0: list[State] = Field(default_factory=lambda: [[2.0, 0.0]], min_length=1, max_length=MAX_PORTRAIT_STATES)
    t_end: float = Field(25.0, gt=0.0, le=1000.0, allow_inf_nan=False)
    points: int = Field(500, ge=2, le=MAX_PORTRAIT_POINTS)

    one_state_or_many = field_validator("y0", mode="before")(_one_or_many)


def solver_failure(err: SolverError) -> BadRequest:
    return BadRequest(f"solver did not converge ({err.reason}): {err.message}", status_code=422)


def integrate_trajectories(family, req: IntegrateRequest) -> dict:
    """The /integrate math, without HTTP."""
    y0 = torch.tensor(req.y0, dtype=torch.float32)  # (B, 2)
    t = torch.tensor(req.t, dtype=torch.float32)  # (T,)
    if not (t[1:] > t[:-1]).all():  # distinct doubles can round to equal float32 values
        raise BadRequest("t: times are too close together to stay strictly increasing in float32")
    evals: list = []
    try:
        y = family.integrate(y0, t, method=req.method, counter=evals)  # (T, B, 2)
    except SolverError as err:
        raise solver_failure(err) from None
    return {
        "t": req.t,
        "y": y.cpu().tolist(),
        "shape": list(y.shape),
        "method": req.method or family.cfg.solver.method,
        "evals": evals[-1],  # vector-field evaluations the solve took
    }


def draw_portrait(family, req: PortraitRequest) -> dict:
    """The /portrait math, without HTTP."""
    t = torch.linspace(0.0, req.t_end, req.points)
    try:
        image = family.portrait(torch.tensor(req.y0, dtype=torch.float32), t)
    except SolverError as err:
        raise solver_failure(err) from None
    return {"format": "png", "image": to_base64_png(image)}


api = make_api("genray ode")


@deployment(api)
class ODEDeployment(ModelReplica):
    @api.get("/")
    def info(self) -> dict:
        limits = {"states": MAX_STATES, "times": MAX_TIMES, "abs_state": MAX_STATE, "abs_time": MAX_TIME,
                  "portrait_states": MAX_PORTRAIT_STATES, "portrait_points": MAX_PORTRAIT_POINTS}
        return self.describe(solver=self.family.cfg.solver.model_dump(), limits=limits,
                             endpoints=["/integrate", "/portrait"])

    @api.post("/integrate")
    def integrate(self, req: IntegrateRequest) -> dict:
        return integrate_trajectories(self.family, req)

    @api.post("/portrait")
    def portrait(self, req: PortraitRequest) -> dict:
        return draw_portrait(self.family, req)
