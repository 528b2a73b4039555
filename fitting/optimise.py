"""The optimiser of the maximum-likelihood fit: the problem (rows as sufficient statistics,
bounds), its starting points, a batched projected Levenberg-Marquardt loop and an L-BFGS-B
polish. Used by the point fit (:mod:`fitting.fit`), the bootstrap and the profile
(:mod:`fitting.uncertainty`) and the ground truth (:mod:`fitting.ground_truth`).

Size: one cohesive thing, the optimiser and the problem it solves (its hot loop is tuned for
speed, ``docs/speed.md``, so its pieces stay where they are read together); the law's maths is
:mod:`fitting.jacobian` and :mod:`fitting.likelihood`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
from scipy import optimize

from fitting import law as law_
from fitting.data import TaskData
from fitting.jacobian import Rows, law_eval, performance_jacobian
from fitting.likelihood import _binomial_score_weight, _binomial_terms, clip_curvatures, gaussian_terms

ELBOW_REACH = 3.0  # nats: the few-shot elbow C is searched this far beyond the data's losses


@dataclass(frozen=True)
class Problem:
    """What the optimiser minimises: rows, targets (possibly one set per batch member), bounds.

    ``y`` and ``n`` are (N,) or (B, N): successes and trials for the binomial likelihood, or
    values and row weights for the Gaussian one (weights are checkpoint multiplicities in a
    bootstrap resample). ``lower``/``upper`` are (P,) or (B, P) (a profile pins one parameter
    at a different value per member).

    Rows may be sufficient statistics (:func:`make_problem` sums the rows that share a predicted
    p): ``curv_lo``/``curv_hi`` are then the summed clip curvatures of the binomial continuation
    (:func:`clip_curvatures`), and ``offset`` (scalar or (B,)) the Gaussian residual sum of
    squares within each group, so the objective is the per-row one exactly.
    """

    spec: law_.LawSpec
    likelihood: str
    loss: np.ndarray
    n_train: np.ndarray
    few_shot: np.ndarray
    y: np.ndarray
    n: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    curv_lo: np.ndarray | None = None
    curv_hi: np.ndarray | None = None
    offset: Any = 0.0

    @cached_property
    def rows(self) -> Rows:
        return Rows(self.spec, self.loss, self.n_train, self.few_shot)

    @cached_property
    def _binomial(self):
        y, n = np.asarray(self.y, dtype=float), np.asarray(self.n, dtype=float)
        lo, hi = clip_curvatures(y, n) if self.curv_lo is None else (self.curv_lo, self.curv_hi)
        return y, n - y, n, lo, hi

    def terms(self, p, full: bool = True):
        if self.likelihood == "binomial":
            return _binomial_terms(p, *self._binomial, full=full)
        nll, score, w = gaussian_terms(p, self.y)
        return self.n * nll, self.n * score, self.n * w

    def score_weight(self, p, members=None):
        """The d/dp and weight of :meth:`terms` (the same numbers) without the objective; with
        ``members`` (indices), for those batch members only (p is then theirs)."""
        pick = (lambda a: a) if members is None else (  # noqa: E731
            lambda a: a[members] if isinstance(a, np.ndarray) and a.ndim == 2 else a)
        if self.likelihood == "binomial":
            return _binomial_score_weight(p, *(pick(a) for a in self._binomial))
        _, score, w = gaussian_terms(p, pick(self.y))
        n = pick(self.n)
        return n * score, n * w

    def objective(self, theta):
        """(B,) objective for theta (B, P); theta (S, B, P) gives (S, B) (trial steps of one batch)."""
        theta = np.asarray(theta, dtype=float)
        lead = theta.shape[:-1]
        perf, _ = law_eval(self.spec, theta.reshape(-1, theta.shape[-1]), self.rows)
        perf = perf.reshape(*lead, -1) if len(lead) else perf
        return self.terms(perf, full=False)[0].sum(-1) + self.offset

    def value_and_grad(self, theta):
        perf, jac = performance_jacobian(self.spec, theta, self.loss, self.n_train, self.few_shot, self.rows)
        nll, score, weight = self.terms(perf)
        return nll.sum(-1) + self.offset, np.einsum("bn,bnp->bp", score, jac), perf, jac, weight

    def grad_hess(self, theta, members=None):
        """Gradient (B, P) and Gauss-Newton/Fisher Hessian J^T W J (B, P, P); ``members``: theta
        is that of these batch members (indices) only."""
        perf, jac = performance_jacobian(self.spec, theta, self.loss, self.n_train, self.few_shot, self.rows)
        score, weight = self.score_weight(perf, members)
        jt = jac.transpose(0, 2, 1)  # (B, P, N): contiguous unless someone handed a copy
        grad = np.matmul(jt, score[:, :, None])[:, :, 0]
        hess = np.matmul(jt * weight[:, None, :], jac)
        return grad, hess


def lm_batch(problem: Problem, theta0: np.ndarray, max_iter: int = 200, tol: float = 1e-9):
    """Projected Levenberg-Marquardt (Fisher scoring) on a batch of independent problems.

    theta0 (B, P) -> (theta (B, P), objective (B,), converged (B,) bool, iterations).
    Each member has its own damping λ; a step is accepted when it lowers the objective.
    Bounds are handled by projection with an active set (a parameter at a bound whose gradient
    points outward is frozen for that step). Converged, with atol = ``tol·(1 + |f|)``: the
    Newton decrement g·step of the free parameters is below atol (smooth optimum), or an
    accepted step gained less than atol, or λ grew past 1e8 because no step lowers f (the
    ReLU's likelihood has kinks at the data's losses, where the optimum often sits).

    A member whose step was rejected keeps its theta, so its gradient and Hessian are kept
    too (not recomputed: each member's are computed independently of the others, bit for bit).
    """
    theta = np.clip(np.atleast_2d(theta0).astype(float), problem.lower, problem.upper)
    lam = np.full(len(theta), 1e-3)
    done = np.zeros(len(theta), dtype=bool)
    f = problem.objective(theta)
    eye = np.eye(theta.shape[1])
    factors = np.array([1.0, 2.0, 4.0])[:, None, None]
    sub, sub_act = problem, np.arange(len(theta))
    kept_grad, kept_hess = np.empty_like(theta), np.empty((len(theta), *eye.shape))
    kept = np.zeros(len(theta), dtype=bool)  # kept_grad/kept_hess hold the member's at its theta
    for it in range(1, max_iter + 1):
        act = (~done).nonzero()[0]
        if not len(act):
            return theta, f, done, it - 1
        if len(act) != len(sub_act):  # the active set only shrinks: same size, same members
            sub, sub_act = _subproblem(problem, act), act
        th = theta[act]
        stale = (~kept[act]).nonzero()[0]  # positions in act
        if len(stale) == len(act):
            grad, hess = sub.grad_hess(th)
        else:
            grad, hess = kept_grad[act], kept_hess[act]
            if len(stale):
                grad[stale], hess[stale] = sub.grad_hess(th[stale], members=stale)
        kept_grad[act], kept_hess[act] = grad, hess
        f_act, lam_act = f[act], lam[act]
        step, grad = _damped_step(th, grad, hess, lam_act, sub, eye)
        decrement = np.einsum("bp,bp->b", grad, step)
        # the step, and 2x and 4x the step too: cheap (no Jacobian) and fast along curved valleys
        cand = np.clip(th[None] - factors * step[None], sub.lower, sub.upper)  # (3, B, P)
        f3 = sub.objective(cand)
        trial, f_new = cand[0], f3[0]
        for i in (1, 2):
            use_long = f3[i] < f_new
            trial[use_long], f_new = cand[i][use_long], np.where(use_long, f3[i], f_new)
        better = f_new < f_act
        gain = np.where(better, f_act - f_new, 0.0)
        theta[act[better]] = trial[better]
        f[act] = f_act = np.where(better, f_new, f_act)
        kept[act] = ~better
        lam[act] = lam_act = np.where(better, np.maximum(lam_act / 3, 1e-9), lam_act * 4)
        atol = tol * (1 + np.abs(f_act))
        flat = (np.abs(decrement) < atol) & (lam_act < 1e6)  # gradient ~0 (smooth optimum)
        stalled = better & (gain < atol)  # an accepted step gained nothing (e.g. at a ReLU kink)
        stuck = lam_act > 1e8  # no step in any direction lowers f: a corner optimum
        done[act[flat | stalled | stuck]] = True
    return theta, f, done, max_iter


def _damped_step(theta, grad, hess, lam, problem: Problem, eye):
    """Solve (H + λ·diag H) step = g over the free parameters (active-set projection)."""
    frozen = ((theta <= problem.lower) & (grad > 0)) | ((theta >= problem.upper) & (grad < 0))
    free = (~frozen).astype(float)
    grad = grad * free
    hess = hess * free[:, :, None] * free[:, None, :] + frozen[:, :, None] * eye
    diag = np.einsum("bpp->bp", hess)
    scale = np.maximum(diag, 1e-8 * diag.max(-1, keepdims=True) + 1e-12)  # Marquardt scaling
    system = _finite(hess + lam[:, None, None] * scale[:, :, None] * eye)
    step = _solve_or_lstsq(system, _finite(grad))
    return step * free, grad


def _finite(a: np.ndarray) -> np.ndarray:
    """``np.nan_to_num(a)``, without its cost when every entry is finite (nearly always)."""
    return a if np.isfinite(a).all() else np.nan_to_num(a)


def _solve_or_lstsq(system: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve (B, P, P) x = (B, P); a singular member (e.g. a NaN curvature zeroed by nan_to_num)
    gets the minimum-norm least-squares step (pseudo-inverse) instead of crashing the batch.
    A non-finite step becomes 0: that member's λ then grows until it stops ("stuck")."""
    try:
        step = np.linalg.solve(system, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        step = np.einsum("bpq,bq->bp", np.linalg.pinv(system), rhs)
    return np.where(np.isfinite(step), step, 0.0)


def _subproblem(problem: Problem, rows: np.ndarray) -> Problem:
    """The batch members ``rows`` of a problem whose targets (B, N) or bounds (B, P) are per member."""
    picked = {}  # id -> the rows of that array: y, n and the curvatures are also in _binomial

    def pick(a, nd=2):
        if not (isinstance(a, np.ndarray) and a.ndim == nd):
            return a
        if id(a) not in picked:
            picked[id(a)] = a[rows]
        return picked[id(a)]

    sub = replace(problem, y=pick(problem.y), n=pick(problem.n), lower=pick(problem.lower),
                  upper=pick(problem.upper), curv_lo=pick(problem.curv_lo), curv_hi=pick(problem.curv_hi),
                  offset=pick(problem.offset, 1))
    # what does not depend on the members is shared, what does is picked, not recomputed
    sub.__dict__["rows"] = problem.rows
    if problem.likelihood == "binomial":
        sub.__dict__["_binomial"] = tuple(pick(a) for a in problem._binomial)
    return sub


def polish(problem: Problem, theta0: np.ndarray, max_iter: int = 500):
    """Refine one solution with scipy's L-BFGS-B inside the bounds (the field's optimiser)."""
    scale = np.maximum(np.abs(theta0), 1e-2)  # optimise theta / scale: comparable magnitudes

    def fun(z):
        f, g, *_ = problem.value_and_grad((z * scale)[None])
        return float(f[0]), g[0] * scale

    res = optimize.minimize(
        fun, theta0 / scale, jac=True, method="L-BFGS-B",
        bounds=list(zip(problem.lower / scale, problem.upper / scale)),
        options=dict(maxiter=max_iter, ftol=1e-13, gtol=1e-7),
    )
    return res.x * scale, float(res.fun), bool(res.success), str(res.message)


def make_problem(spec: law_.LawSpec, data: TaskData, likelihood: str, y=None, n=None) -> Problem:
    """The optimisation problem of ``data``; ``y``/``n`` (N,) or (B, N) override targets (bootstrap).

    Sufficient statistics: rows that share (pretraining loss, D, few-shot) share their predicted
    p (e.g. the subset seeds of a data level at one checkpoint), so they become one row with
    summed successes and trials (binomial; the clip curvatures are summed too, so even the
    continuation outside [EPS, 1 - EPS] is the per-row sum), or summed weights at the weighted
    mean value plus the within-group residual as ``offset`` (Gaussian). The objective, its
    gradient and Hessian are those of the per-row problem, up to rounding.
    """
    lower, upper = bounds(spec, data, likelihood)
    if likelihood == "binomial":
        y = data.successes.astype(float) if y is None else np.asarray(y, dtype=float)
        n = data.n_items.astype(float) if n is None else np.asarray(n, dtype=float)
    else:
        y = data.value if y is None else np.asarray(y, dtype=float)
        n = np.ones(data.n_rows) if n is None else np.asarray(n, dtype=float)
    groups = row_groups(spec, data)
    if groups is None:
        return Problem(spec, likelihood, data.loss, data.n_train, data.few_shot, y, n, lower, upper)
    first, inv, indicator = groups
    agg = lambda a: a @ indicator  # noqa: E731  (N,) or (B, N) -> (M,) or (B, M)
    rows = (data.loss[first], data.n_train[first], data.few_shot[first])
    if likelihood == "binomial":
        lo, hi = clip_curvatures(y, n)
        return Problem(spec, likelihood, *rows, agg(y), agg(n), lower, upper, curv_lo=agg(lo), curv_hi=agg(hi))
    y, n = np.broadcast_arrays(y, n)
    w = agg(n)
    mean = agg(n * y) / np.where(w > 0, w, 1.0)
    offset = 0.5 * np.sum(n * (y - mean[..., inv]) ** 2, axis=-1)
    return Problem(spec, likelihood, *rows, mean, w, lower, upper, offset=offset)


def row_groups(spec: law_.LawSpec, data: TaskData):
    """(first row of each group (M,), group of each row (N,), indicator (N, M)) for the rows
    that share (loss, D, few-shot), or None when no two rows do."""
    d = np.where(data.few_shot, spec.d0, np.maximum(data.n_train.astype(float), 1.0))
    keys = np.stack([data.loss, d, data.few_shot.astype(float)], 1)
    _, first, inv = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    if len(first) == data.n_rows:
        return None
    indicator = np.zeros((data.n_rows, len(first)))
    indicator[np.arange(data.n_rows), inv] = 1.0
    return first, inv, indicator


def bounds(spec: law_.LawSpec, data: TaskData, likelihood: str) -> tuple[np.ndarray, np.ndarray]:
    """Box for each parameter (documented in docs/law.md); data-scaled for losses and values."""
    lo_l, hi_l = float(data.loss.min()), float(data.loss.max())
    if likelihood == "binomial":
        v_lo, v_hi = 0.0, 1.0
    else:
        span = float(np.ptp(data.value)) or 1.0
        v_lo, v_hi = float(data.value.min()) - span, float(data.value.max()) + span
    # C (the few-shot elbow E(D0), the prediction) is a cross-entropy: never below 0.
    box = dict(
        A=(1e-6, 100.0 / max(v_hi - v_lo, 1e-12) if likelihood == "gaussian" else 100.0),
        B=(v_lo, v_hi), k=(0.0, 10.0),
        alpha=spec.elbow_shape.alpha_bounds,
        C=(max(0.0, lo_l - ELBOW_REACH), hi_l + ELBOW_REACH),
    ) | {t.param: t.box(v_lo, v_hi) for t in spec.terms}
    lo, hi = zip(*(box[n] for n in spec.param_names))
    lo, hi = np.array(lo), np.array(hi)
    for name, value in spec.fixed:  # held where the user put it (LawSpec.fixed)
        i = spec.param_names.index(name)
        lo[i] = hi[i] = value
    return lo, hi


def starts(spec: law_.LawSpec, data: TaskData, n_starts: int, seed: int) -> np.ndarray:
    """(n_starts, P) deterministic starting points: a staged estimate, then a Latin hypercube.

    The staged start (``staged_start``) fits each curve's elbow alone, then the elbow law
    to those elbows. The hypercube box is in interpretable units: base near chance, slope, the
    few-shot elbow within or below the data, and the elbow shift at the largest data level
    (k is derived from it).
    """
    lo_l, hi_l = float(data.loss.min()), float(data.loss.max())
    span = max(hi_l - lo_l, 0.05)
    base = data.chance if data.proportion else float(np.quantile(data.value, 0.1))
    top = float(data.value.max())
    d_max = float(max(data.data_levels or [spec.d0 + 1.0]))
    unit = latin_hypercube(5, max(n_starts - 1, 1), seed)
    a, shift, alpha, c = unit[:, 0], unit[:, 1] * span, unit[:, 2], lo_l - 0.5 * span + unit[:, 3] * 1.5 * span
    a_lo, a_hi = spec.elbow_shape.alpha_starts
    alpha = a_lo + (a_hi - a_lo) * alpha
    x_max, x0 = law_.elbow_x(d_max, spec.elbow), law_.elbow_x(spec.d0, spec.elbow)
    k = shift / np.maximum(x_max**alpha - x0**alpha, 1e-6)  # the elbow moves by `shift` from D0 to d_max
    slope = (top - base + 1e-3) / span * np.exp(np.log(0.5) + a * np.log(8.0))
    cols = dict(A=slope, B=np.full_like(a, base), k=k, alpha=alpha, C=c) | {
        t.param: np.full_like(a, t.start(top, data.proportion)) for t in spec.terms}
    hypercube = np.stack([cols[n] for n in spec.param_names], axis=-1)
    staged = staged_start(spec, data)
    rows = ([staged] if staged is not None else []) + list(hypercube)
    return np.array(rows[:max(n_starts, 1)])


def latin_hypercube(d: int, n: int, seed: int) -> np.ndarray:
    """(n, d) points: ``scipy.stats.qmc.LatinHypercube(d=d, seed=seed).random(n)`` (scrambled,
    strength 1), the same numbers (tested), without importing scipy.stats (about 0.3 CPU-s in
    every process that fits)."""
    rng = np.random.default_rng(seed)
    samples = rng.uniform(size=(n, d))
    perms = np.tile(np.arange(1, n + 1), (d, 1))
    for i in range(d):
        rng.shuffle(perms[i, :])
    return (perms.T - samples) / n


def hinge_grid_fit(loss: np.ndarray, value: np.ndarray, grid: np.ndarray):
    """Least-squares B + A·relu(E − L) for each E on ``grid``: (rss, A, B) arrays (G,)."""
    x = np.maximum(grid[:, None] - loss[None, :], 0.0)  # (G, N)
    xm, vm = x.mean(1, keepdims=True), value.mean()
    sxx = ((x - xm) ** 2).sum(1)
    a = np.where(sxx > 0, ((x - xm) * (value - vm)).sum(1) / np.maximum(sxx, 1e-300), 0.0)
    b = vm - a * xm[:, 0]
    rss = ((b[:, None] + a[:, None] * x - value) ** 2).sum(1)
    return rss, a, b


def staged_start(spec: law_.LawSpec, data: TaskData) -> np.ndarray | None:
    """A start from the structure of the problem (None when too few curves show an elbow).

    1. each curve (few-shot, or one data level with all its subsets) gets its own ReLU by a
       grid over E with A, B by least squares; a curve counts when A > 0 and two or more
       of its checkpoints lie past its elbow;
    2. the elbow law is fitted to the counted elbows by a grid over α with k, C linear.
    """
    lo_l, hi_l = float(data.loss.min()), float(data.loss.max())
    grid = np.linspace(lo_l - 0.02, hi_l + 0.3 * (hi_l - lo_l), 80)
    xs, es, slopes, bases = [], [], [], []
    for level in [0, *data.data_levels]:
        rows = data.few_shot if level == 0 else (~data.few_shot & (data.n_train == level))
        if not rows.any():  # no few-shot rows (a law fitted to finetuning alone)
            continue
        rss, a, b = hinge_grid_fit(data.loss[rows], data.value[rows], grid)
        i = int(np.argmin(rss))
        if a[i] > 0 and np.unique(data.ckpt[rows][data.loss[rows] < grid[i]]).size >= 2:
            xs.append(law_.elbow_x(spec.d0 if level == 0 else level, spec.elbow))
            es.append(grid[i]), slopes.append(a[i]), bases.append(b[i])
    if len(es) < 2:
        return None
    xs, es = np.array(xs, float), np.array(es)
    alphas = np.linspace(*spec.elbow_shape.alpha_grid, 50)
    x0 = float(law_.elbow_x(spec.d0, spec.elbow))
    best = None
    for al in alphas:
        f = xs**al - x0**al  # anchored at D0: c is the few-shot elbow
        design = np.stack([f, np.ones_like(f)], -1)
        (k, c), *_ = np.linalg.lstsq(design, es, rcond=None)
        k = max(k, 0.0)
        rss = float(((k * f + c - es) ** 2).sum())
        if best is None or rss < best[0]:
            best = (rss, k, al, float(np.mean(es - k * f)))
    _, k, al, c = best
    base = data.chance if data.proportion else float(np.median(bases))
    top = float(data.value.max())
    cols = dict(A=float(np.median(slopes)), B=base, k=k, alpha=al, C=c) | {
        t.param: t.start(top, data.proportion) for t in spec.terms}
    return np.array([cols[n] for n in spec.param_names])
