"""Verification of the heat solver (genray.heat): exact answers where they exist, no Ray.

- a manufactured smooth solution converges at second order in h (dt ~ h^2);
- the same discretisation assembled independently as a scipy sparse matrix and solved directly gives
  the same time history;
- the discrete maximum principle, the x1 <-> x2 symmetry when k = 1, CG's residuals, batch = single
  solves, and clear errors for bad input;
- float32 fields and CG agree with float64 to within float32's roundoff and CG's tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from genray.heat import (
    DEFAULT_RTOL,
    TRIANGLE,
    HeatProblem,
    HeatStepper,
    conductivity_field,
    course_problem,
    grid,
    render_gif,
    render_png,
    simulate,
    solve,
    solve_batch,
    solve_frames,
)

CPU = "cpu"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These grids are small: one thread is as fast, and far steadier on a busy shared machine (torch's
    thread barriers stall when the cores are taken)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- a manufactured solution ------------------------------------------------------------------------
# u = exp(-t) (sin(2 x1 + x2) + x1 x2) with k = 1 + x1^2 + x2, and the source that makes it exact for
# u_t = div(k grad u) - u + f: since u_t = -u, f = -div(k grad u) = -exp(-t) (grad k . grad phi + k lap phi).


def _k_smooth(x1, x2):
    return 1.0 + x1**2 + x2


def _u_exact(x1, x2, t):
    return math.exp(-t) * (torch.sin(2 * x1 + x2) + x1 * x2)


def _f_manufactured(x1, x2, t):
    s = 2 * x1 + x2
    grad_k_dot_grad_phi = 2 * x1 * (2 * torch.cos(s) + x2) + (torch.cos(s) + x1)
    k_lap_phi = -5.0 * _k_smooth(x1, x2) * torch.sin(s)
    return -math.exp(-t) * (grad_k_dot_grad_phi + k_lap_phi)


MANUFACTURED = HeatProblem(
    conductivity=_k_smooth,
    boundary=_u_exact,
    source=_f_manufactured,
    initial=lambda x1, x2: _u_exact(x1, x2, 0.0),
)


def test_manufactured_solution_converges_at_second_order():
    t_end, sizes, errors = 1.0 / 16, (8, 16, 32), []
    for n in sizes:
        result = simulate(MANUFACTURED, n, dt=1.0 / n**2, t_end=t_end, rtol=1e-12, device=CPU)  # dt = h^2
        x1, x2 = grid(n)
        errors.append((result.u[0] - _u_exact(x1, x2, t_end)).abs().max().item())
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]
    print(f"\nmanufactured solution: max errors {errors}, orders {orders}")
    assert errors[-1] < 1e-4
    assert all(1.8 <= p <= 2.2 for p in orders), orders


def test_float32_agrees_with_float64_on_the_manufactured_solution():
    """float32 fields and CG, at float32's smallest rtol (1e-6), against float64 at 1e-12.

    Tolerance 1e-5 (|u| <= 1.2 here): each step adds roundoff of a few float32 units (1.2e-7) and
    CG's stopping error, below rtol = 1e-6 relative; measured 2.6e-7 (n = 8) to 7e-7 (n = 32, 64 steps).
    That is 100x below the discretisation error at n = 32 (6.4e-5), so second order must still show.
    """
    t_end, sizes, errors = 1.0 / 16, (8, 16, 32), []
    for n in sizes:
        single = simulate(MANUFACTURED, n, 1.0 / n**2, t_end, rtol=1e-6, device=CPU, dtype="float32")
        double = simulate(MANUFACTURED, n, 1.0 / n**2, t_end, rtol=1e-12, device=CPU)
        assert single.u.dtype == torch.float32 and torch.all(single.residuals <= 1e-6)
        assert (single.u.double() - double.u).abs().max().item() < 1e-5
        x1, x2 = grid(n)
        errors.append((single.u[0].double() - _u_exact(x1, x2, t_end)).abs().max().item())
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]
    assert all(1.8 <= p <= 2.2 for p in orders), orders


# --- the same discretisation, assembled independently in scipy and solved directly ----------------


def _scipy_history(n: int, dt: float, steps: int, omega: float, k_in: float, k_out: float) -> np.ndarray:
    """Backward Euler for the course problem with a sparse matrix built node by node and spsolve."""
    x1, x2 = grid(n)
    k_in_t, k_out_t = torch.tensor([k_in], dtype=torch.float64), torch.tensor([k_out], dtype=torch.float64)
    k = conductivity_field(x1, x2, k_in_t, k_out_t)[0].numpy()  # float64, or the faces lose digits
    h2, m = 1.0 / n**2, n - 1
    index = lambda i, j: (i - 1) * m + (j - 1)  # interior node (i, j), 1 <= i, j <= n-1  # noqa: E731
    rows, cols, vals = [], [], []
    boundary_links = []  # (row, boundary node, weight): moves g to the right-hand side
    for i in range(1, n):
        for j in range(1, n):
            p, diag = index(i, j), 1.0 / dt + 1.0
            for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
                face = 2 * k[i, j] * k[a, b] / (k[i, j] + k[a, b]) / h2
                diag += face
                if 1 <= a <= n - 1 and 1 <= b <= n - 1:
                    rows.append(p), cols.append(index(a, b)), vals.append(-face)
                else:
                    boundary_links.append((p, a, b, face))
            rows.append(p), cols.append(p), vals.append(diag)
    matrix = sp.csr_matrix((vals, (rows, cols)), shape=(m * m, m * m))
    u = np.zeros(m * m)
    for s in range(1, steps + 1):
        rise = 1.0 - math.exp(-omega * s * dt)
        rhs = u / dt
        for p, a, b, face in boundary_links:
            rhs[p] += face * (rise if (a == 0 or b == 0) else 0.0)  # u = rise on x1 = 0, x2 = 0; else 0
        u = spla.spsolve(matrix, rhs)
    return u.reshape(m, m)


# float64 at rtol 1e-13 must agree to 1e-8. float32 (its default rtol, 1e-5; at these n the V-cycle's
# coarsest grid is the whole grid, solved directly, so CG is exact after one iteration): 12 steps of
# float32 roundoff on |u| <= 0.4, whose own rounding is 2.4e-8; measured 1e-7, so 1e-6.
@pytest.mark.parametrize("dtype, rtol, tolerance", [("float64", 1e-13, 1e-8), ("float32", None, 1e-6)])
@pytest.mark.parametrize("n", [20, 32])
def test_matches_sparse_direct_solve(n, dtype, rtol, tolerance):
    dt, steps, omega, k_in, k_out = 2e-3, 12, 20.0, 50.0, 1.0
    ours = solve(n, dt, steps * dt, omega, k_in, k_out, rtol=rtol, device=CPU, dtype=dtype)
    reference = _scipy_history(n, dt, steps, omega, k_in, k_out)
    assert ours.shape == (n + 1, n + 1) and ours.dtype == getattr(torch, dtype)
    assert np.abs(ours[1:-1, 1:-1].double().numpy() - reference).max() < tolerance
    rise = 1.0 - math.exp(-omega * steps * dt)
    assert torch.all(ours[0, :-1] == rise) and torch.all(ours[:-1, 0] == rise)  # heated edges
    assert torch.all(ours[-1, 1:] == 0) and torch.all(ours[1:, -1] == 0)  # cold edges


# --- qualitative properties ----------------------------------------------------------------------


@pytest.mark.parametrize("dt, t_end, omega", [(1e-3, 0.05, 20.0), (0.05, 1.0, 20.0), (0.01, 0.2, 200.0)])
def test_discrete_maximum_principle(dt, t_end, omega):
    times, frames = solve_frames(40, dt, t_end, omega=omega, num_frames=8, rtol=1e-12, device=CPU)
    for t, u in zip(times.tolist(), frames):
        upper = 1.0 - math.exp(-omega * t)
        assert u.min().item() >= -1e-12
        assert u.max().item() <= upper + 1e-12, (t, u.max().item(), upper)


def test_symmetric_in_x1_x2_when_k_is_constant():
    u = solve(32, 1e-2, 0.1, k_in=1.0, k_out=1.0, device=CPU)
    assert (u - u.T).abs().max().item() < 1e-10
    w = solve(32, 1e-2, 0.1, device=CPU)  # the triangle is not symmetric, so neither is the answer
    assert (w - w.T).abs().max().item() > 1e-3


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-9), ("float32", 1e-5)])
def test_cg_meets_the_tolerance_at_every_step_in_few_iterations(dtype, rtol):
    iterations = {}
    for n in (64, 256):
        result = simulate(course_problem(), n, 1e-3, 0.01, rtol=rtol, device=CPU, dtype=dtype)
        assert result.steps == 10 and result.residuals.shape == (10, 1)
        assert torch.all(result.residuals <= rtol)
        assert torch.all(result.iterations >= 1)
        iterations[n] = result.iterations.max().item()
        if dtype == "float32":
            # The answer differs from float64's by CG's stopping error (rtol relative, per step) and
            # roundoff: measured 2.4e-6 at n = 256 on |u| <= 0.4.
            double = simulate(course_problem(), n, 1e-3, 0.01, rtol=1e-9, device=CPU)
            assert (result.u.double() - double.u).abs().max().item() < 2e-5
    # Multigrid: the iteration count does not grow with n (Jacobi's doubles with each doubling of n).
    assert iterations[256] <= iterations[64] + 2 and iterations[256] <= 15, iterations


def test_roundoff_floor_is_reported_not_looped_on():
    # k * dt * n^2 ~ 4e10: float64 cannot resolve ||b - Au|| / ||b|| = 1e-14; CG stops at its floor.
    with pytest.warns(RuntimeWarning, match="CG stalled"):
        result = simulate(course_problem(k_in=1e6), 64, 10.0, 20.0, rtol=1e-14, device=CPU)
    assert torch.all(result.residuals < 1e-8) and torch.all(result.iterations < 60)


# Four members that converge after different numbers of iterations (9 to 11 in float64 at dt = 1e-2);
# in float32 at dt = 0.1 the k_in = 1e4 member stalls at its roundoff floor, through CG's restarts.
_SPREAD = dict(omega=[20.0, 200.0, 5.0, 20.0], k_in=[1.0, 50.0, 1e3, 1e4], k_out=[1.0, 1.0, 0.1, 1.0])


@pytest.mark.parametrize("dtype, dt", [("float64", 1e-2), ("float32", 0.1)])
def test_reading_convergence_less_often_changes_nothing(dtype, dt):
    """CG reads its convergence test to the host on a schedule (every check_every iterations, the first
    read predicted from the previous step or not); a member that has converged is frozen meanwhile, so
    fields, iteration counts and residuals are bit for bit those of reading after every iteration,
    over several steps and whatever the batch's spread of iteration counts."""

    def history(check_every, predict_checks):
        stepper = HeatStepper(course_problem(**_SPREAD), 48, dt, device=CPU, dtype=dtype, check_every=check_every,
                              predict_checks=predict_checks)
        u, steps = stepper.initial(), []
        for s in range(3):
            u, iterations, residuals = stepper.step(u, s * dt)
            steps.append((u, iterations, residuals))
        return steps

    every = history(1, False)
    assert len({its for _, iterations, _ in every for its in iterations.tolist()}) >= 2  # a real spread
    for schedule in [(3, False), (8, False), (64, False), (1, True), (4, True)]:
        for got, want in zip(history(*schedule), every):
            assert all(torch.equal(g, w) for g, w in zip(got, want)), schedule
    with pytest.raises(ValueError, match="check_every must be an int >= 1, got 0"):
        HeatStepper(course_problem(), 8, dt, device=CPU, check_every=0)


def test_predicted_checks_read_the_host_four_times_a_step_and_run_no_idle_iteration():
    """The schedule a GPU gets (predict_checks): from the second step on, 4 reads a step (the true
    residual before and after, the recurrence's one iteration before the last step's count and at it)
    where reading after every iteration takes count + 2, and every V-cycle is one a member needed."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class HostReads(TorchDispatchMode):  # bool(t) and t.item() both end in _local_scalar_dense
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            HostReads.count += func is torch.ops.aten._local_scalar_dense.default
            return func(*args, **(kwargs or {}))

    for predict_checks in (False, True):
        stepper = HeatStepper(course_problem(), 64, 1e-3, device=CPU, predict_checks=predict_checks)
        cycle, cycles = stepper.precondition, [0]

        def counted(r, cycle=cycle):
            cycles[0] += 1
            return cycle(r)

        stepper.precondition = counted
        u = stepper.initial()
        for s in range(5):
            HostReads.count, cycles[0] = 0, 0
            with HostReads():
                u, iterations, _ = stepper.step(u, s * 1e-3)
            count = iterations.item()
            assert cycles[0] == count  # no iteration in which every member was frozen
            if s > 0:
                assert HostReads.count == (4 if predict_checks else count + 2), (predict_checks, count)


def test_reported_iterations_and_residuals_are_honest_when_checking_every_few_iterations():
    """With check_every = 4: each member's residual, recomputed from its answer, is the one reported
    and meets rtol; and each member alone converges within exactly its reported iteration count
    (max_iter = count succeeds, count - 1 does not)."""
    dt, rtol = 1e-2, 1e-10
    stepper = HeatStepper(course_problem(**_SPREAD), 48, dt, rtol=rtol, device=CPU, check_every=4)
    u = stepper.step(stepper.initial(), 0.0)[0]  # a warm state
    b = stepper.rhs(u, 2 * dt)
    x, iterations, residuals = stepper.solve_system(b, u[:, 1:-1, 1:-1].clone())
    recomputed = torch.linalg.vector_norm(stepper.apply.residual(b, x), dim=(1, 2)) / torch.linalg.vector_norm(b, dim=(1, 2))
    assert torch.equal(recomputed, residuals) and torch.all(residuals <= rtol)
    for i, count in enumerate(iterations.tolist()):
        member = course_problem(**{key: values[i] for key, values in _SPREAD.items()})
        alone = HeatStepper(member, 48, dt, rtol=rtol, device=CPU, check_every=4, max_iter=count)
        b_i, guess = alone.rhs(u[i : i + 1], 2 * dt), u[i : i + 1, 1:-1, 1:-1]
        assert alone.solve_system(b_i, guess.clone())[1].item() == count
        alone.max_iter = count - 1
        with pytest.raises(RuntimeError, match="CG did not reach rtol"):
            alone.solve_system(b_i, guess.clone())


@pytest.mark.parametrize("preconditioner", ["multigrid", "multigrid64", "jacobi", "none"])
def test_preconditioners_agree(preconditioner):
    reference = solve(24, 5e-3, 0.05, rtol=1e-12, preconditioner="multigrid64", device=CPU)
    u = solve(24, 5e-3, 0.05, rtol=1e-12, preconditioner=preconditioner, device=CPU)
    assert (u - reference).abs().max().item() < 1e-9


@pytest.mark.parametrize("n", [2, 3, 17, 34])
def test_any_n_works(n):  # odd n, n with one factor of 2, tiny grids
    result = simulate(course_problem(), n, 1e-2, 0.05, device=CPU)
    assert result.u.shape == (1, n + 1, n + 1)
    assert torch.all(result.residuals <= 1e-10)


def test_batch_equals_single_solves():
    omega, k_in, k_out = [20.0, 5.0, 20.0], [50.0, 50.0, 1.0], [1.0, 2.0, 1.0]
    batch = solve_batch(24, 1e-2, 0.1, omega, k_in, k_out, device=CPU)
    assert batch.shape == (3, 25, 25)
    for i in range(3):
        single = solve(24, 1e-2, 0.1, omega[i], k_in[i], k_out[i], device=CPU)
        assert torch.allclose(batch[i], single, rtol=0, atol=1e-12)
    broadcast = solve_batch(24, 1e-2, 0.1, omega=[20.0, 5.0], device=CPU)  # scalars broadcast
    assert broadcast.shape == (2, 25, 25)


def test_time_grid_and_frames():
    result = simulate(course_problem(), 16, 0.03, 0.1, num_frames=3, device=CPU)
    assert result.steps == 3 and result.dt == pytest.approx(0.1 / 3)  # round(0.1/0.03) steps, stretched
    assert result.times.tolist() == pytest.approx([0.0, 2 * 0.1 / 3, 0.1])
    assert torch.equal(result.frames[-1], result.u.cpu())
    assert torch.all(solve(16, 0.1, 0.0, device=CPU) == 0)  # t_end = 0: the initial state
    times, frames = solve_frames(16, 0.01, 0.02, num_frames=10, device=CPU)  # fewer steps than frames
    assert times.tolist() == pytest.approx([0.0, 0.01, 0.02]) and frames.shape == (3, 17, 17)


def test_conductivity_marks_the_triangle():
    x1 = torch.tensor([[0.45, 0.2, 0.7, 0.5, 0.1, 0.9, 0.5, 0.5, 0.2]], dtype=torch.float64)
    x2 = torch.tensor([[0.5, 0.5, 0.2, 0.8, 0.1, 0.9, 0.4, 0.3, 0.45]], dtype=torch.float64)
    k = conductivity_field(x1, x2, torch.tensor([50.0], dtype=torch.float64), torch.tensor([1.0]))
    # inside; the 3 vertices (edges count as inside); 2 far outside; inside; just below edge AB
    # (x2 = 0.32 there); just below vertex A
    assert k[0, 0].tolist() == [50.0, 50.0, 50.0, 50.0, 1.0, 1.0, 50.0, 1.0, 1.0]
    assert len(TRIANGLE) == 3


# --- clear errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=1), r"n must be >= 2, got 1"),
        (dict(n=2.5), r"n must be an int"),
        (dict(dt=0.0), r"dt must be finite and > 0, got 0.0"),
        (dict(dt=-1e-3), r"dt must be finite and > 0"),
        (dict(dt=float("nan")), r"dt must be finite and > 0"),
        (dict(t_end=-1.0), r"t_end must be finite and >= 0, got -1.0"),
        (dict(t_end=float("inf")), r"t_end must be finite and >= 0"),
        (dict(k_in=0.0), r"k_in must be > 0"),
        (dict(k_out=-1.0), r"k_out must be > 0"),
        (dict(k_in=float("inf")), r"k_in must be finite"),
        (dict(k_out=float("nan")), r"k_out must be finite"),
        (dict(omega=float("nan")), r"omega must be finite"),
        (dict(omega=float("-inf")), r"omega must be finite"),
        (dict(n=100_000), r"n must be <= \d+ for a batch of 1.*MAX_SOLVER_BYTES"),
        (dict(rtol=0.0), r"rtol must be in \[1e-14, 1\)"),
        (dict(rtol=1e-10, dtype="float32"), r"rtol must be in \[1e-06, 1\) for dtype float32, got 1e-10: .*float64"),
        (dict(dtype="float16"), r"dtype must be one of \('float64', 'float32'\)"),
        (dict(dtype=torch.bfloat16), r"dtype must be one of"),
        (dict(max_iter=0), r"max_iter must be an int >= 1"),
        (dict(preconditioner="ilu"), r"preconditioner must be one of"),
    ],
)
def test_invalid_input_raises_a_clear_error(kwargs, message):
    args = dict(n=8, dt=1e-2, t_end=0.05, device=CPU) | kwargs
    with pytest.raises(ValueError, match=message):
        solve(**args)


def test_invalid_batch_and_frames():
    with pytest.raises(ValueError, match="same length"):
        solve_batch(8, 1e-2, 0.05, omega=[1.0, 2.0], k_in=[1.0, 2.0, 3.0], device=CPU)
    with pytest.raises(ValueError, match=r"n must be <= \d+ for a batch of 64"):
        solve_batch(2048, 1e-2, 0.05, omega=[20.0] * 64, device=CPU)
    with pytest.raises(ValueError, match="num_frames must be an int >= 2"):
        solve_frames(8, 1e-2, 0.05, num_frames=1, device=CPU)


# --- the compiled path (HeatStepper(compile=True)) ---------------------------------------------------
# On the CPU, torch.compile runs inductor's C++ kernels without CUDA graphs; the GPU runs the same
# graphs as CUDA graphs. Compiling costs seconds here, so one fixture compiles each case once.

# (n, dtype, tolerance on max |u_compiled - u_eager| / max |u_eager| after every step). n = 64 has a
# two-grid V-cycle, float32 in both dtypes; n = 32 is solved by the coarsest grid's dense inverse
# alone, which keeps float32's compile short and still runs its update, direction and restarts.
# float64: the V-cycle only preconditions, so CG takes inductor's fused, reordered sums to the same
# 1e-10 answer: measured 5e-16, tolerance 1e-12. float32: fields differ by CG's stopping error (rtol
# 1e-5 relative) and float32 roundoff: measured 7e-8 at n = 64, tolerance 1e-5.
_COMPILED_CASES = [(64, "float64", 1e-12), (32, "float32", 1e-5)]
_COMPILED_STEPS = 4


@pytest.fixture(scope="module")
def compiled_and_eager():
    """For each case, `simulate` of a batch of two problems (different k_in, omega) over
    _COMPILED_STEPS steps, compiled and eager, with every step's field; and the number of graphs
    dynamo compiled during the compiled run."""
    from torch._dynamo.utils import counters

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    problem = course_problem(omega=[20.0, 5.0], k_in=[50.0, 1e3])
    runs = {}
    for n, dtype, _ in _COMPILED_CASES:
        before = counters["stats"]["unique_graphs"]
        kwargs = dict(device=CPU, dtype=dtype, num_frames=_COMPILED_STEPS + 1)
        compiled = simulate(problem, n, 1e-3, _COMPILED_STEPS * 1e-3, compile=True, **kwargs)
        graphs = counters["stats"]["unique_graphs"] - before
        runs[n, dtype] = compiled, simulate(problem, n, 1e-3, _COMPILED_STEPS * 1e-3, **kwargs), graphs
    torch.set_num_threads(threads)
    return runs


@pytest.mark.parametrize("n, dtype, tolerance", _COMPILED_CASES)
def test_compiled_steps_give_the_eager_fields_and_iterations(compiled_and_eager, n, dtype, tolerance):
    compiled, eager, _ = compiled_and_eager[n, dtype]
    assert compiled.frames.shape == eager.frames.shape == (_COMPILED_STEPS + 1, 2, n + 1, n + 1)
    assert compiled.u.dtype == getattr(torch, dtype)
    for step in range(1, _COMPILED_STEPS + 1):
        got, want = compiled.frames[step].double(), eager.frames[step].double()
        assert (got - want).abs().max().item() <= tolerance * want.abs().max().item(), step
    assert (compiled.iterations - eager.iterations).abs().max().item() <= 1
    assert torch.all(compiled.residuals <= DEFAULT_RTOL[dtype])


@pytest.mark.parametrize("n, dtype, tolerance", _COMPILED_CASES)
def test_a_compiled_stepper_compiles_its_two_graphs_once(compiled_and_eager, n, dtype, tolerance):
    """The update of x and r and the V-cycle with the next direction: two graphs for all the steps."""
    assert compiled_and_eager[n, dtype][2] == 2


def test_the_compiled_iteration_is_one_graph_without_host_reads():
    """What CGIteration(compile=True) compiles, traced by dynamo alone into a backend that keeps the
    graphs (as torch._dynamo.explain does, but without its global torch._dynamo.reset()), and without
    fullgraph, which would capture a .item() into the graph instead of breaking it: one graph per part.
    A read to the host (.item(), bool(t)) would break the graph there; on a GPU it would also be a sync
    and keep the part out of a CUDA graph."""
    from genray.heat.pcg import CGIteration, CGWork

    stepper = HeatStepper(course_problem(omega=[20.0, 5.0]), 64, 1e-3, device=CPU)
    work = CGWork((2, 63, 63), torch.float64, CPU)
    iteration = CGIteration(stepper.apply, stepper.precondition, work, stepper.rtol)
    work.r.normal_(), work.active.fill_(True), work.bnorm.fill_(1.0)
    for part in (iteration.update, iteration.direction):
        graphs = []

        def keep(graph, example_inputs):
            graphs.append(graph)
            return graph.forward

        torch.compile(part, backend=keep, dynamic=False, isolate_recompiles=True)()
        assert len(graphs) == 1
        calls = {str(node.target) for graph in graphs for node in graph.graph.nodes}
        assert not calls & {"item", "tolist", "__bool__"}, calls


def test_a_compiled_iteration_refuses_to_recompile():
    """A compiled part has room for one graph: whatever would compile a second one (here a new rtol,
    which the graph holds as a constant) raises instead of quietly running another graph."""
    from genray.heat.pcg import CGIteration, CGWork

    work = CGWork((1, 3, 3), torch.float64, CPU)
    iteration = CGIteration(lambda p: 2.0 * p, lambda r: r.clone(), work, 1e-8, compile=True)
    work.r.fill_(1.0), work.active.fill_(True), work.bnorm.fill_(3.0)
    iteration.direction()  # p = z = r
    iteration.update()  # A = 2 I: x = r / 2 in one step
    assert torch.allclose(work.x, torch.full_like(work.x, 0.5)) and work.iterations.tolist() == [1]
    iteration.rtol = 1e-6
    with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
        iteration.update()


# --- pictures -------------------------------------------------------------------------------------


def test_render_png_and_gif(tmp_path):
    times, frames = solve_frames(16, 1e-2, 0.05, num_frames=4, device=CPU)
    png = render_png(frames[-1], tmp_path / "u.png", title="t = 0.05")
    assert png.startswith(b"\x89PNG") and (tmp_path / "u.png").read_bytes() == png
    gif = render_gif(times, frames, size=64)
    assert gif.startswith(b"GIF89a")
    from PIL import Image
    import io

    assert Image.open(io.BytesIO(gif)).n_frames == 4
    with pytest.raises(ValueError, match="square"):
        render_png(torch.zeros(3, 4))


def test_bench_smoke(tmp_path):
    import json

    from genray.bench.heat import METHODS, markdown_table, run

    result = run(sizes=(16,), out=tmp_path / "heat.json", warmup=1, steps=1, threads=1)
    assert json.loads((tmp_path / "heat.json").read_text())["rows"] == result["rows"]
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == list(METHODS)  # every method timed, pyamg included
    assert all(row["max_abs_diff_vs_splu"] < 1e-8 for row in rows.values())
    assert all(row["seconds_per_step"] > 0 and row["timed_steps"] == 1 for row in rows.values())
    amg = rows["pyamg sa + cg"]
    # AMG-preconditioned CG converges in a handful of iterations, far fewer than Jacobi CG's.
    assert amg["setup_seconds"] > 0 and 1 <= amg["iterations_per_step"] < rows["scipy cg + jacobi"]["iterations_per_step"]
    import pyamg

    assert result["versions"]["pyamg"] == pyamg.__version__
    table = markdown_table(result)
    line = next(line for line in table.splitlines() if line.startswith("| 16 | pyamg sa + cg |"))
    assert f"| {amg['iterations_per_step']:.1f} |" in line and f"| {amg['max_abs_diff_vs_splu']:.1e} |" in line
    # The best of splu and pyamg is the 1.00x of the "vs best" column: one of the two rows shows it.
    assert any("| 1.00x / " in row for row in table.splitlines() if "splu |" in row or "pyamg sa + cg |" in row)


def test_step_times_on_the_cpu_at_tiny_sizes():
    """The GPU benchmark's timing function (genray bench gpu's heat part), run on the CPU: a row per
    (n, dtype), each field there and plausible, the residuals within each dtype's default rtol."""
    import statistics

    from genray.bench.heat import step_times

    rows = step_times(sizes=(32, 64), steps=2, warmup=1, device=CPU)
    assert [(row["n"], row["dtype"]) for row in rows] == [(32, "float64"), (32, "float32"), (64, "float64"), (64, "float32")]
    for row in rows:
        assert set(row) == {"n", "dtype", "device", "rtol", "check_every", "predict_checks", "compiled", "ms_per_step",
                            "step_ms", "cg_iterations", "residual", "max_residual", "setup_seconds", "first_step_seconds"}
        assert row["device"] == "cpu" and row["rtol"] == DEFAULT_RTOL[row["dtype"]] and not row["compiled"]
        assert row["first_step_seconds"] > 0
        assert (row["check_every"], row["predict_checks"]) == (1, False)  # the CPU's schedule: a read is free
        assert len(row["step_ms"]) == 2 and all(0 < ms < 5000 for ms in row["step_ms"])
        assert row["ms_per_step"] == statistics.median(row["step_ms"])
        assert 1 <= row["cg_iterations"] <= 15  # the V-cycle's, not Jacobi's hundreds
        assert 0 <= row["residual"] <= row["max_residual"] <= row["rtol"]
        assert row["setup_seconds"] > 0
    by = {(row["n"], row["dtype"]): row for row in rows}
    assert by[64, "float32"]["cg_iterations"] < by[64, "float64"]["cg_iterations"]  # rtol 1e-5, not 1e-10


def test_gpu_bench_decides_the_heat_claims_on_compiled_rows_where_present():
    """genray bench gpu: at a size with a compiled float64 GPU row, that row decides; else the eager one."""
    from genray.bench import gpu

    def row(n, ms, compiled, device="cuda:0"):
        return {"n": n, "dtype": "float64", "device": device, "compiled": compiled, "ms_per_step": ms}

    rows = [row(1024, 30.0, False), row(2048, 40.0, False), row(1024, 4.0, True), row(1024, 1.0, False, "cpu")]
    result = {"device": "cuda", "quick": False, "heat": {"budget": gpu.HEAT_BUDGET, "rows": rows}}
    assert gpu.claim_values(result) == {"heat_1024_float64_ms": {0: 4.0}, "heat_2048_float64_ms": {0: 40.0}}


def test_bench_without_pyamg_stops_and_says_how_to_install_it(tmp_path, monkeypatch):
    import sys

    from genray.bench.heat import run

    monkeypatch.setitem(sys.modules, "pyamg", None)  # import pyamg raises ImportError
    with pytest.raises(ImportError, match=r"genray bench heat needs pyamg .* pinned in genray.s test extra .* pip install -e .\.\[test\]."):
        run(sizes=(16,), out=tmp_path / "heat.json", warmup=1, steps=1, threads=1)
    assert not (tmp_path / "heat.json").exists()

    from typer.testing import CliRunner

    from genray.cli import app

    refused = CliRunner().invoke(app, ["bench", "heat", "--sizes", "16", "--out", str(tmp_path)])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "error: genray bench heat needs pyamg" in refused.output
    assert not (tmp_path / "heat.json").exists()


def test_bench_claims_are_decided_per_size_on_the_declared_budget():
    """genray's time per step over the faster of splu and pyamg, at most 2, per size; a size not
    run, or a run with another budget, decides nothing."""
    from genray.bench.claims import verdict
    from genray.bench.heat import HEAT_BUDGET, decisions

    def rows(n, genray, splu, amg):
        return [{"n": n, "method": m, "seconds_per_step": t} for m, t in
                (("genray multigrid", genray), ("scipy splu", splu), ("pyamg sa + cg", amg), ("scipy cg + jacobi", 0.001))]

    result = {"config": {**HEAT_BUDGET, "sizes": [128, 256]}, "rows": rows(128, 0.0034, 0.001, 0.002) + rows(256, 0.004, 0.003, 0.002)}
    got = {d["claim"]["key"]: d for d in decisions(result)}
    assert (got["heat_multigrid_128"]["mean"], got["heat_multigrid_128"]["holds"]) == (pytest.approx(3.4), False)
    assert (got["heat_multigrid_256"]["mean"], got["heat_multigrid_256"]["holds"]) == (pytest.approx(2.0), True)  # at the target
    assert verdict(got["heat_multigrid_512"]) == "not decided: 0 of 1 seed measured"
    other = decisions({**result, "config": {**result["config"], "steps": 1}})
    assert all(verdict(d) == "not decided: 0 of 1 seed measured" for d in other)

