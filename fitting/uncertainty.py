"""Bootstrap intervals for the emergence loss, vectorised over resamples.

Resampling scheme (the units that are correlated, then the items):

1. **Checkpoints** (every row of a checkpoint shares its pretraining loss and any
   checkpoint-level quirk) are drawn with replacement, K out of K. A checkpoint drawn c times
   contributes its rows with multiplicity c.
2. **Finetuning subsets** (``subsets=True``, default): within each data level its subset seeds
   are drawn with replacement too. A subset's luck is shared by every checkpoint finetuned on
   it, so subsets are a second, crossed correlated unit (a "pigeonhole" bootstrap over
   checkpoints × subsets; Owen 2007).
3. **Items**: ``items="fitted"`` (default) redraws each row's successes as
   Binomial(c·n, p̂) at the MLE's predicted rate p̂ (clipped to [0, 1]): the c copies of a row
   are c independent item draws. ``items="observed"`` redraws at the observed accuracy instead
   (the non-parametric item bootstrap); on top of the checkpoint resampling, which already
   carries the item noise, this counts that noise twice and over-covers. ``items="none"``
   keeps the observed counts (checkpoints and subsets only). Measured coverage of each scheme:
   docs/law.md (``benchmarks/coverage_items.py``).

Every resample is refitted by the batched Levenberg-Marquardt loop of :mod:`fitting.optimise`,
warm-started at the MLE, all resamples of a chunk in one numpy batch (no Python loop per
resample). Resamples that do not converge are retried from the MLE's multi-start points; those
that still fail are counted in ``n_failed`` and left out of the percentiles. With
``extra_starts`` (the pipeline passes the profile interval's end solutions when the likelihood
is flat in the prediction) every resample is also refitted from those points in the same batch
and keeps its best optimum: a resample warm-started only at the MLE stays near it along a flat
direction, which made the interval far too narrow at early backtest cutoffs (docs/law.md).

``profile_interval`` scans the emergence loss itself (a wide grid, continuation from
neighbours, refined ends); ``fitting.predict`` reports the hull of both intervals.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Callable, Literal

import numpy as np
from scipy import stats

from emergence.errors import FitError
from fitting import law as law_
from fitting.data import TaskData
from fitting.fit import EmergenceLawFit
from fitting.optimise import lm_batch, make_problem, starts

PERCENTILES = (5, 10, 25, 50, 75, 90, 95)
ItemResampling = Literal["observed", "fitted", "none"]
Progress = Callable[[int, int], None]  # called with (resamples done, total)


@dataclass(frozen=True)
class BootstrapResult:
    """Bootstrap distribution of the emergence loss (and of the parameters)."""

    emergence_loss: np.ndarray  # (n_ok,) samples from converged resamples, nats
    theta: np.ndarray  # (n_boot, P) all resamples' parameters
    converged: np.ndarray  # (n_boot,) bool
    items: str
    seed: int
    percentiles: dict[int, float] = field(default_factory=dict)

    @property
    def n_boot(self) -> int:
        return len(self.converged)

    @property
    def n_failed(self) -> int:
        return int((~self.converged).sum())


def task_seed(seed: int, task: str) -> int:
    """A per-task seed, stable across runs and independent of task order."""
    return (seed * 1_000_003 + zlib.crc32(task.encode())) % 2**32


def resample_targets(data: TaskData, model: EmergenceLawFit, n_boot: int, rng: np.random.Generator,
                     items: ItemResampling = "fitted", subsets: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(y, n) targets of ``n_boot`` resamples, each (n_boot, N): see the module docstring."""
    mult = _draw_units(data.ckpt, data.n_checkpoints, n_boot, rng)  # (B, N) row multiplicity
    if subsets:
        mult = mult * _subset_multiplicity(data, n_boot, rng)
    if model.likelihood == "gaussian":
        return _gaussian_targets(data, mult, rng, items, model)
    trials = mult * data.n_items
    if items == "none":
        return mult * data.successes, trials
    rate = data.value if items == "observed" else np.clip(model.predict(data.loss, data.n_train, data.few_shot), 0, 1)
    return rng.binomial(trials.astype(np.int64), np.broadcast_to(rate, trials.shape)).astype(float), trials


def _draw_units(unit: np.ndarray, n_units: int, n_boot: int, rng) -> np.ndarray:
    """Multiplicity (B, N) of each row when its ``unit`` (N,) is drawn n_units of n_units."""
    counts = rng.multinomial(n_units, np.full(n_units, 1 / n_units), size=n_boot)
    return counts[:, unit].astype(float)


def _subset_multiplicity(data: TaskData, n_boot: int, rng) -> np.ndarray:
    """(B, N): within each data level, its subset seeds drawn with replacement; few-shot rows 1."""
    mult = np.ones((n_boot, data.n_rows))
    for level in data.data_levels:
        rows = ~data.few_shot & (data.n_train == level)
        seeds, unit = np.unique(data.subset_seed[rows], return_inverse=True)
        if len(seeds) > 1:
            mult[:, rows] = _draw_units(unit, len(seeds), n_boot, rng)
    return mult


def _gaussian_targets(data, mult, rng, items, model):
    """Gaussian likelihood: values (redrawn by items when a proportion metric) and weights."""
    if items == "none" or not data.proportion:
        return np.broadcast_to(data.value, mult.shape).copy(), mult
    rate = data.value if items == "observed" else np.clip(model.predict(data.loss, data.n_train, data.few_shot), 0, 1)
    trials = np.maximum(mult * data.n_items, 1).astype(np.int64)
    return rng.binomial(trials, np.broadcast_to(rate, trials.shape)) / trials, mult


def bootstrap(data: TaskData, model: EmergenceLawFit, n_boot: int = 1000, seed: int = 0,
              items: ItemResampling = "fitted", subsets: bool = True, chunk: int = 250,
              progress: Progress | None = None, extra_starts: np.ndarray | None = None) -> BootstrapResult:
    """Refit ``n_boot`` resamples of ``data`` around the fitted ``model`` (its spec/likelihood).

    ``extra_starts`` (S, P): every resample is also refitted from these points (one batch with
    the warm start) and keeps its best optimum. The pipeline passes the profile-likelihood
    interval's two end solutions when the bootstrap alone is narrower than the profile: along
    a flat direction a resample warm-started at the MLE stays near it, one started at the far
    ends finds its own optimum there.

    Deterministic given ``seed`` (combined with the task name). Raises FitError when the model
    is not fitted or did not converge (there is no centre to warm-start from).
    """
    if items not in ("observed", "fitted", "none"):
        raise FitError(f"items must be 'observed', 'fitted' or 'none', got {items!r}")
    if not getattr(model, "converged_", False):
        raise FitError(f"task {data.task!r}: the maximum-likelihood fit did not converge; no bootstrap")
    rng = np.random.default_rng(task_seed(seed, data.task))
    thetas, oks = [], []
    for lo in range(0, n_boot, chunk):
        size = min(chunk, n_boot - lo)
        y, n = resample_targets(data, model, size, rng, items, subsets)
        theta, ok = _refit(data, model, y, n, extra_starts)
        thetas.append(theta)
        oks.append(ok)
        if progress is not None:
            progress(lo + size, n_boot)
    theta, ok = np.concatenate(thetas), np.concatenate(oks)
    samples = law_.emergence_loss(model.spec, theta[ok])
    pct = dict(zip(PERCENTILES, np.percentile(samples, PERCENTILES).tolist())) if len(samples) else {}
    return BootstrapResult(samples, theta, ok, items, seed, pct)


def _refit(data: TaskData, model: EmergenceLawFit, y: np.ndarray, n: np.ndarray, extra_starts=None):
    """Fit every resample (batch) from the MLE (and ``extra_starts``, best kept); retry failures
    from a few multi-start points."""
    inits = model.theta_[None] if extra_starts is None else np.vstack([model.theta_[None], extra_starts])
    n_b, n_s, n_p = len(y), len(inits), len(model.theta_)
    problem = make_problem(model.spec, data, model.likelihood, y=np.repeat(y, n_s, 0), n=np.repeat(n, n_s, 0))
    theta, f, ok, _ = lm_batch(problem, np.tile(inits, (n_b, 1)), max_iter=model.max_iter)
    theta, f, ok = theta.reshape(n_b, n_s, n_p), f.reshape(n_b, n_s), ok.reshape(n_b, n_s)
    pick = np.where(ok, f, np.inf).argmin(1)  # best converged start (start 0 when none converged)
    rows = np.arange(n_b)
    theta, f, ok = theta[rows, pick], f[rows, pick], ok[rows, pick]
    retry = np.flatnonzero(~ok)
    for start in starts(model.spec, data, 4, model.seed)[: 4 if len(retry) else 0]:
        sub = make_problem(model.spec, data, model.likelihood, y=y[retry], n=n[retry])
        t2, f2, ok2, _ = lm_batch(sub, np.broadcast_to(start, (len(retry), len(start))), max_iter=model.max_iter)
        better = ok2 & (~ok[retry] | (f2 < f[retry]))
        theta[retry[better]], f[retry[better]], ok[retry[better]] = t2[better], f2[better], True
    return theta, ok


# --------------------------------------------------------------------------- profile likelihood


@dataclass(frozen=True)
class ProfileInterval:
    """Likelihood-ratio interval of the emergence loss (profile over the few-shot elbow).

    ``open_low``/``open_high``: the profile stays inside the interval up to the edge of the
    scanned grid (see ``profile_interval``), i.e. the data do not bound the prediction on that
    side; the bootstrap, warm-started at the MLE, cannot see this and is then too narrow.
    """

    low: float
    high: float
    open_low: bool
    open_high: bool
    level: float
    grid: np.ndarray  # (G,) emergence losses scanned
    deviance: np.ndarray  # (G,) 2 x (max log-lik - profile log-lik)
    theta: np.ndarray | None = None  # (G, P) the profile's parameters at each grid point

    def end_thetas(self) -> np.ndarray:
        """(2, P) parameters at the grid points nearest the interval's two ends."""
        return self.theta[[int(np.argmin(np.abs(self.grid - self.low))), int(np.argmin(np.abs(self.grid - self.high)))]]


def profile_interval(data: TaskData, model: EmergenceLawFit, level: float = 0.90, half_width: float = 0.5,
                     n_grid: int = 25, n_starts: int = 4, reach: tuple[float, float] = (1.0, 0.5),
                     n_wide: int = 25, n_sweeps: int = 3) -> ProfileInterval | None:
    """Profile the log-likelihood over the emergence loss, which is the parameter C for every
    law form and D0 (``fitting.law``); None when the fit did not converge.

    Grid: ``n_grid`` points over MLE ± ``half_width`` nats (the resolution near the optimum)
    plus ``n_wide`` points from ``reach[0]`` nats below the best checkpoint's loss to
    ``reach[1]`` above the weakest's (with few checkpoints the likelihood can be flat over more
    than a nat, and a grid around the MLE alone then cuts the interval short). Each grid value
    of C is pinned and the other parameters refitted, all in one batch, from the MLE and
    ``n_starts`` multi-start points; then ``n_sweeps`` continuation passes restart every grid
    point from its two neighbours' solutions (a profile is continuous: a point whose fit got
    stuck is rescued by its neighbour). Deviance is referred to chi-squared with 1 degree of
    freedom (binomial; Gaussian: N log(RSS_c / RSS_min)); ends are interpolated linearly.
    """
    spec = model.spec
    if not getattr(model, "converged_", False):
        return None
    c = spec.param_names.index("C")
    problem = make_problem(spec, data, model.likelihood)
    lo_l, hi_l = float(data.loss.min()), float(data.loss.max())
    grid = np.unique(np.concatenate([model.theta_[c] + np.linspace(-half_width, half_width, n_grid),
                                     np.linspace(lo_l - reach[0], hi_l + reach[1], n_wide)]))
    grid = np.unique(np.clip(grid, problem.lower[c], problem.upper[c]))
    inits = np.vstack([model.theta_[None], starts(spec, data, n_starts, model.seed)])  # (S, P)
    theta, f = _pinned_fits(problem, c, grid, np.repeat(inits[None], len(grid), 0), model.max_iter)
    changed = np.ones(len(grid), dtype=bool)
    for _ in range(n_sweeps):
        # a point is restarted only when a neighbour's solution changed in the last pass: from
        # unchanged neighbours it would find what it found then (each batch member is fitted
        # independently of the others), so skipping it changes nothing
        todo = np.flatnonzero(np.roll(changed, 1) | np.roll(changed, -1))
        neighbours = np.stack([np.roll(theta, 1, 0), np.roll(theta, -1, 0)], 1)[todo]  # (T, 2, P)
        t2, f2 = _pinned_fits(problem, c, grid[todo], neighbours, 60)  # neighbours start close
        better = f2 < f[todo] - 1e-9
        if not better.any():
            break
        changed[:] = False
        changed[todo[better]] = True
        theta[todo[better]], f[todo[better]] = t2[better], f2[better]
    f_best = min(float(f.min()), float(problem.objective(model.theta_[None])[0]))
    cut = stats.chi2.ppf(level, 1)
    grid, theta, f = _refine_ends(problem, c, grid, theta, f, _deviance(f, f_best, model, data) <= cut, model.max_iter)
    f_best = min(f_best, float(f.min()))
    dev = _deviance(f, f_best, model, data)
    inside = dev <= cut
    low, high = _crossing(grid, dev, cut, np.argmax(inside), -1), _crossing(grid, dev, cut, len(grid) - 1 - np.argmax(inside[::-1]), 1)
    return ProfileInterval(low, high, bool(inside[0]), bool(inside[-1]), level, grid, dev, theta)


def _deviance(f: np.ndarray, f_best: float, model: EmergenceLawFit, data: TaskData) -> np.ndarray:
    return 2 * (f - f_best) if model.likelihood == "binomial" else data.n_rows * np.log(f / f_best)


def _refine_ends(problem, c: int, grid, theta, f, inside, max_iter: int, n_fine: int = 8):
    """Insert ``n_fine`` points between each end of the interval and its outer neighbour (the
    grid is coarse next to a narrow interval), fitted from the inner point's solution."""
    lo, hi = int(np.argmax(inside)), len(grid) - 1 - int(np.argmax(inside[::-1]))
    pairs = [(i, j) for i, j in ((lo, lo - 1), (hi, hi + 1)) if 0 <= j < len(grid)]
    if not pairs:
        return grid, theta, f
    fine = np.concatenate([np.linspace(grid[i], grid[j], n_fine + 2)[1:-1] for i, j in pairs])
    seeds = np.concatenate([np.repeat(theta[[i]], n_fine, 0) for i, _ in pairs])
    t2, f2 = _pinned_fits(problem, c, fine, seeds[:, None], max_iter)
    order = np.argsort(np.concatenate([grid, fine]), kind="stable")
    return (np.concatenate([grid, fine])[order], np.concatenate([theta, t2])[order],
            np.concatenate([f, f2])[order])


def _pinned_fits(problem, c: int, grid: np.ndarray, theta0: np.ndarray, max_iter: int):
    """Fit with parameter c pinned at each grid value from (G, S, P) starts: best (G, P), (G,)."""
    n_grid, n_start, n_par = theta0.shape
    theta0 = theta0.copy()
    theta0[..., c] = grid[:, None]
    flat = theta0.reshape(-1, n_par)
    lower, upper = (np.tile(b, (len(flat), 1)) for b in (problem.lower, problem.upper))
    lower[:, c] = upper[:, c] = flat[:, c]
    theta, f, _, _ = lm_batch(replace(problem, lower=lower, upper=upper), flat, max_iter=max_iter)
    theta, f = theta.reshape(n_grid, n_start, n_par), f.reshape(n_grid, n_start)
    best = f.argmin(1)
    return theta[np.arange(n_grid), best], f[np.arange(n_grid), best]


def _crossing(grid: np.ndarray, dev: np.ndarray, cut: float, i: int, side: int) -> float:
    """Where the deviance crosses ``cut`` between grid point i (inside) and its outer neighbour."""
    j = i + side
    if j < 0 or j >= len(grid) or dev[j] == dev[i]:
        return float(grid[i])
    return float(grid[i] + (grid[j] - grid[i]) * (cut - dev[i]) / (dev[j] - dev[i]))
