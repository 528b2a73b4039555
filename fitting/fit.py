"""Maximum-likelihood fit of the emergence law to one task's results.

Public API
----------
``TaskData``
    The aligned arrays one task's fit needs (one entry per evaluation row, plus a small
    per-checkpoint table), built with ``TaskData.from_folder(folder, task)`` and subset with
    ``select_checkpoints``, ``select_levels``, ``drop_levels``, ``select_subset_seeds``.
``EmergenceLawFit(spec, likelihood, n_starts, seed).fit(data) -> self``
    scikit-learn style estimator. Fitted attributes: ``theta_`` (P,), ``params_`` (dict),
    ``emergence_loss_`` (float, or ``None`` when the fit did not converge), ``converged_``,
    ``loglik_``, ``message_``, ``n_obs_``. ``predict(loss, n_train, few_shot)`` and
    ``loglik(data)`` (held-out log-likelihood).
``fit_ground_truth(data) -> GroundTruth``
    The few-shot elbow of all checkpoints (the backtest's truth), or null when few-shot
    performance has not left its base (likelihood-ratio test + minimal rise, see below).
``compare_laws(data, forms) -> list[LawComparison]``
    Leave-one-checkpoint-out held-out log-likelihood of each law form.

Likelihood (``likelihood=``)
    ``"binomial"`` (default, accuracy-like metrics): successes = round(value · n_items) out of
    n_items per row. The law is an identity link, so predicted probabilities outside (0, 1)
    are possible; outside [ε, 1 − ε] (ε = 1e-6) the negative log-likelihood is continued by
    its quadratic expansion (C¹, minimum at p ≈ 0 or 1), so the optimiser is pushed back
    instead of seeing -inf or a reward for an impossible probability.
    ``"gaussian"``: unweighted least squares on ``value`` (the paper's setting and any metric),
    σ profiled out of the reported log-likelihood.

Optimiser
    Deterministic multi-start: ``n_starts`` starting points (one heuristic start plus a Latin
    hypercube drawn from ``seed`` inside a data-scaled box) are run together by a vectorised
    projected Levenberg-Marquardt / Fisher-scoring loop (all starts in one numpy batch, analytic
    Jacobian), and the best one is polished with ``scipy.optimize.minimize(method="L-BFGS-B")``
    inside the same bounds. ``converged_`` is True when the polish reports success or the batch
    loop met its tolerance at the same optimum; otherwise the fit says so
    (``emergence_loss_ is None`` and ``message_`` gives the reason). The same batch loop
    refits bootstrap resamples (``fitting.uncertainty``).

Parameter sharing follows the paper (see ``fitting.law``): A, B, Δ, U shared by every data
level and the few-shot curve; only the elbow moves with D through k, α, C.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal, Sequence

import numpy as np
import polars as pl
from scipy import optimize, special, stats

from emergence.errors import FitError
from fitting import law as law_
from fitting.schema import FEW_SHOT, PROPORTION_METRICS, ResultsFolder

Likelihood = Literal["binomial", "gaussian"]
LIKELIHOODS = ("binomial", "gaussian")
EPS = 1e-6  # the binomial terms are exact inside [EPS, 1 - EPS], extended quadratically outside


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TaskData:
    """One task's evaluations as aligned arrays (N rows) plus its checkpoints (K)."""

    task: str
    metric: str
    chance: float
    # per row (N,)
    loss: np.ndarray
    n_train: np.ndarray  # int; 0 for few-shot rows
    few_shot: np.ndarray  # bool
    subset_seed: np.ndarray  # int
    value: np.ndarray
    n_items: np.ndarray  # int
    ckpt: np.ndarray  # int index into the per-checkpoint arrays below
    # per checkpoint (K,)
    checkpoints: tuple[str, ...]
    families: tuple[str, ...]
    ckpt_loss: np.ndarray
    ckpt_flops: np.ndarray

    # ----------------------------------------------------------- construction

    @classmethod
    def from_folder(cls, folder: ResultsFolder, task: str, metric: str | None = None) -> "TaskData":
        """Select ``task`` (and ``metric``; default accuracy, or the task's only metric).

        Rows are ordered by decreasing pretraining loss (weakest checkpoint first).
        """
        rows, metric = _task_rows(folder, task, metric)
        ckpts = rows.unique("checkpoint", keep="first", maintain_order=True)
        index = {name: i for i, name in enumerate(ckpts["checkpoint"].to_list())}
        col = lambda name, dtype: rows[name].to_numpy().astype(dtype)  # noqa: E731
        return cls(
            task=task, metric=metric, chance=float(np.median(col("chance", float))),
            loss=col("pretrain_loss", float), n_train=col("n_train", np.int64),
            few_shot=(rows["setting"] == FEW_SHOT).to_numpy(), subset_seed=col("subset_seed", np.int64),
            value=col("value", float), n_items=col("n_items", np.int64),
            ckpt=np.array([index[c] for c in rows["checkpoint"].to_list()], dtype=np.int64),
            checkpoints=tuple(index), families=tuple(ckpts["family"].to_list()),
            ckpt_loss=ckpts["pretrain_loss"].to_numpy().astype(float),
            ckpt_flops=ckpts["flops"].to_numpy().astype(float),
        )

    # ----------------------------------------------------------- properties

    @property
    def n_rows(self) -> int:
        return len(self.loss)

    @property
    def n_checkpoints(self) -> int:
        return len(self.checkpoints)

    @property
    def proportion(self) -> bool:
        """True for accuracy-like metrics (binomial likelihood allowed)."""
        return self.metric in PROPORTION_METRICS

    @property
    def successes(self) -> np.ndarray:
        """Correct items per row: round(value · n_items)."""
        return np.rint(self.value * self.n_items).astype(np.int64)

    @property
    def has_finetune(self) -> bool:
        return bool((~self.few_shot).any())

    @property
    def data_levels(self) -> list[int]:
        return sorted(set(self.n_train[~self.few_shot].tolist()))

    @property
    def subset_seeds(self) -> list[int]:
        return sorted(set(self.subset_seed[~self.few_shot].tolist()))

    @property
    def max_flops(self) -> float:
        return float(self.ckpt_flops.max())

    # ----------------------------------------------------------- subsets

    def select_rows(self, mask: np.ndarray) -> "TaskData":
        """Keep the rows where ``mask`` (N,) is True; checkpoints left without rows are dropped."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.n_rows,):
            raise ValueError(f"row mask must have shape ({self.n_rows},), got {mask.shape}")
        kept = np.unique(self.ckpt[mask])
        remap = np.full(self.n_checkpoints, -1)
        remap[kept] = np.arange(len(kept))
        per_row = {f: getattr(self, f)[mask] for f in _ROW_FIELDS}
        per_row["ckpt"] = remap[self.ckpt[mask]]
        return replace(
            self, **per_row, checkpoints=tuple(self.checkpoints[i] for i in kept),
            families=tuple(self.families[i] for i in kept),
            ckpt_loss=self.ckpt_loss[kept], ckpt_flops=self.ckpt_flops[kept],
        )

    def select_checkpoints(self, which: Sequence[str] | np.ndarray) -> "TaskData":
        """Keep checkpoints given by name or by a boolean mask over ``checkpoints`` (K,)."""
        which = np.asarray(which)
        if which.dtype == bool:
            if which.shape != (self.n_checkpoints,):
                raise ValueError(f"checkpoint mask must have shape ({self.n_checkpoints},)")
            keep = which
        else:
            unknown = set(which.tolist()) - set(self.checkpoints)
            if unknown:
                raise FitError(f"task {self.task!r} has no results for checkpoint(s) {sorted(unknown)}")
            keep = np.isin(np.array(self.checkpoints, dtype=object), which)
        return self.select_rows(keep[self.ckpt])

    def select_max_flops(self, max_flops: float) -> "TaskData":
        """Keep checkpoints with FLOPs <= ``max_flops`` (a backtest cutoff)."""
        return self.select_checkpoints(self.ckpt_flops <= max_flops)

    def select_levels(self, levels: Sequence[int]) -> "TaskData":
        """Keep finetune rows whose ``n_train`` is in ``levels`` (few-shot rows always kept)."""
        return self.select_rows(self.few_shot | np.isin(self.n_train, list(levels)))

    def drop_levels(self, levels: Sequence[int]) -> "TaskData":
        """Drop finetune rows whose ``n_train`` is in ``levels``."""
        return self.select_rows(self.few_shot | ~np.isin(self.n_train, list(levels)))

    def select_subset_seeds(self, seeds: Sequence[int]) -> "TaskData":
        """Keep finetune rows whose ``subset_seed`` is in ``seeds`` (few-shot rows always kept)."""
        return self.select_rows(self.few_shot | np.isin(self.subset_seed, list(seeds)))

    def few_shot_only(self) -> "TaskData":
        return self.select_rows(self.few_shot)


_ROW_FIELDS = ("loss", "n_train", "few_shot", "subset_seed", "value", "n_items")


def _task_rows(folder: ResultsFolder, task: str, metric: str | None) -> tuple[pl.DataFrame, str]:
    """One task's rows for one metric, joined with their checkpoints, weakest checkpoint first."""
    if task not in folder.tasks:
        near = difflib.get_close_matches(task, folder.tasks, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else f"; known tasks: {', '.join(folder.tasks)}"
        raise FitError(f"unknown task {task!r}{hint}")
    rows = folder.joined().filter(pl.col("task") == task)
    metric = _choose_metric(rows["metric"].unique().sort().to_list(), task, metric)
    order = ["pretrain_loss", "checkpoint", "setting", "n_train", "subset_seed"]
    rows = rows.filter(pl.col("metric") == metric).sort(order, descending=[True, False, False, False, False])
    return rows, metric


def _choose_metric(metrics: list[str], task: str, metric: str | None) -> str:
    if metric is not None:
        if metric not in metrics:
            raise FitError(f"task {task!r} has no rows with metric {metric!r} (it has: {', '.join(metrics)})")
        return metric
    if len(metrics) == 1:
        return metrics[0]
    if "accuracy" in metrics:
        return "accuracy"
    raise FitError(f"task {task!r} has several metrics ({', '.join(metrics)}); choose one with --metric")


# --------------------------------------------------------------------------- law + Jacobian


class _Rows:
    """What the law needs of a set of rows, computed once per problem (not once per iteration).

    The elbow E(D) depends on the row only through D, and a task has a handful of data levels:
    x(D)^α is evaluated per level as exp(α·log x) on (B, L) and gathered onto the rows.
    """

    def __init__(self, spec: law_.LawSpec, loss, n_train, few_shot):
        self.few_shot = np.asarray(few_shot, dtype=bool)
        self.fs = self.few_shot.astype(float)
        self.loss = np.asarray(loss, dtype=float)
        d = np.where(self.few_shot, spec.d0, np.maximum(np.asarray(n_train, dtype=float), 1.0))
        levels, self.level = np.unique(d, return_inverse=True)
        self.level = self.level.reshape(-1)
        x = np.asarray(law_.elbow_x(levels, spec.elbow), dtype=float)
        self.xpos = (x > 0).astype(float)  # x = 0 (log D at D = 1): x^α = 0 for α > 0
        self.logx = np.log(np.where(x > 0, x, 1.0))
        x0 = float(law_.elbow_x(spec.d0, spec.elbow))
        self.x0pos, self.logx0 = float(x0 > 0), float(np.log(x0)) if x0 > 0 else 0.0
        self.n = len(self.loss)


def performance_jacobian(spec: law_.LawSpec, theta: np.ndarray, loss, n_train, few_shot, rows=None):
    """Performance (B, N) and its Jacobian d perf / d theta (B, N, P) for theta (B, P).

    The same maths as :func:`fitting.law.performance` (tested against it), written out so the
    optimiser gets exact derivatives. ReLU derivative at the kink is taken as 0. ``rows``: the
    precomputed :class:`_Rows` of (loss, n_train, few_shot). The Jacobian is a (B, N, P) view
    of a parameter-major (B, P, N) array (the layout the Hessian's matmul wants).
    """
    rows = _Rows(spec, loss, n_train, few_shot) if rows is None else rows
    perf, jac = _law_eval(spec, theta, rows, jacobian=True)
    return perf, jac.transpose(0, 2, 1)


def _law_eval(spec: law_.LawSpec, theta: np.ndarray, rows: _Rows, jacobian: bool = False):
    """Performance (B, N) of theta (B, P) on ``rows``; with ``jacobian``, also (B, P, N)."""
    theta = np.atleast_2d(np.asarray(theta, dtype=float))
    names = spec.param_names
    col = lambda name: theta[:, names.index(name)]  # noqa: E731
    A, B, k, alpha, C = col("A"), col("B"), col("k"), col("alpha"), col("C")
    t = np.exp(alpha[:, None] * rows.logx) * rows.xpos  # (B, L): x^α per data level
    t0 = np.exp(alpha * rows.logx0) * rows.x0pos  # (B,)
    e_k = t - t0[:, None]
    gap = np.take(k[:, None] * e_k + C[:, None], rows.level, axis=1) - rows.loss  # E(D) - L, (B, N)
    h, dh = _hinge_and_slope(gap, spec, jacobian)
    base = B[:, None] + (rows.fs * col("delta")[:, None] if spec.delta else 0.0)
    if spec.ceiling:
        room = np.maximum(col("U")[:, None] - base, 1e-6)
        g = A[:, None] * h / room
        q = np.exp(-g)
        perf = base + room * -np.expm1(-g)
    else:
        perf = base + A[:, None] * h
    if not jacobian:
        return perf, None
    jac = np.empty((len(theta), len(names), rows.n))
    if spec.ceiling:
        qg = q * (1 + g)
        d_a, d_h, d_base = q * h, q * A[:, None], qg
        jac[:, names.index("U")] = 1 - qg
    else:
        d_a, d_h, d_base = h, A[:, None], 1.0
    d_e = d_h * dh
    e_alpha = k[:, None] * (t * rows.logx - (t0 * rows.logx0)[:, None])  # k d(x^α - x0^α)/dα
    jac[:, 0], jac[:, 1] = d_a, d_base
    jac[:, 2] = d_e * e_k[:, rows.level]
    jac[:, 3] = d_e * e_alpha[:, rows.level]
    jac[:, 4] = d_e
    if spec.delta:
        jac[:, names.index("delta")] = d_base * rows.fs
    return perf, jac


def _hinge_and_slope(x, spec: law_.LawSpec, slope: bool = True):
    shape, tau = spec.hinge_shape, spec.temperature
    return shape.value(x, tau, law_.NUMPY_OPS), shape.slope(x, tau) if slope else None


# --------------------------------------------------------------------------- likelihood


def binomial_terms(p, y, n):
    """Per-row negative log-likelihood (without the constant), its d/dp, and Fisher weight.

    The law's identity link can put p outside (0, 1). Outside [EPS, 1 - EPS] the negative
    log-likelihood is continued by its second-order expansion at the clip point (curvature at
    least the Fisher information), so it stays C¹, grows away from the valid range, and its
    minimum stays at p ≈ 0 or 1: an impossible probability is never rewarded.
    """
    p, y, n = np.broadcast_arrays(np.asarray(p, dtype=float), y, n)
    lo, hi = clip_curvatures(y, n)
    return _binomial_terms(p, y, n - y, n, lo, hi)


def clip_curvatures(y, n):
    """The continuation's curvature at the clip points EPS and 1 - EPS: at least the Fisher
    information. Constants of the row, so rows that share p can be summed (sufficient statistics)."""
    out = []
    for pc in (EPS, 1 - EPS):
        out.append(np.maximum(y / pc**2 + (n - y) / (1 - pc) ** 2, n / (pc * (1 - pc))))
    return out[0], out[1]


def _binomial_terms(p, y, ny, n, curv_lo, curv_hi, full: bool = True):
    """:func:`binomial_terms` with the failures ``ny`` = n - y and the clip curvatures given;
    ``full=False``: the negative log-likelihood only (score and weight None). ``p`` carries the
    full batch shape (y, n, ... broadcast against it)."""
    pc = np.clip(p, EPS, 1 - EPS)
    nll = -(y * np.log(pc) + ny * np.log1p(-pc))
    out = np.flatnonzero(p != pc)  # outside [EPS, 1 - EPS] (or NaN): the quadratic continuation
    if full or len(out):
        grad = ny / (1 - pc) - y / pc
    weight = n / (pc * (1 - pc)) if full else None
    if len(out):
        at = np.unravel_index(out, p.shape)  # works whatever the arrays' memory layout
        dp = p[at] - pc[at]
        curv = np.where(dp < 0, np.broadcast_to(curv_lo, p.shape)[at], np.broadcast_to(curv_hi, p.shape)[at])
        g = grad[at]
        nll[at] += dp * (g + 0.5 * curv * dp)
        if full:
            grad[at] = g + curv * dp
            weight[at] = curv
    return (nll, grad, weight) if full else (nll, None, None)


def gaussian_terms(p, v, _n=None):
    """Half squared error per row, its d/dp, and weight 1 (least squares)."""
    r = p - v
    return 0.5 * r * r, r, np.ones_like(r)


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
    def rows(self) -> _Rows:
        return _Rows(self.spec, self.loss, self.n_train, self.few_shot)

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

    def objective(self, theta):
        """(B,) objective for theta (B, P); theta (S, B, P) gives (S, B) (trial steps of one batch)."""
        theta = np.asarray(theta, dtype=float)
        lead = theta.shape[:-1]
        perf, _ = _law_eval(self.spec, theta.reshape(-1, theta.shape[-1]), self.rows)
        perf = perf.reshape(*lead, -1) if len(lead) else perf
        return self.terms(perf, full=False)[0].sum(-1) + self.offset

    def value_and_grad(self, theta):
        perf, jac = performance_jacobian(self.spec, theta, self.loss, self.n_train, self.few_shot, self.rows)
        nll, score, weight = self.terms(perf)
        return nll.sum(-1) + self.offset, np.einsum("bn,bnp->bp", score, jac), perf, jac, weight

    def grad_hess(self, theta):
        """Gradient (B, P) and Gauss-Newton/Fisher Hessian J^T W J (B, P, P)."""
        perf, jac = performance_jacobian(self.spec, theta, self.loss, self.n_train, self.few_shot, self.rows)
        _, score, weight = self.terms(perf)
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
    """
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
        if len(act) != len(sub_act):  # the active set only shrinks: same size, same members
            sub, sub_act = _subproblem(problem, act), act
        th = theta[act]
        grad, hess = sub.grad_hess(th)
        step, grad = _damped_step(th, grad, hess, lam[act], sub, eye)
        decrement = np.einsum("bp,bp->b", grad, step)
        # the step, and 2x and 4x the step too: cheap (no Jacobian) and fast along curved valleys
        cand = np.clip(th[None] - factors * step[None], sub.lower, sub.upper)  # (3, B, P)
        f3 = sub.objective(cand)
        trial, f_new = cand[0], f3[0]
        for i in (1, 2):
            use_long = f3[i] < f_new
            trial[use_long], f_new = cand[i][use_long], np.where(use_long, f3[i], f_new)
        better = f_new < f[act]
        gain = np.where(better, f[act] - f_new, 0.0)
        theta[act[better]], f[act[better]] = trial[better], f_new[better]
        lam[act] = np.where(better, np.maximum(lam[act] / 3, 1e-9), lam[act] * 4)
        atol = tol * (1 + np.abs(f[act]))
        flat = (np.abs(decrement) < atol) & (lam[act] < 1e6)  # gradient ~0 (smooth optimum)
        stalled = better & (gain < atol)  # an accepted step gained nothing (e.g. at a ReLU kink)
        stuck = lam[act] > 1e8  # no step in any direction lowers f: a corner optimum
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
    system = np.nan_to_num(hess + lam[:, None, None] * scale[:, :, None] * eye)
    step = _solve_or_lstsq(system, np.nan_to_num(grad))
    return step * free, grad


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
    pick = lambda a, nd=2: a[rows] if isinstance(a, np.ndarray) and a.ndim == nd else a  # noqa: E731
    return replace(problem, y=pick(problem.y), n=pick(problem.n), lower=pick(problem.lower),
                   upper=pick(problem.upper), curv_lo=pick(problem.curv_lo), curv_hi=pick(problem.curv_hi),
                   offset=pick(problem.offset, 1))


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


# --------------------------------------------------------------------------- bounds + starts


ELBOW_REACH = 3.0  # nats: the few-shot elbow C is searched this far beyond the data's losses
PIN_NATS = 0.05  # a prediction this close to the fit's lowest checkpoint loss is pinned there
MIN_RISE = 0.05  # metric units: the least rise above base that counts as a rise (ground truth's too)


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
        C=(max(0.0, lo_l - ELBOW_REACH), hi_l + ELBOW_REACH), delta=(v_lo - v_hi, v_hi - v_lo), U=(v_lo, v_hi),
    )
    lo, hi = zip(*(box[n] for n in spec.param_names))
    return np.array(lo), np.array(hi)


def fitted_rise(spec: law_.LawSpec, data: TaskData, theta: np.ndarray) -> np.ndarray:
    """The largest rise above base that the law with parameters ``theta`` (..., P) puts on any
    row of ``data`` (metric units), one per parameter set: shape (...)."""
    p = spec.unpack(theta)
    base = p["B"][..., None] + np.where(data.few_shot, p["delta"][..., None], 0.0)
    perf = law_.performance(spec, theta, data.loss, data.n_train, data.few_shot)
    return np.max(perf - base, axis=-1, initial=0.0)


def pinned_edge(spec: law_.LawSpec, data: TaskData, likelihood: str, theta: np.ndarray,
                min_rise: float = MIN_RISE) -> str | None:
    """Whether a converged prediction (parameters ``theta``) sits on an edge of what its data
    can say, so that it cannot be told apart from that edge.

    - ``"no rise"``: the fitted law rises by less than ``min_rise`` above its base on every row
      of the data (the ground truth's rule for "emerged"): nothing in the data has left chance,
      the likelihood is (nearly) flat in C, and the prediction is wherever the optimiser stopped.
    - ``"search bound"``: the few-shot elbow C sits on its search box (``ELBOW_REACH`` nats beyond
      the data): nothing in the data locates it, typically finetuning lifts no checkpoint yet.
    - ``"lowest checkpoint"``: the prediction is within ``PIN_NATS`` of the fit's lowest
      checkpoint loss. Before emergence every few-shot result is at chance, so the likelihood
      forbids an elbow above the lowest loss: when the finetuned curves point higher, the
      maximum sits on that checkpoint and says only "not before this checkpoint". A prediction
      that happens to be right there looks the same. Either way a backtest counts it a success
      whenever that checkpoint lies within the tolerance of the truth, which is a property of
      where the checkpoints fall.
    - ``None``: neither.
    """
    if fitted_rise(spec, data, theta) < min_rise:
        return "no rise"
    lo, hi = bounds(spec, data, likelihood)
    i = spec.param_names.index("C")
    slack = 1e-3 * (hi[i] - lo[i])
    if theta[i] - lo[i] <= slack or hi[i] - theta[i] <= slack:
        return "search bound"
    if abs(float(law_.emergence_loss(spec, theta)) - float(data.ckpt_loss.min())) <= PIN_NATS:
        return "lowest checkpoint"
    return None


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
    unit = stats.qmc.LatinHypercube(d=5, seed=seed).random(max(n_starts - 1, 1))
    a, shift, alpha, c = unit[:, 0], unit[:, 1] * span, unit[:, 2], lo_l - 0.5 * span + unit[:, 3] * 1.5 * span
    a_lo, a_hi = spec.elbow_shape.alpha_starts
    alpha = a_lo + (a_hi - a_lo) * alpha
    x_max, x0 = law_.elbow_x(d_max, spec.elbow), law_.elbow_x(spec.d0, spec.elbow)
    k = shift / np.maximum(x_max**alpha - x0**alpha, 1e-6)  # the elbow moves by `shift` from D0 to d_max
    slope = (top - base + 1e-3) / span * np.exp(np.log(0.5) + a * np.log(8.0))
    cols = dict(A=slope, B=np.full_like(a, base), k=k, alpha=alpha, C=c, delta=np.zeros_like(a),
                U=np.full_like(a, min(top + 0.02, 1.0) if data.proportion else top))
    hypercube = np.stack([cols[n] for n in spec.param_names], axis=-1)
    staged = staged_start(spec, data)
    rows = ([staged] if staged is not None else []) + list(hypercube)
    return np.array(rows[:max(n_starts, 1)])


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
    cols = dict(A=float(np.median(slopes)), B=base, k=k, alpha=al, C=c, delta=0.0,
                U=min(top + 0.02, 1.0) if data.proportion else top)
    return np.array([cols[n] for n in spec.param_names])


# --------------------------------------------------------------------------- estimator


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


def binomial_loglik(p, y, n) -> np.ndarray:
    """Full binomial log-likelihood per row (with the log binomial coefficient)."""
    log_choose = special.gammaln(n + 1) - special.gammaln(y + 1) - special.gammaln(n - y + 1)
    return log_choose - binomial_terms(p, y, n)[0]


class EmergenceLawFit:
    """Maximum-likelihood emergence law for one task (see the module docstring)."""

    def __init__(self, spec: law_.LawSpec = law_.LawSpec(), likelihood: Likelihood = "binomial",
                 n_starts: int = 24, seed: int = 0, max_iter: int = 300):
        self.spec = spec
        self.likelihood = likelihood
        self.n_starts = n_starts
        self.seed = seed
        self.max_iter = max_iter

    def _validate(self, data: TaskData) -> None:
        if not isinstance(self.spec, law_.LawSpec):
            raise FitError(f"spec must be a LawSpec, got {type(self.spec).__name__}")
        if self.likelihood not in LIKELIHOODS:
            raise FitError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.likelihood == "binomial" and not data.proportion:
            raise FitError(f"task {data.task!r}: metric {data.metric!r} is not a proportion of items; "
                           "use --likelihood gaussian")
        if not data.has_finetune:
            raise FitError(f"task {data.task!r} has only few-shot results: the emergence law needs "
                           "finetune results (the ground-truth elbow still works)")
        n_free = len(self.spec.param_names)
        if data.n_checkpoints < 3 or data.n_rows <= n_free:
            raise FitError(f"task {data.task!r}: {data.n_checkpoints} checkpoint(s) and {data.n_rows} "
                           f"rows are too few for the {n_free}-parameter law (need >= 3 checkpoints)")

    def fit(self, data: TaskData) -> "EmergenceLawFit":
        self._validate(data)
        problem = make_problem(self.spec, data, self.likelihood)
        self.theta_, self.converged_, self.message_, self.start_objectives_ = self._optimise(problem, data)
        self.params_ = dict(zip(self.spec.param_names, self.theta_.tolist()))
        self.n_obs_, self.n_checkpoints_ = data.n_rows, data.n_checkpoints
        if self.likelihood == "gaussian":  # σ² of the training fit, used to score held-out rows
            residual = self.predict(data.loss, data.n_train, data.few_shot) - data.value
            self.sigma2_ = max(float(np.mean(residual**2)), 1e-12)
        self.loglik_ = self.loglik(data)
        e = float(law_.emergence_loss(self.spec, self.theta_))
        self.emergence_loss_ = e if self.converged_ else None
        return self

    def _optimise(self, problem: Problem, data: TaskData):
        """Multi-start batch LM, then L-BFGS-B polish of the best: (theta, converged, message, f_starts)."""
        theta, f, done, _ = lm_batch(problem, starts(self.spec, data, self.n_starts, self.seed), max_iter=self.max_iter)
        best = int(np.argmin(f))
        polished, f_pol, ok, message = polish(problem, theta[best], max_iter=2 * self.max_iter)
        theta_hat = polished if f_pol <= f[best] else theta[best]
        agree = abs(f_pol - f[best]) <= 1e-6 * (1 + abs(f[best]))
        converged = bool(ok or (done[best] and agree))
        return theta_hat, converged, message if converged else f"did not converge: {message}", f

    def _check_fitted(self) -> None:
        if not hasattr(self, "theta_"):
            raise FitError("this EmergenceLawFit is not fitted yet; call fit(data) first")

    def predict(self, loss, n_train, few_shot) -> np.ndarray:
        """Predicted performance (N,) for aligned rows."""
        self._check_fitted()
        return law_.performance(self.spec, self.theta_, loss, n_train, few_shot)

    def loglik(self, data: TaskData, theta: np.ndarray | None = None) -> float:
        """Log-likelihood of ``data`` under the fitted (or given) parameters.

        Binomial: the full binomial log-likelihood. Gaussian: normal with σ² = the mean squared
        residual of the training fit (so a held-out set is scored with the training σ).
        """
        theta = self.theta_ if theta is None else theta
        p = law_.performance(self.spec, theta, data.loss, data.n_train, data.few_shot)
        if self.likelihood == "binomial":
            return float(binomial_loglik(p, data.successes.astype(float), data.n_items.astype(float)).sum())
        r2 = (p - data.value) ** 2
        return float(np.sum(-0.5 * (np.log(2 * np.pi * self.sigma2_) + r2 / self.sigma2_)))


# --------------------------------------------------------------------------- ground truth


@dataclass(frozen=True)
class GroundTruth:
    """The few-shot elbow fitted to all checkpoints (null when performance has not left B).

    ``emerged`` is True when (1) a likelihood-ratio test of the hinge B + A·relu(E − L) against
    a flat line rejects at ``alpha_level`` (LR referred to χ² with 2 df: conservative-ish for
    the hinge's unidentified E under the null, see docs/law.md), (2) the fitted rise at the best
    checkpoint, A·(E − L_min), is at least ``min_rise`` (absolute metric units), and (3) at
    least two checkpoints lie past the elbow (one point cannot place it). ``elbow_loss`` is set
    only when, in addition, (4) at least two checkpoints lie at or before the elbow: otherwise
    performance was above base from the start, ``emerged`` is True but the elbow is an
    extrapolation and ``elbow_loss`` stays None.
    """

    elbow_loss: float | None
    emerged: bool
    A: float
    B: float
    E: float
    lr_stat: float
    p_value: float
    rise: float
    n_past_elbow: int
    reason: str

    def to_json(self) -> dict:
        return dict(self.__dict__)


def fit_ground_truth(data: TaskData, likelihood: Likelihood = "binomial", alpha_level: float = 1e-3,
                     min_rise: float = MIN_RISE, spec: law_.LawSpec = law_.LawSpec()) -> GroundTruth:
    """Fit the hinge to the few-shot rows of every checkpoint in ``data``."""
    few = data.few_shot_only() if data.few_shot.any() else None
    if few is None or few.n_rows < 3:
        n = 0 if few is None else few.n_rows
        return GroundTruth(None, False, np.nan, np.nan, np.nan, 0.0, 1.0, 0.0, 0,
                           f"{n} few-shot rows; need >= 3")
    if likelihood == "binomial" and not few.proportion:
        likelihood = "gaussian"
    gt_spec = law_.LawSpec(elbow="log_power", hinge=spec.hinge, temperature=spec.temperature,
                           delta=False, ceiling=False, d0=1.0)  # E = C at D0 = 1
    # the hinge as the law with k = 0: parameters (A, B, k, alpha, C); k and alpha pinned
    problem = make_problem(gt_spec, few, likelihood)
    lower, upper = problem.lower.copy(), problem.upper.copy()
    lower[2] = upper[2] = 0.0
    lower[3] = upper[3] = 1.0
    problem = replace(problem, lower=lower, upper=upper)
    grid = np.linspace(few.loss.min() - 0.05, few.loss.max() + 0.05, 24)
    span = max(float(np.ptp(few.loss)), 0.05)
    base = float(np.quantile(few.value, 0.25))
    theta0 = np.stack([np.full_like(grid, (few.value.max() - base + 1e-3) / span),
                       np.full_like(grid, base), np.zeros_like(grid), np.ones_like(grid), grid], -1)
    theta, f, _, _ = lm_batch(problem, theta0)
    best = theta[int(np.argmin(f))]
    A, B, E = float(best[0]), float(best[1]), float(best[4])
    ll_hinge = _loglik_rows(problem, best, few, likelihood)
    ll_flat = _flat_loglik(few, likelihood)
    lr = max(2.0 * (ll_hinge - ll_flat), 0.0)
    p_value = float(stats.chi2.sf(lr, df=2))
    rise = A * max(E - float(few.loss.min()), 0.0)
    n_past, n_before = int(np.sum(few.ckpt_loss < E)), int(np.sum(few.ckpt_loss >= E))
    if p_value >= alpha_level:
        reason = f"few-shot performance has not left its base (likelihood-ratio p = {p_value:.2g})"
    elif rise < min_rise:
        reason = f"rise above base {rise:.3f} < {min_rise}"
    elif n_past < 2:
        reason = f"only {n_past} checkpoint past the elbow; need >= 2"
    elif n_before < 2:
        reason = (f"already above base at (nearly) every checkpoint: the elbow ({E:.3f}) lies before the "
                  f"weakest checkpoint and is not located by the data ({n_before} before it; need >= 2)")
    else:
        reason = "emerged"
    located = reason == "emerged"
    emerged = located or reason.startswith("already above")
    return GroundTruth(E if located else None, emerged, A, B, E, lr, p_value, rise, n_past, reason)


def _loglik_rows(problem: Problem, theta: np.ndarray, data: TaskData, likelihood: str) -> float:
    p = law_.performance(problem.spec, theta, data.loss, data.n_train, data.few_shot)
    if likelihood == "binomial":
        return float(binomial_loglik(p, data.successes.astype(float), data.n_items.astype(float)).sum())
    rss = float(np.sum((p - data.value) ** 2))
    return _gauss_profile(rss, data.n_rows)


def _flat_loglik(data: TaskData, likelihood: str) -> float:
    if likelihood == "binomial":
        y, n = data.successes.astype(float), data.n_items.astype(float)
        p = np.full(data.n_rows, y.sum() / n.sum())
        return float(binomial_loglik(p, y, n).sum())
    return _gauss_profile(float(np.sum((data.value - data.value.mean()) ** 2)), data.n_rows)


def _gauss_profile(rss: float, n: int) -> float:
    return -0.5 * n * (np.log(2 * np.pi * max(rss, 1e-300) / n) + 1)


# --------------------------------------------------------------------------- law comparison


@dataclass(frozen=True)
class LawComparison:
    """One law form's held-out log-likelihood (leave-one-checkpoint-out, summed over folds) and
    its elbow extrapolation (leave one curve out, :func:`elbow_extrapolation`)."""

    form: str
    heldout_loglik: float
    n_folds: int
    n_failed: int  # folds whose fit did not converge (scored anyway at their final parameters)
    delta: float = 0.0  # heldout_loglik minus the best form's (0 for the winner)
    # left-out curve (n_train; 0 = few-shot) -> predicted minus that curve's own elbow, nats;
    # None when the fit without it does not locate it (pinned: "no rise" or "search bound")
    elbow_errors: dict[int, float | None] = field(default_factory=dict)

    @property
    def elbow_rmse(self) -> float | None:
        """Root mean square of the located finetuned curves' elbow errors (None when none is)."""
        errors = [e for level, e in self.elbow_errors.items() if level != 0 and e is not None]
        return float(np.sqrt(np.mean(np.square(errors)))) if errors else None

    @property
    def elbow_unlocated(self) -> list[int]:
        """Left-out curves whose elbow the fit to the others did not locate."""
        return [level for level, e in self.elbow_errors.items() if e is None]

    @property
    def few_shot_error(self) -> float | None:
        """The few-shot elbow predicted from the finetuned rows alone, minus the ground truth."""
        return self.elbow_errors.get(0)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "elbow_errors": {str(k): v for k, v in self.elbow_errors.items()},
                "elbow_rmse": self.elbow_rmse, "few_shot_error": self.few_shot_error,
                "elbow_unlocated": self.elbow_unlocated}


def curve_ground_truth(data: TaskData, level: int, likelihood: Likelihood = "binomial") -> GroundTruth:
    """One curve's own hinge (``level`` 0: few-shot; else that data level, all subsets), fitted
    to its rows alone by the ground-truth rule (``elbow_loss`` None unless located)."""
    rows = data.few_shot if level == 0 else (~data.few_shot & (data.n_train == level))
    curve = data.select_rows(rows)
    return fit_ground_truth(replace(curve, few_shot=np.ones(curve.n_rows, dtype=bool)), likelihood)


def curve_elbow(data: TaskData, level: int, likelihood: Likelihood = "binomial") -> float | None:
    """The elbow of :func:`curve_ground_truth`: None when the curve has not left base inside the data."""
    return curve_ground_truth(data, level, likelihood).elbow_loss


def elbow_extrapolation(data: TaskData, spec: law_.LawSpec, truths: dict[int, float | None],
                        likelihood: Likelihood = "binomial", n_starts: int = 12,
                        seed: int = 0) -> dict[int, float | None]:
    """Leave one curve out: refit without a curve's rows and predict its elbow from the others.

    Held-out likelihood is dominated by the plateau, which says nothing about where a curve
    leaves chance; this scores what the method extrapolates: the elbow at a data level the fit
    did not see. The few-shot curve (level 0) left out is the method's own question, the
    few-shot elbow predicted from finetuning alone. ``truths``: each curve's own elbow
    (:func:`curve_elbow`); curves without one, and folds whose fit fails, are skipped. A fold
    whose fit is pinned on an edge (:func:`pinned_edge`: "no rise", "search bound") gives None:
    the data left do not locate that elbow. Finetuning alone often cannot locate the few-shot
    one: under the log power law a small α makes E(D) a step at D₀, and C trades off with k.
    """
    errors = {}
    for level, truth in truths.items():
        if truth is None:
            continue
        rest = data.select_rows(~data.few_shot) if level == 0 else data.drop_levels([level])
        try:
            model = EmergenceLawFit(spec, likelihood, n_starts=n_starts, seed=seed).fit(rest)
        except FitError:  # too little left to fit (e.g. one data level)
            continue
        if not model.converged_:
            continue
        if pinned_edge(spec, rest, likelihood, model.theta_) in ("no rise", "search bound"):
            errors[level] = None
            continue
        p = spec.unpack(model.theta_)
        d = spec.d0 if level == 0 else level
        errors[level] = float(law_.elbow(d, p["k"], p["alpha"], p["C"], spec.elbow, spec.d0)) - truth
    return errors


def compare_laws(data: TaskData, forms: dict[str, law_.LawSpec] | None = None,
                 likelihood: Likelihood = "binomial", n_starts: int = 12, seed: int = 0) -> list[LawComparison]:
    """Each law form's held-out log-likelihood and elbow extrapolation, best likelihood first.

    Likelihood: each fold refits the law without one checkpoint's rows (checkpoints are the
    correlated unit) and scores those rows; the sum over folds is comparable across forms.
    Elbows: :func:`elbow_extrapolation` (finetune rows only: a task without them has none).
    """
    forms = law_.LAW_FORMS if forms is None else forms
    levels = [0, *data.data_levels] if data.has_finetune else []
    truths = {level: curve_elbow(data, level, likelihood) for level in levels}
    out = []
    for name, spec in forms.items():
        total, failed = 0.0, 0
        for k in range(data.n_checkpoints):
            held = data.ckpt == k
            model = EmergenceLawFit(spec, likelihood, n_starts=n_starts, seed=seed).fit(data.select_rows(~held))
            failed += not model.converged_
            total += model.loglik(data.select_rows(held))
        elbows = elbow_extrapolation(data, spec, truths, likelihood, n_starts, seed)
        out.append(LawComparison(name, total, data.n_checkpoints, failed, elbow_errors=elbows))
    best = max(c.heldout_loglik for c in out)
    return sorted((replace(c, delta=c.heldout_loglik - best) for c in out), key=lambda c: -c.heldout_loglik)


def compare_laws_folder(folder: ResultsFolder, tasks: Sequence[str] | None = None,
                        forms: Sequence[str] | None = None, likelihood: Likelihood = "binomial",
                        ) -> dict[str, list[LawComparison]]:
    """``compare_laws`` for each task of a folder, with forms named from ``LAW_FORMS``."""
    names = list(law_.LAW_FORMS) if forms is None else list(forms)
    unknown = [f for f in names if f not in law_.LAW_FORMS]
    if unknown:
        raise FitError(f"unknown law form {unknown[0]!r}; choose from {', '.join(law_.LAW_FORMS)}")
    if likelihood not in LIKELIHOODS:
        raise FitError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    datas = [TaskData.from_folder(folder, t) for t in (tasks or folder.tasks)]
    return {d.task: compare_laws(d, {f: law_.LAW_FORMS[f] for f in names}, likelihood) for d in datas}
