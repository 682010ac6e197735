"""Neural ODE (Chen et al. 2018) fitted to the spiral system of torchdiffeq's ode_demo.py.

The true system is dy/dt = (y**3) A (genray.data.spirals). A small MLP f(y) is trained so that
odeint(f, y(t_s), window times) matches short windows of the true trajectory (the demo's
random batches; the DistributedSampler shards the windows over Ray workers). Loss: the
mean squared error over a window (`loss: mae` is the demo's mean absolute error).

Validation metric `val_mse`: the learned field is integrated from the true y0 over the
*whole* time span (1000 points on [0, 25]) and compared with the true trajectory. Training
windows cover every part of the one trajectory, so held-out windows would measure almost
nothing; a long rollout also charges the model for the error it accumulates.

Solver settings (`SolverConfig`, shared with latent_ode): method, rtol/atol, adjoint
(odeint_adjoint: O(1) memory in the number of steps, gradients from a backward solve),
step-size limits, and two caps that turn a solve that cannot converge into `SolverError`
instead of a hung process: torchdiffeq's `max_num_steps` (adaptive solvers; it counts steps
between two consecutive output times) and `max_evals` (every solver; function evaluations in
one solve, forward and adjoint passes together).
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.utils.data import TensorDataset

from genray.data.spirals import SPIRAL_Y0, SpiralField, collate_gathered, spiral_trajectory, trajectory_windows
from genray.families.base import Family, StepMetrics

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_METHODS = ("euler", "midpoint", "heun3", "rk4")
Method = Literal["dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "euler", "midpoint", "heun3", "rk4"]


class SolverConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Method = "dopri5"
    rtol: float = Field(1e-3, gt=0.0, le=1.0)  # adaptive methods only
    atol: float = Field(1e-4, gt=0.0, le=1.0)
    adjoint: bool = False  # backpropagate with odeint_adjoint instead of through the solver
    # Adaptive methods: torchdiffeq's step cap, counted between two consecutive output times.
    max_num_steps: int = Field(1000, ge=1, le=10_000_000)
    min_step: float = Field(0.0, ge=0.0)  # steps this small are accepted whatever their error
    max_step: Optional[float] = Field(None, gt=0.0)
    first_step: Optional[float] = Field(None, gt=0.0)
    # Fixed-step methods: the step; None steps from output time to output time.
    step_size: Optional[float] = Field(None, gt=0.0)
    # Every method: the most function evaluations one solve may make (forward + adjoint pass).
    max_evals: int = Field(50_000, ge=1, le=100_000_000)

    @model_validator(mode="after")
    def _steps_ordered(self) -> "SolverConfig":
        if self.max_step is not None and self.min_step >= self.max_step:
            raise ValueError(f"min_step must be < max_step, got {self.min_step} >= {self.max_step}")
        return self

    def options(self, method: str) -> dict:
        """torchdiffeq `options` for `method` (each solver warns about options it does not take)."""
        if method in FIXED_METHODS:
            return {} if self.step_size is None else {"step_size": self.step_size}
        opts: dict = {"max_num_steps": self.max_num_steps, "min_step": self.min_step}
        if self.max_step is not None:
            opts["max_step"] = self.max_step
        if self.first_step is not None:
            opts["first_step"] = self.first_step
        return opts


class SolverError(RuntimeError):
    """An ODE solve that did not converge. `reason`: max_steps | max_evals | step_underflow | non_finite."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


class BudgetedField:
    """Counts the calls of a vector field and stops the solve after `max_evals` of them.

    A plain callable, not an nn.Module: it sits on every function evaluation, and Module.__call__
    costs more than the count does (the adjoint gets its parameters explicitly)."""

    def __init__(self, field: nn.Module, max_evals: int):
        self.field, self.max_evals, self.evals = field, max_evals, 0

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.evals += 1
        if self.evals > self.max_evals:
            raise SolverError(
                "max_evals",
                f"solver stopped after {self.max_evals} function evaluations (max_evals) without "
                "reaching the last time; shorten the time span or use a lower-accuracy method",
            )
        return self.field(t, y)


def check_times(t: torch.Tensor) -> None:
    if t.dim() != 1 or t.numel() < 2:
        raise ValueError(f"times must be a 1-D tensor of >= 2 values, got shape {tuple(t.shape)}")
    # In Python floats: a handful of tiny tensor ops would cost more than the check is worth on
    # every training step (the times are one short window there).
    values = t.tolist()
    if not all(map(math.isfinite, values)):
        raise ValueError("times must be finite")
    pairs = list(zip(values, values[1:]))
    if not all(b > a for a, b in pairs) and not all(b < a for a, b in pairs):
        raise ValueError("times must be strictly increasing (or strictly decreasing)")


def solve(field: nn.Module, y0: torch.Tensor, t: torch.Tensor, solver: SolverConfig, *,
          method: str | None = None, counter: list | None = None) -> torch.Tensor:
    """odeint(field, y0, t) -> (T, *y0.shape) under the solver config, or SolverError.

    `method` overrides the config's; `counter`, if given, gets the number of function
    evaluations of the forward pass appended (the adjoint pass adds to the same budget).
    Failures of the forward solve raise SolverError; an adjoint *backward* solve that fails
    raises torchdiffeq's own AssertionError from loss.backward() (it ends a training step,
    never a request: inference has no backward pass).
    """
    from torchdiffeq import odeint, odeint_adjoint

    method = method or solver.method
    check_times(t)
    if method in FIXED_METHODS and solver.step_size is not None:
        steps = math.ceil(abs(float(t[-1] - t[0])) / solver.step_size)
        if steps > solver.max_evals:  # refuse before torchdiffeq allocates the step grid
            raise SolverError("max_evals", f"{method} with step_size {solver.step_size} needs {steps} steps over "
                                           f"this time span; the limit is max_evals = {solver.max_evals}")
    budget = BudgetedField(field, solver.max_evals)
    kwargs = dict(rtol=solver.rtol, atol=solver.atol, method=method, options=solver.options(method))
    # The solve stays in float32 under a bf16/fp16 training step (train.precision): an adaptive
    # method picks its steps from an estimate of the local error, at rtol 1e-3 or finer, which
    # bf16's 8-bit mantissa (relative precision ~4e-3) drowns; the dynamics net runs in float32 too.
    try:
        with torch.autocast(y0.device.type, enabled=False):
            if y0.dtype in (torch.bfloat16, torch.float16):  # from an encoder under autocast
                y0 = y0.float()
            if solver.adjoint and torch.is_grad_enabled():  # without gradients the adjoint changes nothing
                y = odeint_adjoint(budget, y0, t, adjoint_params=tuple(field.parameters()), **kwargs)
            else:
                y = odeint(budget, y0, t, **kwargs)
    except AssertionError as err:  # torchdiffeq signals failure by assert
        text = str(err)
        if "max_num_steps" in text:
            reason, hint = "max_steps", "more than max_num_steps adaptive steps between two output times"
        elif "underflow" in text:
            reason, hint = "step_underflow", "the step size underflowed (the problem is too stiff for this method)"
        elif "non-finite" in text:
            reason, hint = "non_finite", "the solution left the finite numbers (it blew up)"
        else:
            raise
        raise SolverError(reason, f"solver did not converge: {hint} ({text})") from None
    finally:
        if counter is not None:
            counter.append(budget.evals)
    if method in FIXED_METHODS and not torch.isfinite(y).all():  # adaptive ones assert it themselves
        raise SolverError("non_finite", "solver did not converge: the solution left the finite numbers (it blew up)")
    return y


# --- the model -------------------------------------------------------------------------------

class ODEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden: int = Field(50, ge=1, le=4096)
    # Feed y**3 to the MLP, as ode_demo.py does: the true field is linear in y**3.
    cube_input: bool = True
    solver: SolverConfig = Field(default_factory=SolverConfig)
    # mse: on the spiral it gives a lower full-span val_mse than the demo's mae (3 seeds, 400 steps)
    loss: Literal["mae", "mse"] = "mse"
    lr: float = Field(1e-2, gt=0.0, le=1.0)
    # lr * lr_decay**epoch: the long rollout is sensitive to small errors in the field, and a
    # constant step size keeps jittering them; decay lets the fit settle.
    lr_decay: float = Field(0.8, gt=0.0, le=1.0)


class ODEDataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_points: int = Field(1000, ge=2, le=1_000_000)  # points of the true trajectory
    t_end: float = Field(25.0, gt=0.0, le=1000.0)
    y0: tuple[float, float] = SPIRAL_Y0
    window: int = Field(10, ge=2)  # points per training window (the demo's batch_time)
    noise_std: float = Field(0.0, ge=0.0)  # observation noise on the training windows
    seed: int = Field(0, ge=0)
    limit: Optional[int] = Field(None, ge=1)  # keep this many training windows

    @model_validator(mode="after")
    def _window_fits(self) -> "ODEDataConfig":
        if self.window > self.n_points:
            raise ValueError(f"window must be <= n_points ({self.n_points}), got {self.window}")
        return self


class ODEFunc(nn.Module):
    """The learned vector field: y (..., 2) -> dy/dt (..., 2); autonomous (t is ignored)."""

    def __init__(self, cfg: ODEConfig):
        super().__init__()
        self.cube_input = cfg.cube_input
        self.net = nn.Sequential(nn.Linear(2, cfg.hidden), nn.Tanh(), nn.Linear(cfg.hidden, 2))
        for m in self.net.modules():
            if isinstance(m, nn.Linear):  # small initial field, as in the demo
                nn.init.normal_(m.weight, std=0.1)
                nn.init.zeros_(m.bias)
        self.calls = 0  # evaluations so far, forward and adjoint solves alike (a Python int: no sync)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(y**3 if self.cube_input else y)


class NeuralODE(nn.Module):
    """y0 (B, 2), t (T,) -> y (T, B, 2). One module, so DDP wraps one forward per step and the
    solver calls the raw field inside it."""

    def __init__(self, cfg: ODEConfig):
        super().__init__()
        self.field = ODEFunc(cfg)
        self.solver = cfg.solver

    def forward(self, y0: torch.Tensor, t: torch.Tensor, method: str | None = None,
                counter: list | None = None) -> torch.Tensor:
        return solve(self.field, y0, t, self.solver, method=method, counter=counter)


class ODEFamily(Family):
    name = "ode"
    compile_unsupported = ("its ODE solve has data-dependent shapes (torchdiffeq's adaptive steps, torch.unique of "
                           "the output times) that TorchInductor cannot lower (DynamicOutputShapeException)")
    Config = ODEConfig
    DataConfig = ODEDataConfig
    metric = "val_mse"
    mode = "min"
    # The training windows come a batch at a time (WindowDataset.__getitems__), not item by item.
    collate_fn = staticmethod(collate_gathered)

    @classmethod
    def load_data(cls, data_cfg: ODEDataConfig) -> tuple[TensorDataset, TensorDataset]:
        """Train: the windows (t_window (W,), y_window (W, 2)). Val: the one whole trajectory
        (t (N,), y (N, 2)), noise-free."""
        t, y = spiral_trajectory(data_cfg.n_points, data_cfg.t_end, data_cfg.y0)
        train = trajectory_windows(t, y, data_cfg.window, noise_std=data_cfg.noise_std,
                                   seed=data_cfg.seed, limit=data_cfg.limit)
        return train, TensorDataset(t[None], y[None])

    def build(self) -> dict[str, nn.Module]:
        return {"ode": NeuralODE(self.cfg)}

    def make_optimizers(self):
        return {"ode": torch.optim.Adam(self.nets["ode"].parameters(), lr=self.cfg.lr)}

    def window_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.cfg.loss == "mse":
            return F.mse_loss(pred, target)
        return F.l1_loss(pred, target)

    def train_step(self, batch, epoch: float) -> StepMetrics:
        t_win, y_win = batch  # (B, W), (B, W, 2); every row of t_win is the same grid
        target = y_win.transpose(0, 1)  # (W, B, 2)
        field = self.nets["ode"].field
        calls = field.calls
        pred = self.train_nets["ode"](y_win[:, 0], t_win[0])  # (W, B, 2)
        forward_evals = field.calls - calls
        loss = self.window_loss(pred, target)
        lr = self.cfg.lr * self.cfg.lr_decay**epoch
        for group in self.optimizers["ode"].param_groups:
            group["lr"] = lr
        self.optimizer_step(loss, "ode")  # with adjoint, the backward is a solve that evaluates the field again
        loss_value = loss.detach()
        mse = loss_value if self.cfg.loss == "mse" else F.mse_loss(pred.detach(), target).detach()
        return {"loss": loss_value, "mse": mse, "nfe": float(forward_evals),
                "nfe_backward": float(field.calls - calls - forward_evals), "lr": lr}

    @torch.no_grad()
    def eval_batch(self, batch) -> dict[str, float]:
        t, y = batch  # (B, N), (B, N, 2): whole trajectories
        sums = {"val_mse": 0.0, "val_mae": 0.0, "val_solver_failures": 0.0}
        for ti, yi in zip(t, y):
            try:
                pred = self.integrate(yi[:1], ti)[:, 0]  # (N, 2)
            except SolverError:
                # A field the solver cannot integrate scores worst, instead of ending the run.
                sums["val_mse"] += math.inf
                sums["val_mae"] += math.inf
                sums["val_solver_failures"] += 1
                continue
            sums["val_mse"] += (pred - yi).pow(2).mean().item()
            sums["val_mae"] += (pred - yi).abs().mean().item()
        return sums

    @torch.no_grad()
    def preview(self, batch) -> dict[str, torch.Tensor]:
        t, y = batch
        try:
            return {"portrait": self.portrait(y[:1, 0].cpu(), t[0].cpu())[None]}
        except SolverError:
            return {}

    # --- inference (used by the deployment; plain tensors in, plain tensors out) ----------
    @torch.no_grad()
    def integrate(self, y0: torch.Tensor, t: torch.Tensor, method: str | None = None,
                  counter: list | None = None) -> torch.Tensor:
        """Learned trajectories: y0 (B, 2), t (T,) strictly monotone -> (T, B, 2), with the
        model's solver settings (`method` overrides its method). Raises SolverError if the solve
        does not converge within them; `counter` gets the number of field evaluations appended."""
        if y0.dim() != 2 or y0.shape[1] != 2:
            raise ValueError(f"y0 must have shape (B, 2), got {tuple(y0.shape)}")
        return self.nets["ode"](y0.to(self.device, torch.float32), t.to(self.device, torch.float32), method, counter)

    @torch.no_grad()
    def field(self, y: torch.Tensor) -> torch.Tensor:
        """The learned dy/dt at points y (N, 2) -> (N, 2)."""
        return self.nets["ode"].field(torch.zeros(()), y.to(self.device, torch.float32))

    @torch.no_grad()
    def true_trajectory(self, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The true system from y0 (B, 2) over t (T,) -> (T, B, 2), within the same limits."""
        solver = self.cfg.solver.model_copy(update={"method": "dopri5", "adjoint": False, "rtol": 1e-6, "atol": 1e-8})
        return solve(SpiralField(), y0.float(), t.float(), solver)

    @torch.no_grad()
    def portrait(self, y0: torch.Tensor, t: torch.Tensor, size: int = 480) -> torch.Tensor:
        """Phase portrait: learned (solid) vs true (dashed) trajectories from each y0 (B, 2)
        over t (T,), on the learned field's arrows. Returns an RGB image (3, size, size) in [0, 1]."""
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        learned = self.integrate(y0, t).cpu()  # (T, B, 2)
        true = self.true_trajectory(y0.cpu(), t.cpu())  # (T, B, 2)
        both = torch.cat([learned, true]).reshape(-1, 2)
        lo, hi = both.min(0).values, both.max(0).values
        pad = 0.1 * (hi - lo).clamp(min=0.5)
        lo, hi = lo - pad, hi + pad
        gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], 21), torch.linspace(lo[1], hi[1], 21), indexing="xy")
        arrows = self.field(torch.stack([gx, gy], -1).reshape(-1, 2)).cpu().reshape(21, 21, 2)

        fig = Figure(figsize=(size / 100, size / 100), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.quiver(gx.numpy(), gy.numpy(), arrows[..., 0].numpy(), arrows[..., 1].numpy(), color="0.75")
        for b in range(y0.shape[0]):
            color = f"C{b % 10}"
            ax.plot(true[:, b, 0], true[:, b, 1], "--", color=color, lw=1.2, label="true" if b == 0 else None)
            ax.plot(learned[:, b, 0], learned[:, b, 1], "-", color=color, lw=1.5, label="learned" if b == 0 else None)
            ax.plot(y0[b, 0], y0[b, 1], "o", color=color, ms=4)
        ax.set_xlim(lo[0].item(), hi[0].item())
        ax.set_ylim(lo[1].item(), hi[1].item())
        ax.set_xlabel("y1")
        ax.set_ylabel("y2")
        ax.set_title(f"phase portrait, t in [{t[0].item():.3g}, {t[-1].item():.3g}]")
        ax.legend(loc="upper right")
        fig.tight_layout()
        fig.canvas.draw()
        rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8
        return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
