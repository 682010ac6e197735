"""Serve deployment of the 2-D heat solver (genray.heat): no model to load, just the solver.

POST /solve takes the problem's parameters and answers with the field as JSON, with probe
values at requested points, or with a PNG heat map. Concurrent requests on the same grid and
time step are solved together as one batch (CG is vectorised over parameter sets).
A replica solves on the GPU that Serve gave it (num_gpus in its ray_actor_options:
genray.deploy.common.replica_device), on its CPU otherwise, in float64 either way; GET / says which.
"""

import base64
import time
from typing import Literal, Optional

import torch
from pydantic import Field, model_validator
from ray import serve

from genray import telemetry
from genray.deploy.common import BadRequest, StrictModel, deployment, make_api, replica_device

MAX_N = 256
MAX_STEPS = 2000
MAX_WORK = 64 * 64 * 2000  # grid points x steps per request: keeps a replica's answer under seconds
MAX_POINTS = 1000


class SolveRequest(StrictModel):
    n: int = Field(64, ge=2, le=MAX_N)
    dt: float = Field(1e-3, gt=0.0, le=10.0, allow_inf_nan=False)
    t_end: float = Field(0.1, ge=0.0, le=100.0, allow_inf_nan=False)
    omega: float = Field(20.0, ge=0.0, le=1e4, allow_inf_nan=False)
    k_in: float = Field(50.0, gt=0.0, le=1e6, allow_inf_nan=False)
    k_out: float = Field(1.0, gt=0.0, le=1e6, allow_inf_nan=False)
    format: Literal["json", "probe", "png"] = "json"
    points: Optional[list[tuple[float, float]]] = Field(None, min_length=1, max_length=MAX_POINTS)

    @model_validator(mode="after")
    def _limits(self) -> "SolveRequest":
        steps = max(1, round(self.t_end / self.dt))
        if steps > MAX_STEPS:
            raise ValueError(f"t_end / dt = {steps} steps; the limit is {MAX_STEPS}")
        if (self.n + 1) ** 2 * steps > MAX_WORK:
            raise ValueError(f"(n+1)^2 x steps = {(self.n + 1) ** 2 * steps}; the limit is {MAX_WORK}")
        if self.format == "probe":
            if not self.points:
                raise ValueError("format 'probe' needs points: [[x1, x2], ...] in [0, 1]^2")
            for i, (x1, x2) in enumerate(self.points):
                if not (0.0 <= x1 <= 1.0 and 0.0 <= x2 <= 1.0):
                    raise ValueError(f"points.{i} = ({x1}, {x2}) is outside [0, 1]^2")
        return self


def probe(u: torch.Tensor, points: list[tuple[float, float]]) -> list[float]:
    """Bilinear interpolation of u (n+1, n+1), indexed [i1, i2] on x_i = i/n, at (x1, x2) points."""
    n = u.shape[0] - 1
    out = []
    for x1, x2 in points:
        f1, f2 = x1 * n, x2 * n
        i1, i2 = min(int(f1), n - 1), min(int(f2), n - 1)
        a, b = f1 - i1, f2 - i2
        out.append(float((1 - a) * (1 - b) * u[i1, i2] + a * (1 - b) * u[i1 + 1, i2]
                         + (1 - a) * b * u[i1, i2 + 1] + a * b * u[i1 + 1, i2 + 1]))
    return out


def solve_many(requests: list[SolveRequest], device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Solve requests on `device`, batching those that share (n, dt, t_end) into one solve_batch
    call. The fields come back on the CPU, where answer() reads them value by value. Each
    solve's CG iterations and seconds go to genray.telemetry."""
    from genray.heat import course_problem, simulate

    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault((r.n, r.dt, r.t_end), []).append(i)
    fields: list[Optional[torch.Tensor]] = [None] * len(requests)
    for (n, dt, t_end), members in groups.items():
        rs = [requests[i] for i in members]
        start = time.perf_counter()
        # solve_batch's solve, keeping the CG iterations of each step (steps, B)
        result = simulate(course_problem([r.omega for r in rs], [r.k_in for r in rs], [r.k_out for r in rs]),
                          n, dt, t_end, rtol=1e-8, device=device)
        u = result.u.cpu()
        telemetry.heat_solved(result.iterations.double().mean(0).tolist() if result.steps else [0.0] * len(rs),
                              time.perf_counter() - start)
        for j, i in enumerate(members):
            fields[i] = u[j]
    return fields


def answer(req: SolveRequest, u: torch.Tensor) -> dict:
    meta = {"n": req.n, "t_end": req.t_end, "max": float(u.max()), "min": float(u.min())}
    if req.format == "probe":
        return {**meta, "points": req.points, "values": probe(u, req.points)}
    if req.format == "png":
        from genray.heat import render_png

        png = render_png(u, title=f"u(x, t={req.t_end:g})  omega={req.omega:g}, k_in={req.k_in:g}")
        return {**meta, "format": "png", "image": base64.b64encode(png).decode("ascii")}
    return {**meta, "format": "json", "u": u.tolist()}


api = make_api("genray heat")


@deployment(api)
class HeatDeployment:
    def __init__(self):
        torch.set_num_threads(1)
        self.device = replica_device()

    @api.get("/")
    def info(self) -> dict:
        return {"family": "heat", "limits": {"n": MAX_N, "steps": MAX_STEPS, "work": MAX_WORK, "points": MAX_POINTS},
                "endpoints": ["/solve"], "device": str(self.device)}

    @api.post("/solve")
    async def solve(self, req: SolveRequest) -> dict:
        try:
            u = await self.solve_batched(req)
        except (ValueError, RuntimeError) as err:  # solver limits: a clear error, never a dead replica
            raise BadRequest(f"solver: {err}") from None
        return answer(req, u)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def solve_batched(self, requests: list[SolveRequest]) -> list[torch.Tensor]:
        telemetry.batch_formed(len(requests))
        return solve_many(requests, self.device)


def build_app(args: dict):
    """Serve application builder for serve/heat.yaml (takes no args)."""
    if args:
        raise ValueError(f"the heat app takes no args, got {sorted(args)}")
    return HeatDeployment.bind()
