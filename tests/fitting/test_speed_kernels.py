"""Issue 21, "the main job in seconds", second round: each shortcut gives the same numbers, bit
for bit, as the code it replaces.

- ``lm_batch`` keeps the gradient and Hessian of a member whose step was rejected (its theta
  did not move) instead of recomputing them; the Hessian's binomial terms skip the objective
  (``_binomial_score_weight``); the ReLU law is written into its outputs (``_relu_eval``);
- the Latin hypercube of the multi-start points and the chi-square / F quantiles come from
  numpy and scipy.special, not scipy.stats (whose import cost every process 0.3 CPU-s);
- ``run_parallel`` runs items in this process and ``workers - 1`` spawned ones.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy import special, stats

from fitting import jacobian, law, likelihood, optimise
from fitting.data import TaskData
from fitting.fit import EmergenceLawFit
from fitting.optimise import make_problem
from fitting.pool import run_parallel
from fitting.uncertainty import chi2_ppf_1, f_ppf_1, resample_targets


@pytest.fixture(scope="module")
def data(simulated):
    return TaskData.from_folder(simulated, "sim_gsm8k")


@pytest.fixture(scope="module")
def model(data):
    return EmergenceLawFit(n_starts=8).fit(data)


def thetas(model, data, count=40, seed=1, spread=0.5):
    rng = np.random.default_rng(seed)
    theta = model.theta_[None] * (1 + spread * rng.standard_normal((count, len(model.theta_))))
    lo, hi = optimise.bounds(model.spec, data, model.likelihood)
    return np.clip(theta, lo, hi)


def reference_law_eval(spec, theta, rows, jac=False):
    """``jacobian.law_eval`` as it was before ``_relu_eval`` (the generic path, all laws)."""
    theta = np.atleast_2d(np.asarray(theta, dtype=float))
    names = spec.param_names
    col = lambda name: theta[:, names.index(name)]  # noqa: E731
    A, B, k, alpha, C = col("A"), col("B"), col("k"), col("alpha"), col("C")
    t = np.exp(alpha[:, None] * rows.logx) * rows.xpos
    t0 = np.exp(alpha * rows.logx0) * rows.x0pos
    e_k = t - t0[:, None]
    gap = np.take(k[:, None] * e_k + C[:, None], rows.level, axis=1) - rows.loss
    h, dh = jacobian._hinge_and_slope(gap, spec, jac)
    base = B[:, None] + (rows.fs * col("delta")[:, None] if spec.delta else 0.0)
    perf = base + A[:, None] * h
    if not jac:
        return perf, None
    out = np.empty((len(theta), len(names), rows.n))
    d_e = A[:, None] * dh
    e_alpha = k[:, None] * (t * rows.logx - (t0 * rows.logx0)[:, None])
    out[:, 0], out[:, 1] = h, 1.0
    out[:, 2] = d_e * e_k[:, rows.level]
    out[:, 3] = d_e * e_alpha[:, rows.level]
    out[:, 4] = d_e
    if spec.delta:
        out[:, names.index("delta")] = 1.0 * rows.fs
    return perf, out


@pytest.mark.parametrize("spec", [law.LawSpec(), law.LawSpec(delta=False), law.LawSpec(d0=4.0),
                                  law.LawSpec(elbow="power")], ids=["log_power", "no_delta", "d0=4", "power"])
def test_relu_law_written_in_place_is_the_generic_law_bit_for_bit(data, model, spec):
    rows = jacobian.Rows(spec, data.loss, data.n_train, data.few_shot)
    theta = thetas(model, data, 60)
    theta[:5, 4] = data.loss[:5]  # elbows exactly on a row's loss: the ReLU's kink (gap 0)
    if not spec.delta:
        theta = theta[:, :5]
    for jac in (False, True):
        got, want = jacobian.law_eval(spec, theta, rows, jac), reference_law_eval(spec, theta, rows, jac)
        np.testing.assert_array_equal(got[0], want[0])
        assert got[0].flags.c_contiguous  # the objective's row sums depend on the layout
        if jac:
            np.testing.assert_array_equal(got[1], want[1])


def test_score_and_weight_alone_equal_those_of_the_full_binomial_terms():
    rng = np.random.default_rng(0)
    p = rng.uniform(-0.3, 1.3, (5, 200))
    p[0, :3] = [np.nan, 0.0, 1.0]
    n = rng.integers(0, 50, (5, 200)).astype(float)
    y = np.minimum(rng.integers(0, 50, (5, 200)), n).astype(float)
    lo, hi = likelihood.clip_curvatures(y, n)
    for yy, nn, l, h in ((y, n, lo, hi), (y[0], n[0], lo[0], hi[0])):  # per member, or shared rows
        _, g, w = likelihood._binomial_terms(p, yy, nn - yy, nn, l, h)
        g2, w2 = likelihood._binomial_score_weight(p, yy, nn - yy, nn, l, h)
        np.testing.assert_array_equal(g2, g)
        np.testing.assert_array_equal(w2, w)


def test_in_place_binomial_objective_equals_the_plain_expression():
    rng = np.random.default_rng(1)
    p = rng.uniform(-0.2, 1.2, (3, 4, 150))
    n = rng.integers(1, 40, (4, 150)).astype(float)
    y = np.minimum(rng.integers(0, 40, (4, 150)), n).astype(float)
    lo, hi = likelihood.clip_curvatures(y, n)
    got = likelihood._binomial_terms(p, y, n - y, n, lo, hi, full=False)[0]
    pc = np.clip(p, likelihood.EPS, 1 - likelihood.EPS)
    want = -(y * np.log(pc) + (n - y) * np.log1p(-pc))
    out = p != pc
    dp = (p - pc)[out]
    g = ((n - y) / (1 - pc) - y / pc)[out]
    curv = np.where(dp < 0, np.broadcast_to(lo, p.shape)[out], np.broadcast_to(hi, p.shape)[out])
    want[out] += dp * (g + 0.5 * curv * dp)
    np.testing.assert_array_equal(got, want)


def test_a_member_is_fitted_the_same_with_its_kept_hessian(data, model, monkeypatch):
    """lm_batch with the kept gradients equals the loop that recomputes every member's each step."""
    y, n = resample_targets(data, model, 24, np.random.default_rng(7))
    problem = make_problem(model.spec, data, "binomial", y=y, n=n)
    theta0 = np.tile(model.theta_, (24, 1)) * np.linspace(0.8, 1.2, 24)[:, None]
    ref = _lm_batch_without_kept(problem, theta0, 150)
    partial = []
    original = optimise.Problem.grad_hess

    def spy(self, theta, members=None):
        partial.append(members is not None)
        return original(self, theta, members)

    monkeypatch.setattr(optimise.Problem, "grad_hess", spy)
    got = optimise.lm_batch(problem, theta0, max_iter=150)
    assert any(partial), "the test needs rejected steps (kept Hessians)"
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)


def _lm_batch_without_kept(problem, theta0, max_iter):
    """optimise.lm_batch as before the kept Hessians (every active member recomputed each step)."""
    theta = np.clip(np.atleast_2d(theta0).astype(float), problem.lower, problem.upper)
    lam = np.full(len(theta), 1e-3)
    done = np.zeros(len(theta), dtype=bool)
    f = problem.objective(theta)
    eye = np.eye(theta.shape[1])
    factors = np.array([1.0, 2.0, 4.0])[:, None, None]
    sub, sub_act = problem, np.arange(len(theta))
    for it in range(1, max_iter + 1):
        act = np.flatnonzero(~done)
        if not len(act):
            return theta, f, done, it - 1
        if len(act) != len(sub_act):
            sub, sub_act = optimise._subproblem(problem, act), act
        th = theta[act]
        grad, hess = sub.grad_hess(th)
        step, grad = optimise._damped_step(th, grad, hess, lam[act], sub, eye)
        decrement = np.einsum("bp,bp->b", grad, step)
        cand = np.clip(th[None] - factors * step[None], sub.lower, sub.upper)
        f3 = sub.objective(cand)
        trial, f_new = cand[0], f3[0]
        for i in (1, 2):
            use_long = f3[i] < f_new
            trial[use_long], f_new = cand[i][use_long], np.where(use_long, f3[i], f_new)
        better = f_new < f[act]
        gain = np.where(better, f[act] - f_new, 0.0)
        theta[act[better]], f[act[better]] = trial[better], f_new[better]
        lam[act] = np.where(better, np.maximum(lam[act] / 3, 1e-9), lam[act] * 4)
        atol = 1e-9 * (1 + np.abs(f[act]))
        flat = (np.abs(decrement) < atol) & (lam[act] < 1e6)
        stalled = better & (gain < atol)
        stuck = lam[act] > 1e8
        done[act[flat | stalled | stuck]] = True
    return theta, f, done, max_iter


def test_latin_hypercube_equals_scipy_stats():
    for seed in range(30):
        for n in (1, 2, 3, 7, 15):
            np.testing.assert_array_equal(optimise.latin_hypercube(5, n, seed),
                                          stats.qmc.LatinHypercube(d=5, seed=seed).random(n))


def test_quantiles_and_p_value_equal_scipy_stats():
    for q in (0.5, 0.8, 0.9, 0.95, 0.99):
        assert chi2_ppf_1(q) == stats.chi2.ppf(q, 1)
        for dfd in (0.5, 1.0, 2.0, 3.5, 10.0, 57.0, 1e3, 1e6):
            assert f_ppf_1(q, dfd) == stats.f.ppf(q, 1, dfd)
    for x in np.concatenate([[0.0, 1e-300, 1e-10, 0.5, 3.0, 50.0, 700.0, 1e4, np.inf],
                             np.random.default_rng(0).exponential(5, 300)]):
        assert float(special.chdtrc(2, x)) == float(stats.chi2.sf(x, df=2))


def _pid_of(x):
    return os.getpid(), x * x


def _fail_on_three(x):
    if x == 3:
        raise ValueError("three")
    return x


def test_run_parallel_keeps_the_order_and_uses_this_process_and_spawned_ones():
    finished = []
    out = run_parallel(_pid_of, list(range(12)), 2, finished.append)
    assert [v for _, v in out] == [x * x for x in range(12)]
    assert sorted(finished) == list(range(12))
    pids = {pid for pid, _ in out}
    assert os.getpid() in pids or len(pids) == 1  # this process works too (it may take every item)
    assert run_parallel(_pid_of, [5], 4) == [(os.getpid(), 25)]  # one item: no process spawned


def test_run_parallel_raises_an_error_of_any_item():
    with pytest.raises(ValueError, match="three"):
        run_parallel(_fail_on_three, list(range(8)), 2)
