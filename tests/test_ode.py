"""Neural-ODE families without Ray: the solver against exact solutions, the generated data,
training steps, adjoint gradients, solver limits, and the deployments' validation and math."""

import base64
import io
import math

import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset

from genray.data.spirals import SPIRAL_Y0, SpiralField, spiral_series, spiral_trajectory, trajectory_windows
from genray.deploy.common import BadRequest
from genray.families.latent_ode import LatentODEFamily, ODERNNEncoder, SeriesDataConfig, neg_elbo_terms
from genray.families.ode import ODEConfig, ODEFamily, ODEFunc, SolverConfig, SolverError, solve
from genray.families.rnn import RNNFamily

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These problems are tiny: one intra-op thread is faster, and far faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)


class LinearField(nn.Module):
    """dy/dt = y A^T for row vectors y: the exact solution is y(t) = y0 expm(t A)^T."""

    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        self.register_buffer("A", matrix)

    def forward(self, t, y):
        return y @ self.A.to(y.dtype).T


def exact_linear(y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.stack([y0 @ torch.linalg.matrix_exp(ti * A).T for ti in t])  # (T, B, 2)


@pytest.mark.parametrize("method,options,tol", [
    ("dopri5", {"rtol": 1e-9, "atol": 1e-11}, 1e-7),
    ("rk4", {"step_size": 0.01}, 1e-7),  # global error ~ C h^4
])
def test_solver_matches_matrix_exponential(method, options, tol):
    y0 = torch.tensor([[1.0, 0.0], [0.3, -2.0]], dtype=torch.float64)
    t = torch.linspace(0.0, 5.0, 11, dtype=torch.float64)
    y = solve(LinearField(A), y0, t, SolverConfig(method=method, **options))
    assert y.shape == (11, 2, 2)
    assert (y - exact_linear(y0, t)).abs().max().item() < tol


def test_family_integrate_runs_the_solver_on_its_field():
    """The family's plumbing (shapes, float32, method override) around a known field."""
    family = ODEFamily({"solver": {"rtol": 1e-7, "atol": 1e-9, "step_size": 0.01}})  # step_size: rk4's
    family.nets["ode"].field = LinearField(A.float())
    y0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    t = torch.linspace(0.0, 3.0, 7)
    exact = exact_linear(y0.double(), t.double()).float()
    for method in (None, "rk4"):
        y = family.integrate(y0, t, method=method)
        assert y.shape == (7, 3, 2) and y.dtype == torch.float32
        assert (y - exact).abs().max() < 1e-5


# --- data ---------------------------------------------------------------------------------------

def test_spiral_trajectory_solves_the_spiral_system():
    t, y = spiral_trajectory()
    assert t.shape == (1000,) and y.shape == (1000, 2)
    assert t[0] == 0 and t[-1] == pytest.approx(25.0) and y[0].tolist() == list(SPIRAL_Y0)
    # Fourth-order central differences of the stored trajectory match the true field.
    dt = (t[1] - t[0]).item()
    slope = (-y[4:] + 8 * y[3:-1] - 8 * y[1:-3] + y[:-4]) / (12 * dt)
    field = SpiralField()(None, y[2:-2])
    assert ((slope - field).norm(dim=1) / field.norm(dim=1)).max() < 5e-3
    assert torch.equal(spiral_trajectory()[1], y)  # deterministic


def test_trajectory_windows_cut_the_trajectory():
    t, y = spiral_trajectory()
    windows = trajectory_windows(t, y, 10)
    tw, yw = windows.tensors
    assert tw.shape == (991, 10) and yw.shape == (991, 10, 2)
    assert torch.equal(tw[0], tw[500]) and tw[0, 0] == 0  # one shared clock
    assert torch.equal(yw[123], y[123:133])
    noisy = trajectory_windows(t, y, 10, noise_std=0.1, seed=3, limit=50).tensors[1]
    assert noisy.shape == (50, 10, 2)
    assert torch.equal(noisy, trajectory_windows(t, y, 10, noise_std=0.1, seed=3, limit=50).tensors[1])
    with pytest.raises(ValueError, match="window must be in"):
        trajectory_windows(t, y, 1)


def test_window_batches_are_gathered_whole_and_match_item_by_item_collation():
    windows = trajectory_windows(*spiral_trajectory(), 10)  # the default trajectory: cached, solved once
    sampler = DistributedSampler(windows, num_replicas=1, rank=0, shuffle=True, seed=3)
    fast = list(DataLoader(windows, batch_size=32, sampler=sampler, collate_fn=ODEFamily.collate_fn))
    slow = list(DataLoader(TensorDataset(*windows.tensors), batch_size=32, sampler=sampler))
    assert len(fast) == len(slow) == 31 and all(isinstance(b, list) and len(b) == 2 for b in fast)
    assert all(torch.equal(a, b) for fb, sb in zip(fast, slow) for a, b in zip(fb, sb))
    # The collate still takes item lists (validation: a Subset of a plain TensorDataset).
    val = DataLoader(Subset(TensorDataset(*windows.tensors), range(5)), batch_size=4, collate_fn=ODEFamily.collate_fn)
    assert [b[1].shape for b in val] == [(4, 10, 2), (1, 10, 2)]


def test_spiral_series_shapes_determinism_and_irregular_times():
    data = spiral_series(64, n_obs=20, n_extrap=15, obs_span=3.0, extrap_span=2.0, noise_std=0.3, seed=5)
    t_obs, x_obs, x_clean, t_ext, x_ext, cw = data.tensors
    assert t_obs.shape == (64, 20) and x_obs.shape == x_clean.shape == (64, 20, 2)
    assert t_ext.shape == (64, 15) and x_ext.shape == (64, 15, 2) and cw.shape == (64,)
    assert (t_obs[:, 0] == 0).all() and (t_obs[:, 1:] > t_obs[:, :-1]).all() and (t_obs <= 3.0 + 1e-6).all()
    assert (t_ext[:, 1:] > t_ext[:, :-1]).all() and (t_ext > 3.0).all() and (t_ext <= 5.0 + 1e-6).all()
    assert len({tuple(row.tolist()) for row in t_obs}) > 60  # irregular: every series its own times
    assert 0 < cw.sum() < 64  # both directions
    noise = x_obs - x_clean
    assert 0.25 < noise.std().item() < 0.35
    again = spiral_series(64, n_obs=20, n_extrap=15, obs_span=3.0, extrap_span=2.0, noise_std=0.3, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(data.tensors, again.tensors))
    other = spiral_series(64, n_obs=20, n_extrap=15, obs_span=3.0, extrap_span=2.0, noise_std=0.3, seed=6)
    assert not torch.equal(other.tensors[0], t_obs)
    # Counter-clockwise spirals turn counter-clockwise about their centre (5, 0).
    ccw = cw == 0
    rel = x_clean[ccw] - torch.tensor([5.0, 0.0])
    cross = rel[:, :-1, 0] * rel[:, 1:, 1] - rel[:, :-1, 1] * rel[:, 1:, 0]
    assert (cross > 0).all()


def test_series_train_and_val_are_different_series():
    train, val = LatentODEFamily.load_data(SeriesDataConfig(n_train=16, n_val=16))
    assert not torch.equal(train.tensors[1], val.tensors[1])
    with pytest.raises(ValidationError, match="n_obs"):
        SeriesDataConfig(n_obs=500, obs_grid=100)


def test_series_defaults_follow_the_paper_extrapolating_at_every_later_grid_time():
    cfg = SeriesDataConfig(n_obs=100, n_train=50, n_val=8)
    assert cfg.obs_span == cfg.extrap_span == pytest.approx(6 * math.pi / 10)  # 100 of 1000 points on [0, 6 pi]
    t_obs, _, _, t_ext, _, _ = LatentODEFamily.load_data(cfg)[0].tensors
    assert t_ext.shape == (50, 100) and torch.equal(t_ext[0], t_ext[1])  # all 100 later grid times
    step = cfg.obs_span / cfg.obs_grid
    assert torch.allclose(t_ext.diff(dim=1), torch.full((50, 99), step), atol=1e-5)
    assert (t_obs.diff(dim=1) >= step - 1e-5).all() and (t_obs.diff(dim=1) < 2 * step).float().mean() > 0.95
    with pytest.raises(ValidationError, match="n_extrap"):
        SeriesDataConfig(n_extrap=101)


# --- training ---------------------------------------------------------------------------------

def fixed_batch(family_cls, data_cfg, n=32):
    train, _ = family_cls.load_data(data_cfg)
    return next(iter(DataLoader(train, batch_size=n, shuffle=True, generator=torch.Generator().manual_seed(0),
                                collate_fn=family_cls.collate_fn)))


@pytest.mark.parametrize("solver", [{"adjoint": True}, {"method": "rk4"}])
def test_ode_steps_reduce_the_loss(solver):
    torch.manual_seed(0)
    family = ODEFamily({"solver": solver})
    batch = fixed_batch(ODEFamily, ODEFamily.DataConfig(limit=200))
    losses = [family.train_step(batch, epoch=0.0)["loss"] for _ in range(8)]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.7 * losses[0], losses


def test_ode_step_counts_forward_and_adjoint_evaluations():
    batch = fixed_batch(ODEFamily, ODEFamily.DataConfig(limit=64))
    backprop = ODEFamily({}).train_step(batch, epoch=0.0)
    adjoint = ODEFamily({"solver": {"adjoint": True}}).train_step(batch, epoch=0.0)
    assert backprop["nfe"] >= 6 and backprop["nfe_backward"] == 0  # backprop through the solver's steps
    assert adjoint["nfe"] == backprop["nfe"] and adjoint["nfe_backward"] >= 6  # the adjoint solve
    assert backprop["mse"] == backprop["loss"]


def test_ode_val_metric_is_the_full_span_rollout():
    family = ODEFamily({})
    _, val = ODEFamily.load_data(ODEFamily.DataConfig())
    t, y = val.tensors
    assert t.shape == (1, 1000)
    family.eval()
    metrics = family.eval_batch((t, y))
    pred = family.integrate(y[:, 0], t[0])[:, 0]
    assert metrics["val_mse"] == pytest.approx((pred - y[0]).pow(2).mean().item(), rel=1e-5)
    assert metrics["val_solver_failures"] == 0


def test_adjoint_gradients_match_backprop():
    torch.manual_seed(0)
    field = ODEFunc(ODEConfig(hidden=8)).double()
    y0 = torch.tensor([[1.0, 0.5], [-0.5, 1.2], [0.2, -0.8]], dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    grads = {}
    for adjoint in (False, True):
        field.zero_grad()
        solver = SolverConfig(rtol=1e-10, atol=1e-12, adjoint=adjoint)
        solve(field, y0, t, solver).pow(2).sum().backward()
        grads[adjoint] = torch.cat([p.grad.flatten() for p in field.parameters()])
    assert grads[False].abs().max() > 1e-3  # a real gradient, not zeros
    assert torch.allclose(grads[True], grads[False], rtol=1e-6, atol=1e-9)


def test_latent_ode_elbo_terms_finite_and_exact():
    torch.manual_seed(0)
    family = LatentODEFamily({})
    batch = fixed_batch(LatentODEFamily, SeriesDataConfig(n_train=64, n_val=8), n=16)
    x_hat, mu, logvar = family.nets["latent_ode"](batch[0], batch[1])
    nll, kl = neg_elbo_terms(batch[1], x_hat, mu, logvar, obs_std=0.3)
    assert nll.shape == kl.shape == (16,)
    assert torch.isfinite(nll).all() and torch.isfinite(kl).all() and (kl >= 0).all()
    # A perfect mean costs log(sigma) + log(2 pi) / 2 per coordinate; N(0, 1) has KL 0.
    x = torch.randn(2, 3, 2)
    nll, kl = neg_elbo_terms(x, x, torch.zeros(2, 4), torch.zeros(2, 4), obs_std=0.5)
    assert nll.tolist() == pytest.approx([6 * (math.log(0.5) + 0.5 * math.log(2 * math.pi))] * 2)
    assert kl.tolist() == [0.0, 0.0]
    metrics = family.eval_batch(batch)
    assert {"val_neg_elbo", "val_mse", "val_extrap_mse"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())


def test_latent_path_reads_each_series_times_forward_and_backward():
    torch.manual_seed(0)
    model = LatentODEFamily({"solver": {"rtol": 1e-7, "atol": 1e-9}}).nets["latent_ode"]
    z0 = torch.randn(3, model.func.net[0].in_features)  # (B, latent_dim)
    times = torch.tensor([[0.0, 0.5, 1.0], [0.2, 0.7, 2.0], [-0.5, 0.0, 1.5]])
    with torch.no_grad():
        path = model.latent_path(z0, times)  # (3, 3, 4)
        for b in range(3):  # one series at a time, its own solve
            alone = model.latent_path(z0[b : b + 1], times[b : b + 1])[0]
            assert torch.allclose(path[b], alone, atol=1e-5)
        assert torch.allclose(path[0, 0], z0[0]) and torch.allclose(path[2, 1], z0[2])
        # Going back to t = -0.5 and forward 0.5 again returns to z0.
        back = path[2, 0:1]
        forward = solve(model.func, back, torch.tensor([0.0, 0.5]), model.solver)[-1]
        assert torch.allclose(forward, z0[2:3], atol=1e-5)


def test_latent_ode_prefix_encoding_and_linear_decoder():
    torch.manual_seed(0)
    family = LatentODEFamily({"decoder": "linear", "min_encoded_fraction": 0.5, "lr_decay": 0.5})
    assert isinstance(family.nets["latent_ode"].decoder, nn.Linear)
    batch = fixed_batch(LatentODEFamily, SeriesDataConfig(n_train=64, n_val=8), n=16)
    model = family.nets["latent_ode"]
    torch.manual_seed(1)
    x_hat, mu, _ = model(batch[0], batch[1], encoded=10)  # z0 from the first 10 of 30 observations
    assert x_hat.shape == batch[1].shape  # ... but every observation is reconstructed
    assert torch.allclose(mu, model.encode(batch[0][:, :10], batch[1][:, :10])[0])
    step = family.train_step(batch, epoch=1.0)
    assert math.isfinite(step["loss"]) and family.optimizers["latent_ode"].param_groups[0]["lr"] == pytest.approx(0.5 * family.cfg.lr)


def test_ode_rnn_encoder_evolves_its_state_between_observations():
    torch.manual_seed(0)
    family = LatentODEFamily({"encoder": "ode_rnn", "rnn_hidden": 8})
    encoder = family.nets["latent_ode"].encoder
    assert isinstance(encoder, ODERNNEncoder)
    batch = fixed_batch(LatentODEFamily, SeriesDataConfig(n_train=64, n_val=8, n_obs=12), n=4)
    t, x = batch[0], batch[1] / family.cfg.value_scale
    with torch.no_grad():
        # The time gaps reach the state through the ODE: stretching them changes q(z0).
        assert not torch.allclose(encoder(t, x)[0], encoder(2 * t, x)[0], atol=1e-4)
        # One RK4 step of a linear field h -> h A^T is h expm(s A)^T to fifth order in the step s.
        linear = nn.Linear(8, 8, bias=False)
        encoder.field = linear
        h, step = torch.randn(4, 8), torch.full((4, 1), -0.05)
        exact = h @ torch.linalg.matrix_exp(-0.05 * linear.weight).T
        assert torch.allclose(encoder.evolve(h, step), exact, atol=1e-6)
        # With a field of zero the state only changes at observations: a GRU cell read last to first.
        nn.init.zeros_(linear.weight)
        h = encoder.cell(x[:, -1])
        for i in range(x.shape[1] - 2, -1, -1):
            h = encoder.cell(x[:, i], h)
        assert torch.allclose(encoder(t, x)[0], encoder.out(h).chunk(2, dim=-1)[0], atol=1e-6)
    step = LatentODEFamily({"encoder": "ode_rnn", "rnn_hidden": 8}).train_step(batch, epoch=0.0)
    assert math.isfinite(step["loss"])


def test_rnn_baseline_metrics_on_the_same_points():
    torch.manual_seed(0)
    family = RNNFamily({})
    batch = fixed_batch(RNNFamily, SeriesDataConfig(n_train=64, n_val=8), n=16)
    losses = [family.train_step(batch, epoch=0.0)["loss"] for _ in range(5)]
    assert losses[-1] < losses[0]
    family.eval()
    metrics = family.eval_batch(batch)
    assert set(metrics) == {"val_mse", "val_extrap_mse"} and all(math.isfinite(v) for v in metrics.values())
    rollout = family.forecast(batch[0], batch[1], batch[3])
    assert rollout.shape == batch[4].shape


def test_rnn_reads_a_prefix_then_rolls_out_on_its_own_predictions():
    torch.manual_seed(0)
    family = RNNFamily({"min_read_fraction": 0.5})
    t_obs, x_obs = fixed_batch(RNNFamily, SeriesDataConfig(n_train=64, n_val=8), n=8)[:2]
    rnn = family.nets["rnn"]
    forced, mixed = rnn(t_obs, x_obs), rnn(t_obs, x_obs, read=10)
    assert forced.shape == mixed.shape == (8, 29, 2)
    assert torch.allclose(forced[:, :9], mixed[:, :9], atol=1e-6)  # read: one step ahead of each observation
    assert not torch.allclose(forced[:, 10:], mixed[:, 10:])  # then: its own predictions fed back
    noisy = x_obs.clone()
    noisy[:, 10:] += 100.0  # the rolled-out part never looks at observations after the 10th
    assert torch.equal(rnn(t_obs, noisy, read=10), mixed)
    assert math.isfinite(family.train_step((t_obs, x_obs), epoch=0.0)["loss"])


# --- solver limits ----------------------------------------------------------------------------

class BlowUp(nn.Module):
    """dy/dt = y^2, y(0) = 1: y = 1 / (1 - t), infinite at t = 1."""

    def forward(self, t, y):
        return y * y


class Tangent(nn.Module):
    """dy/dt = 1 + y^2: y = tan(t + c) reaches infinity within pi, from any start."""

    def forward(self, t, y):
        return 1.0 + y * y


class Stiff(nn.Module):
    """dy/dt = -1e4 (y - cos t): explicit methods need steps ~ 1e-4."""

    def forward(self, t, y):
        return -1e4 * (y - torch.cos(t))


def test_solver_limits_become_a_clear_error():
    y0 = torch.ones(1, 1)
    t = torch.tensor([0.0, 2.0])
    with pytest.raises(SolverError, match="did not converge") as err:
        solve(BlowUp(), y0, t, SolverConfig())
    assert err.value.reason in {"max_steps", "step_underflow", "non_finite", "max_evals"}
    with pytest.raises(SolverError) as err:
        solve(Stiff(), y0, torch.tensor([0.0, 1.0]), SolverConfig(max_num_steps=50))
    assert err.value.reason == "max_steps"
    with pytest.raises(SolverError, match="max_evals") as err:
        solve(Stiff(), y0, torch.linspace(0.0, 1.0, 100), SolverConfig(max_evals=500))
    assert err.value.reason == "max_evals"
    # A fixed step that would need too many steps is refused before any work.
    with pytest.raises(SolverError, match="needs 100000000 steps"):
        solve(Stiff(), y0, torch.tensor([0.0, 1.0]), SolverConfig(method="euler", step_size=1e-8))
    # Fixed-step methods do not check for blow-up themselves; the wrapper does.
    with pytest.raises(SolverError) as err:
        solve(Stiff(), y0, torch.tensor([0.0, 1.0]), SolverConfig(method="euler", step_size=0.01))
    assert err.value.reason == "non_finite"


def test_deployment_turns_a_solver_failure_into_a_422():
    from genray.deploy.ode import IntegrateRequest, integrate_trajectories

    family = ODEFamily({"solver": {"max_evals": 200}})
    family.nets["ode"].field = BlowUp()
    with pytest.raises(BadRequest, match=r"solver did not converge \(") as err:
        integrate_trajectories(family, IntegrateRequest(y0=[[1.0, 1.0]], t=[0.0, 5.0]))
    assert err.value.status_code == 422


def test_latent_ode_deployment_turns_a_solver_failure_into_a_422():
    from genray.deploy.latent_ode import ExtrapolateRequest, extrapolate_series

    family = LatentODEFamily({"solver": {"max_evals": 50}})
    family.nets["latent_ode"].func = Tangent()
    family.eval()
    body = {"times": [0.0, 0.5, 1.0], "values": [[5.0, 0.0], [4.0, 1.0], [3.0, 2.0]], "query_times": [0.0, 60.0]}
    with pytest.raises(BadRequest, match=r"solver did not converge \(") as err:
        extrapolate_series(family, ExtrapolateRequest(**body))
    assert err.value.status_code == 422


# --- deployments: validation and math, no HTTP -----------------------------------------------

def test_integrate_request_validation():
    from genray.deploy.ode import MAX_STATES, MAX_TIMES, IntegrateRequest, PortraitRequest

    ok = IntegrateRequest(y0=[2.0, 0.0], t=[0.0, 1.0])
    assert ok.y0 == [[2.0, 0.0]] and ok.method is None
    bad = [
        ({"y0": [[2, 0]], "t": [0.0, 1.0, 1.0]}, "t", "strictly increasing"),
        ({"y0": [[2, 0]], "t": [1.0, 0.0]}, "t", "strictly increasing"),
        ({"y0": [[2, 0]], "t": [0.0]}, "t", "at least 2"),
        ({"y0": [[2, 0, 1]], "t": [0.0, 1.0]}, "y0", "2 values"),
        ({"y0": [[2]], "t": [0.0, 1.0]}, "y0", "2 values"),
        ({"y0": [[2, 0]] * (MAX_STATES + 1), "t": [0.0, 1.0]}, "y0", "at most"),
        ({"y0": [[2, 0]], "t": [float(i) for i in range(MAX_TIMES + 1)]}, "t", "at most"),
        ({"y0": [[2, 0]], "t": [0.0, 1.0], "method": "magic"}, "method", "Input should be"),
        ({"y0": [[2, 0]], "t": [0.0, 1.0], "extra": 1}, "extra", "Extra inputs"),
    ]
    for body, field, message in bad:
        with pytest.raises(ValidationError, match=message) as err:
            IntegrateRequest.model_validate(body)
        assert err.value.errors()[0]["loc"][0] == field, body
    with pytest.raises(ValidationError, match="finite"):
        IntegrateRequest.model_validate_json('{"y0": [[NaN, 0]], "t": [0, 1]}')
    with pytest.raises(ValidationError, match="finite"):
        IntegrateRequest.model_validate_json('{"y0": [[2, 0]], "t": [0, Infinity]}')
    with pytest.raises(ValidationError, match="less than or equal"):
        PortraitRequest(t_end=1e6)


def test_extrapolate_request_validation():
    from genray.deploy.latent_ode import ExtrapolateRequest, MAX_OBSERVATIONS, MAX_REFINE_STEPS, check_sizes

    ok = ExtrapolateRequest(times=[0.0, 0.5], values=[[1.0, 2.0], [1.5, 2.5]], query_times=[-1.0, 3.0])
    check_sizes(ok, 2)
    with pytest.raises(BadRequest, match="expected 3 values"):
        check_sizes(ok, 3)
    series = {"times": [0.0, 0.5], "values": [[1.0, 2.0], [1.5, 2.5]], "query_times": [1.0, 2.0]}
    bad = [
        ({"times": [0.0, 0.0]}, "times", "strictly increasing"),
        ({"query_times": [2.0, 1.0]}, "query_times", "strictly increasing"),
        ({"values": [[1.0, 2.0]]}, "values", "one value per time"),
        ({"values": [[1.0, 2.0], [1.0]]}, "values", "same non-zero size"),
        ({"query_times": [1.0, 500.0]}, "query_times", "further than"),
        ({"times": [float(i) for i in range(MAX_OBSERVATIONS + 1)]}, "times", "at most"),
        ({"refine_steps": -1}, "refine_steps", "greater than or equal to 0"),
        ({"refine_steps": MAX_REFINE_STEPS + 1}, "refine_steps", "less than or equal"),
    ]
    for change, field, message in bad:
        with pytest.raises(ValidationError, match=message) as err:
            ExtrapolateRequest.model_validate({**series, **change})
        assert err.value.errors()[0]["loc"][0] == field, change
    with pytest.raises(ValidationError, match="finite"):
        ExtrapolateRequest.model_validate_json('{"times": [0, 1], "values": [[NaN, 1], [1, 1]], "query_times": [2]}')


def test_integrate_and_portrait_math():
    from genray.deploy.ode import IntegrateRequest, PortraitRequest, draw_portrait, integrate_trajectories

    family = ODEFamily({})
    family.eval()
    out = integrate_trajectories(family, IntegrateRequest(y0=[[2.0, 0.0], [0.0, 1.0]], t=[0.0, 0.5, 1.0, 2.0]))
    assert out["shape"] == [4, 2, 2] and out["y"][0] == [[2.0, 0.0], [0.0, 1.0]] and out["evals"] > 0
    fixed = integrate_trajectories(family, IntegrateRequest(y0=[2.0, 0.0], t=[0.0, 1.0], method="rk4"))
    assert fixed["method"] == "rk4" and fixed["shape"] == [2, 1, 2]
    image = draw_portrait(family, PortraitRequest(y0=[[2.0, 0.0], [1.0, 1.0]], t_end=5.0, points=50))
    png = Image.open(io.BytesIO(base64.b64decode(image["image"])))
    assert png.format == "PNG" and png.size[0] > 100


def test_extrapolate_math_shifts_the_clock_to_the_first_observation():
    from genray.deploy.latent_ode import ExtrapolateRequest, extrapolate_series

    torch.manual_seed(0)
    family = LatentODEFamily({})
    family.eval()
    series = spiral_series(1, n_obs=12, n_extrap=5, seed=1)
    t_obs, x_obs, _, t_ext, _, _ = series.tensors
    body = {"times": t_obs[0].tolist(), "values": x_obs[0].tolist(), "query_times": [-0.5] + t_ext[0].tolist()}
    out = extrapolate_series(family, ExtrapolateRequest(**body))
    assert len(out["mean"]) == 6 and len(out["mean"][0]) == 2 and len(out["z0_std"]) == family.cfg.latent_dim
    expected = family.predict(t_obs, x_obs, torch.tensor([body["query_times"]]))[0]
    assert torch.allclose(torch.tensor(out["mean"]), expected, atol=1e-5)
    shifted = {k: [q + 10.0 for q in v] if k != "values" else v for k, v in body.items()}
    again = extrapolate_series(family, ExtrapolateRequest(**shifted))
    assert torch.allclose(torch.tensor(again["mean"]), expected, atol=1e-4)
    assert out["z0"] == out["z0_mean"]  # no refinement asked


def test_refining_z0_fits_the_observations_better_and_leaves_the_networks_alone():
    from genray.deploy.latent_ode import ExtrapolateRequest, extrapolate_series

    torch.manual_seed(0)
    family = LatentODEFamily({})
    family.eval()
    t_obs, x_obs, _, t_ext, _, _ = spiral_series(3, n_obs=12, n_extrap=5, seed=1).tensors
    mu, _ = family.encode(t_obs, x_obs)

    def objective(z):  # what refine minimises: -log p(x | z0) - log p(z0), up to constants
        x_hat = family.trajectory(z, t_obs)
        return (0.5 * ((x_obs - x_hat) / family.cfg.obs_std).pow(2).flatten(1).sum(1) + 0.5 * z.pow(2).sum(1))

    z = family.refine(t_obs, x_obs, mu, steps=30)
    assert z.shape == mu.shape and (objective(z) < objective(mu)).all()
    assert all(p.grad is None for p in family.nets["latent_ode"].parameters())
    assert torch.equal(family.refine(t_obs, x_obs, mu, steps=0), mu)

    body = {"times": t_obs[0].tolist(), "values": x_obs[0].tolist(), "query_times": t_ext[0].tolist(),
            "refine_steps": 30}
    out = extrapolate_series(family, ExtrapolateRequest(**body))
    assert torch.allclose(torch.tensor(out["z0"]), z[0], atol=1e-5) and out["z0"] != out["z0_mean"]
    assert torch.allclose(torch.tensor(out["mean"]), family.trajectory(z[:1], t_ext[:1])[0], atol=1e-4)


# --- the ode app over HTTP on the shared Ray session -----------------------------------------

@pytest.mark.ray
def test_ode_app_over_http_rejects_bad_input_and_failed_solves(serve_url, tmp_path):
    import requests
    from ray import serve

    from genray import checkpoint
    from genray.config import build_config
    from genray.deploy import build_app

    cfg = build_config("ode", overrides=["model.solver.max_evals=2000"])
    family = ODEFamily(cfg.model)
    checkpoint.save(tmp_path / "ode", family="ode", config=cfg.to_dict(), state=family.state_dict(), epoch=0, metrics={})
    app = build_app({"model": str(tmp_path / "ode")})
    app = app._bound_deployment.options(ray_actor_options={"num_cpus": 0}).bind(*app._bound_deployment.init_args)
    serve.run(app, name="ode-http", route_prefix="/ode-http")
    url = f"{serve_url}/ode-http"
    try:
        def post(path, body):
            return requests.post(url + path, data=body if isinstance(body, str) else None,
                                 json=None if isinstance(body, str) else body,
                                 headers={"content-type": "application/json"}, timeout=60)

        for body, status, says in [
            ('{"y0": [[NaN, 0]], "t": [0, 1]}', 422, "y0"),
            ({"y0": [[2, 0]], "t": [0, 2, 1]}, 422, "strictly increasing"),
            ({"y0": [[2, 0, 1]], "t": [0, 1]}, 422, "2 values"),
            ({"y0": [[2, 0]], "t": [float(i) for i in range(6000)]}, 422, "t"),
            ("{not json", 400, "request body is not valid JSON"),
            # rk4 steps from output time to output time: 4 x 4999 evaluations; the model allows 2000.
            ({"y0": [[2, 0]], "t": [float(i) for i in range(5000)], "method": "rk4"}, 422,
             "solver did not converge (max_evals)"),
        ]:
            r = post("/integrate", body)
            assert r.status_code == status and says in r.json()["error"], (body if isinstance(body, str) else "...", r.text)
        ok = post("/integrate", {"y0": [2, 0], "t": [0, 0.5, 1]})
        assert ok.status_code == 200 and ok.json()["shape"] == [3, 1, 2]  # the replica carried on
        png = post("/portrait", {"y0": [[2, 0], [1, 1]], "t_end": 2.0, "points": 40})
        assert png.status_code == 200
        image = Image.open(io.BytesIO(base64.b64decode(png.json()["image"])))
        assert image.format == "PNG" and min(image.size) > 100
    finally:
        serve.delete("ode-http")
