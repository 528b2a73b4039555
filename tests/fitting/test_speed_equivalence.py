"""The fitting core's fast path is the reference maths (issue 21, "the main job in seconds").

``make_problem`` sums the rows that share a predicted p (sufficient statistics), the law is
evaluated per data level with exp(α log x), and the batch optimiser evaluates its three trial
steps in one call. Each is checked here against the plain per-row formulas, on simulated data,
including bootstrap targets (B, N) and predictions outside [EPS, 1 - EPS] (the quadratic
continuation), and the fits they give against fits of the per-row problem. The bootstrap's
shortcuts (a rerun with extra starts reuses the fits from the MLE; retries from the multi-start
points in one batch) give bit for bit what the long way gives.
"""

from __future__ import annotations

import numpy as np
import pytest

from fitting import likelihood, optimise
from fitting import law
from fitting.data import TaskData
from fitting.fit import EmergenceLawFit
from fitting.likelihood import EPS
from fitting.optimise import Problem, bounds, lm_batch, make_problem
from fitting.uncertainty import resample_targets


@pytest.fixture(scope="module")
def data(simulated):
    return TaskData.from_folder(simulated, "sim_gsm8k")


def reference_binomial_terms(p, y, n):
    """The per-row binomial terms as first written (before the fast path)."""
    pc = np.clip(p, EPS, 1 - EPS)
    nll = -(y * np.log(pc) + (n - y) * np.log1p(-pc))
    grad = -(y / pc - (n - y) / (1 - pc))
    fisher = n / (pc * (1 - pc))
    curv = np.maximum(y / pc**2 + (n - y) / (1 - pc) ** 2, fisher)
    dp = p - pc
    return nll + dp * (grad + 0.5 * curv * dp), grad + curv * dp, np.where(dp == 0, fisher, curv)


def reference_objective(spec, data, theta, y, n, likelihood="binomial"):
    """Sum over the rows of data, with law.performance (x ** alpha), per batch member."""
    perf = np.atleast_2d(law.performance(spec, theta, data.loss, data.n_train, data.few_shot))
    if likelihood == "binomial":
        return reference_binomial_terms(perf, y, n)[0].sum(-1)
    return (n * 0.5 * (perf - y) ** 2).sum(-1)


def per_row_problem(spec, data, likelihood, y, n) -> Problem:
    lo, hi = bounds(spec, data, likelihood)
    return Problem(spec, likelihood, data.loss, data.n_train, data.few_shot, y, n, lo, hi)


def thetas(model, count=40, seed=1, spread=0.5):
    """Parameter sets around the fit, many of them predicting p outside (0, 1)."""
    rng = np.random.default_rng(seed)
    theta = model.theta_[None] * (1 + spread * rng.standard_normal((count, len(model.theta_))))
    lo, hi = bounds(model.spec, model._data, model.likelihood)
    return np.clip(theta, lo, hi)


@pytest.fixture(scope="module")
def model(data):
    m = EmergenceLawFit(n_starts=8).fit(data)
    m._data = data
    return m


def test_rows_are_aggregated(data, model):
    problem = make_problem(model.spec, data, "binomial")
    assert len(problem.loss) < data.n_rows  # subset seeds share their p: fewer rows
    assert problem.y.sum() == data.successes.sum() and problem.n.sum() == data.n_items.sum()


def test_binomial_terms_equal_the_reference_inside_and_outside_the_unit_interval():
    rng = np.random.default_rng(0)
    p = rng.uniform(-0.3, 1.3, (5, 200))
    n = rng.integers(0, 50, 200).astype(float)
    y = np.minimum(rng.integers(0, 50, 200), n).astype(float)
    y[:20], y[20:40] = 0.0, n[20:40]  # all-wrong and all-right rows (the continuation's cases)
    for got, want in zip(likelihood.binomial_terms(p, y, n), reference_binomial_terms(p, y, n)):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)


@pytest.mark.parametrize("likelihood", ["binomial", "gaussian"])
def test_aggregated_objective_gradient_and_hessian_equal_the_per_row_ones(data, model, likelihood):
    y = data.successes.astype(float) if likelihood == "binomial" else data.value
    n = data.n_items.astype(float) if likelihood == "binomial" else np.ones(data.n_rows)
    agg, rows = make_problem(model.spec, data, likelihood), per_row_problem(model.spec, data, likelihood, y, n)
    theta = thetas(model)
    ref = reference_objective(model.spec, data, theta, y, n, likelihood)
    perf = law.performance(model.spec, theta, data.loss, data.n_train, data.few_shot)
    assert (perf > 1).any()  # the continuation outside [EPS, 1 - EPS] is exercised
    np.testing.assert_allclose(agg.objective(theta), ref, rtol=1e-12)
    np.testing.assert_allclose(rows.objective(theta), ref, rtol=1e-12)
    g1, h1 = agg.grad_hess(theta)
    g2, h2 = rows.grad_hess(theta)
    scale = np.abs(h2).max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(h1 / scale, h2 / scale, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g1, g2, rtol=1e-9, atol=1e-9 * np.abs(g2).max())
    # the public value_and_grad agrees with grad_hess
    f, g, *_ = agg.value_and_grad(theta)
    np.testing.assert_allclose(f, ref, rtol=1e-12)
    np.testing.assert_allclose(g, g1, rtol=1e-12, atol=1e-12 * np.abs(g1).max())


@pytest.mark.parametrize("likelihood", ["binomial", "gaussian"])
def test_aggregated_bootstrap_targets_give_the_per_row_objective(data, likelihood):
    model = EmergenceLawFit(likelihood=likelihood, n_starts=8).fit(data)
    model._data = data
    y, n = resample_targets(data, model, 30, np.random.default_rng(5))
    agg = make_problem(model.spec, data, likelihood, y=y, n=n)
    theta = thetas(model, count=30, spread=0.2)
    ref = np.array([reference_objective(model.spec, data, theta[b], y[b], n[b], likelihood)[0] for b in range(30)])
    np.testing.assert_allclose(agg.objective(theta), ref, rtol=1e-12)
    # a subproblem (the optimiser's active members) keeps each member's own targets
    sub = optimise._subproblem(agg, np.array([3, 7, 11]))
    np.testing.assert_allclose(sub.objective(theta[[3, 7, 11]]), ref[[3, 7, 11]], rtol=1e-12)


def test_stacked_trial_steps_equal_one_call_per_step(data, model):
    problem = make_problem(model.spec, data, "binomial")
    theta = np.stack([thetas(model, 20, seed=s) for s in range(3)])  # (3, B, P)
    np.testing.assert_allclose(problem.objective(theta),
                               np.stack([problem.objective(t) for t in theta]), rtol=1e-14)


@pytest.mark.parametrize("likelihood", ["binomial", "gaussian"])
def test_fits_of_the_aggregated_problem_equal_fits_of_the_per_row_one(data, model, likelihood):
    y = data.successes.astype(float) if likelihood == "binomial" else data.value
    n = data.n_items.astype(float) if likelihood == "binomial" else np.ones(data.n_rows)
    starts = optimise.starts(model.spec, data, 8, 0)
    t1, f1, ok1, _ = lm_batch(make_problem(model.spec, data, likelihood), starts, max_iter=300)
    t2, f2, ok2, _ = lm_batch(per_row_problem(model.spec, data, likelihood, y, n), starts, max_iter=300)
    best1, best2 = int(np.argmin(f1)), int(np.argmin(f2))
    assert abs(f1[best1] - f2[best2]) <= 1e-6 * (1 + abs(f2[best2]))
    c = model.spec.param_names.index("C")
    assert abs(t1[best1, c] - t2[best2, c]) < 1e-4  # the prediction itself


def test_a_batch_member_is_fitted_the_same_alone_or_in_any_batch(data, model):
    """What the reuse below rests on: members of lm_batch are independent, bit for bit."""
    rng = np.random.default_rng(5)
    y, n = resample_targets(data, model, 12, rng)
    problem = make_problem(model.spec, data, "binomial", y=y, n=n)
    t_all, f_all, ok_all, _ = lm_batch(problem, np.tile(model.theta_, (12, 1)) * 1.1, max_iter=200)
    for i in (0, 7):
        alone = make_problem(model.spec, data, "binomial", y=y[i:i + 1], n=n[i:i + 1])
        t1, f1, ok1, _ = lm_batch(alone, model.theta_[None] * 1.1, max_iter=200)
        np.testing.assert_array_equal(t1[0], t_all[i])
        assert f1[0] == f_all[i] and ok1[0] == ok_all[i]


def test_a_rerun_with_extra_starts_reuses_the_fits_from_the_mle_exactly(data, model):
    from fitting.uncertainty import bootstrap, profile_interval

    prof = profile_interval(data, model)
    first = bootstrap(data, model, 60, seed=2)
    fresh = bootstrap(data, model, 60, seed=2, extra_starts=prof.end_thetas())
    reused = bootstrap(data, model, 60, seed=2, extra_starts=prof.end_thetas(), rerun_of=first)
    np.testing.assert_array_equal(reused.theta, fresh.theta)
    np.testing.assert_array_equal(reused.converged, fresh.converged)
    assert reused.percentiles == fresh.percentiles


def test_retries_in_one_batch_equal_retries_start_by_start(data, model):
    """Resamples that did not converge are refitted from the multi-start points; all of them
    in one lm_batch gives what one call per start gave."""
    from fitting.uncertainty import _refit

    rng = np.random.default_rng(3)
    y, n = resample_targets(data, model, 16, rng)
    saved = model.max_iter
    try:
        model.max_iter = 4  # few resamples converge from the MLE in 4 steps: most are retried
        theta, ok, first = _refit(data, model, y, n)
        assert (~first[2]).sum() >= 2 and (ok & ~first[2]).any(), "the test needs retried, rescued resamples"
        # the reference: the retries one start at a time, as before
        ref_theta, ref_f, ref_ok = (a.copy() for a in first)
        retry = np.flatnonzero(~ref_ok)
        for start in optimise.starts(model.spec, data, 4, model.seed):
            sub = make_problem(model.spec, data, model.likelihood, y=y[retry], n=n[retry])
            t2, f2, ok2, _ = lm_batch(sub, np.broadcast_to(start, (len(retry), len(start))), max_iter=4)
            better = ok2 & (~ref_ok[retry] | (f2 < ref_f[retry]))
            ref_theta[retry[better]], ref_f[retry[better]], ref_ok[retry[better]] = t2[better], f2[better], True
    finally:
        model.max_iter = saved
    np.testing.assert_array_equal(theta, ref_theta)
    np.testing.assert_array_equal(ok, ref_ok)
