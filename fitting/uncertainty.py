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

**Over-dispersion** (``dispersion="pearson"``, the default, ``DEFAULT_DISPERSION``; ``"none"``
restores the plain binomial intervals). The binomial likelihood assumes each row's count
varies only by item sampling around the law. Real evaluations vary more (items differ in
difficulty, a checkpoint has its own quirks, and the law is only an approximation), and
the binomial intervals were then far too narrow: on ``fitting.simulate_saturating`` (not the
law) the reported 90% interval covered the truth in 29% of fits (172 of 600). Both intervals
now read the over-dispersion off the fit's Pearson residuals (:func:`estimate_dispersion`):

* ``row`` phi = X^2 / (N - tr H) and ``checkpoint`` phi from the checkpoints' residual totals
  (large when a checkpoint's rows are off the law together, as a checkpoint shift or lack of
  fit at its loss makes them). phi = max(1, row, checkpoint): never narrower than the
  binomial; estimated at the checkpoint level, the independent unit, when that is larger.
* **Profile** (quasi-likelihood): the interval is where deviance / phi <= F(0.90; 1, dof), dof
  the degrees of freedom of the phi used (McCullagh and Nelder 1989, section 9.3); with phi = 1
  the chi-squared cut as before.
* **Bootstrap**: with ``items`` fitted/observed the item redraws get the excess variance the
  residuals show, split into a shock shared by a checkpoint's rows (from checkpoint - row) and
  an independent one (:func:`_overdispersed_rate`), so a row's variance is max(1, row) x the
  binomial's.

On the law's own data phi is about 1 (1.0-1.2: the finetuning subsets' jitter) and the
intervals barely move. Measured coverage, before and after: docs/law.md
(``benchmarks/coverage_misspecified.py``).

Size: one cohesive thing, the intervals of one fit (bootstrap, over-dispersion, profile), sharing
the batched refits of :mod:`fitting.optimise`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Callable, Literal

import numpy as np
from scipy import special

from emergence.errors import FitError
from fitting import law as law_
from fitting.data import TaskData
from fitting.fit import EmergenceLawFit
from fitting.jacobian import performance_jacobian
from fitting.optimise import lm_batch, make_problem, starts

PERCENTILES = (5, 10, 25, 50, 75, 90, 95)
DEFAULT_DISPERSION = "pearson"  # over-dispersion-aware intervals (module docstring); "row"; "none": binomial
ItemResampling = Literal["observed", "fitted", "none"]
Dispersion = Literal["pearson", "row", "none"]
DISPERSIONS = ("pearson", "row", "none")
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
    dispersion: "OverDispersion | None" = None  # what the item redraws were inflated by (None: binomial)
    # (theta (B, P), objective (B,), converged (B,)) of every resample's fit from the MLE alone,
    # before the best-of-starts choice and retries: a rerun with ``extra_starts`` reuses them
    warm_fits: tuple | None = field(default=None, repr=False, compare=False)

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
                     items: ItemResampling = "fitted", subsets: bool = True,
                     disp: "OverDispersion | None" = None) -> tuple[np.ndarray, np.ndarray]:
    """(y, n) targets of ``n_boot`` resamples, each (n_boot, N): see the module docstring.
    ``disp``: item redraws over-dispersed as it says (:func:`_overdispersed_rate`)."""
    mult = _draw_units(data.ckpt, data.n_checkpoints, n_boot, rng)  # (B, N) row multiplicity
    if subsets:
        mult = mult * _subset_multiplicity(data, n_boot, rng)
    if model.likelihood == "gaussian":
        return _gaussian_targets(data, mult, rng, items, model)
    trials = mult * data.n_items
    if items == "none":
        return mult * data.successes, trials
    rate = data.value if items == "observed" else np.clip(model.predict(data.loss, data.n_train, data.few_shot), 0, 1)
    rate = np.broadcast_to(rate, trials.shape)
    if disp is not None and (disp.shared > 0 or disp.independent > 0):
        rate = _overdispersed_rate(rate, trials, disp, data.ckpt, data.n_checkpoints, rng)
    return rng.binomial(trials.astype(np.int64), rate).astype(float), trials


def _overdispersed_rate(rate: np.ndarray, trials: np.ndarray, disp: "OverDispersion", ckpt: np.ndarray,
                        n_ckpt: int, rng) -> np.ndarray:
    """Per-draw rates q = p + sqrt(p (1 - p) / m) (s z_k + i e), clipped to [0, 1], with z_k one
    N(0, 1) shock per (resample, checkpoint) shared by the checkpoint's rows, e one per row,
    s^2 = ``disp.shared`` and i^2 = ``disp.independent``, and m the row's trial count: then
    Binomial(m, q) has variance (1 + s^2 + i^2) m p (1 - p) = phi x the binomial's, and two
    rows of one checkpoint covariance s^2 x sqrt(v v'). A checkpoint drawn c times has
    m = c n and c independent shocks, which the same formula gives."""
    b, n_rows = trials.shape
    z = rng.standard_normal((b, n_ckpt))[:, ckpt]
    e = rng.standard_normal((b, n_rows))
    sd = np.sqrt(rate * (1 - rate) / np.maximum(trials, 1))
    return np.clip(rate + sd * (np.sqrt(disp.shared) * z + np.sqrt(disp.independent) * e), 0.0, 1.0)


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
              progress: Progress | None = None, extra_starts: np.ndarray | None = None,
              dispersion: Dispersion | None = None, rerun_of: BootstrapResult | None = None) -> BootstrapResult:
    """Refit ``n_boot`` resamples of ``data`` around the fitted ``model`` (its spec/likelihood).

    ``dispersion`` (None: ``DEFAULT_DISPERSION``): ``"pearson"`` redraws items with the
    over-dispersion the fit's Pearson residuals show (:func:`estimate_dispersion`: a variance
    max(1, row phi) x the binomial's, part of it a shock shared by a checkpoint's rows when its rows' residuals
    are correlated); ``"none"`` binomially. Items ``"none"`` and the Gaussian likelihood are
    unaffected.

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
    disp = _resolve(data, model, dispersion)
    reuse = rerun_of is not None and rerun_of.warm_fits is not None
    if reuse and (rerun_of.n_boot != n_boot or rerun_of.seed != seed or rerun_of.items != items):
        raise FitError("bootstrap(rerun_of=...) needs a bootstrap with the same n_boot, seed and items")
    rng = np.random.default_rng(task_seed(seed, data.task))
    thetas, oks, warm = [], [], []
    for lo in range(0, n_boot, chunk):
        size = min(chunk, n_boot - lo)
        y, n = resample_targets(data, model, size, rng, items, subsets, disp)
        known = tuple(a[lo:lo + size] for a in rerun_of.warm_fits) if reuse else None
        theta, ok, first = _refit(data, model, y, n, extra_starts, known)
        thetas.append(theta)
        oks.append(ok)
        warm.append(first)
        if progress is not None:
            progress(lo + size, n_boot)
    theta, ok = np.concatenate(thetas), np.concatenate(oks)
    warm_fits = tuple(np.concatenate(parts) for parts in zip(*warm))
    samples = law_.emergence_loss(model.spec, theta[ok])
    pct = dict(zip(PERCENTILES, np.percentile(samples, PERCENTILES).tolist())) if len(samples) else {}
    return BootstrapResult(samples, theta, ok, items, seed, pct, disp, warm_fits)


def _refit(data: TaskData, model: EmergenceLawFit, y: np.ndarray, n: np.ndarray, extra_starts=None,
           known=None):
    """Fit every resample (batch) from the MLE (and ``extra_starts``, best kept); retry failures
    from a few multi-start points. ``known``: the fits from the MLE, already made (theta, f, ok).
    Returns (theta (B, P), converged (B,), the fits from the MLE)."""
    inits = model.theta_[None] if extra_starts is None else np.vstack([model.theta_[None], extra_starts])
    if known is not None:
        inits = inits[1:]
    n_b, n_s, n_p = len(y), len(inits), len(model.theta_)
    if n_s:
        problem = make_problem(model.spec, data, model.likelihood, y=np.repeat(y, n_s, 0), n=np.repeat(n, n_s, 0))
        theta, f, ok, _ = lm_batch(problem, np.tile(inits, (n_b, 1)), max_iter=model.max_iter)
        theta, f, ok = theta.reshape(n_b, n_s, n_p), f.reshape(n_b, n_s), ok.reshape(n_b, n_s)
    if known is not None:  # the MLE start goes first, as if fitted in this batch
        cols = [(k[:, None],) for k in known]
        if n_s:
            cols = [(k[:, None], a) for k, a in zip(known, (theta, f, ok))]
        theta, f, ok = (np.concatenate(c, 1) for c in cols)
    first = (theta[:, 0].copy(), f[:, 0].copy(), ok[:, 0].copy())
    pick = np.where(ok, f, np.inf).argmin(1)  # best converged start (start 0 when none converged)
    rows = np.arange(n_b)
    theta, f, ok = theta[rows, pick], f[rows, pick], ok[rows, pick]
    retry = np.flatnonzero(~ok)
    if len(retry):  # every retry from every start in one batch, then taken start by start
        points = starts(model.spec, data, 4, model.seed)
        n_r, n_q = len(retry), len(points)
        sub = make_problem(model.spec, data, model.likelihood, y=np.tile(y[retry], (n_q, 1)),
                           n=np.tile(n[retry], (n_q, 1)))
        t2, f2, ok2, _ = lm_batch(sub, np.repeat(points, n_r, 0), max_iter=model.max_iter)
        for q in range(n_q):
            part = slice(q * n_r, (q + 1) * n_r)
            better = ok2[part] & (~ok[retry] | (f2[part] < f[retry]))
            theta[retry[better]], f[retry[better]], ok[retry[better]] = t2[part][better], f2[part][better], True
    return theta, ok, first


@dataclass(frozen=True)
class OverDispersion:
    """Pearson dispersion of a binomial fit (:func:`estimate_dispersion`).

    ``row``: X^2 / (N - tr H) over rows, on ``dof_row`` degrees of freedom; ``checkpoint``:
    the same over checkpoint totals, on ``dof_checkpoint``; ``rows_per_checkpoint``: m, the
    mean number of rows a checkpoint has. Derived:

    * ``phi`` = max(1, row, checkpoint): the quasi-likelihood scale of the profile interval,
      estimated at the level of the independent unit when the rows of a checkpoint are
      correlated (checkpoint > row), never below the binomial; ``dof``: the degrees of
      freedom of the estimate that gave it (for the F reference).
    * ``shared`` = max(0, (checkpoint - row) / (m - 1)): the part of each row's variance (in
      binomial units) that all rows of its checkpoint share; ``independent`` =
      max(0, max(1, row) - 1 - shared): the rest of the row's excess over the binomial. The
      bootstrap's item redraws use these two.
    """

    row: float
    checkpoint: float
    rows_per_checkpoint: float
    dof_row: float = float("inf")
    dof_checkpoint: float = float("inf")

    @property
    def phi(self) -> float:
        return max(1.0, self.row, self.checkpoint)

    @property
    def dof(self) -> float:
        return self.dof_checkpoint if self.checkpoint > self.row else self.dof_row

    @property
    def shared(self) -> float:
        if self.rows_per_checkpoint <= 1:
            return 0.0
        return max(0.0, (self.checkpoint - self.row) / (self.rows_per_checkpoint - 1))

    @property
    def independent(self) -> float:
        return max(0.0, max(1.0, self.row) - 1.0 - self.shared)

    def to_json(self) -> dict:
        return dict(row=self.row, checkpoint=self.checkpoint, rows_per_checkpoint=self.rows_per_checkpoint,
                    phi=self.phi, shared=self.shared, independent=self.independent)


NO_DISPERSION = OverDispersion(1.0, 1.0, 1.0)


def _resolve(data: TaskData, model: EmergenceLawFit, dispersion: Dispersion | None) -> OverDispersion | None:
    """``"pearson"``: :func:`estimate_dispersion`; ``"row"``: its row phi only (independent
    rows, the textbook quasi-likelihood; kept for comparison, docs/law.md); ``"none"``: None."""
    dispersion = DEFAULT_DISPERSION if dispersion is None else dispersion
    if dispersion not in DISPERSIONS:
        raise FitError(f"dispersion must be one of {', '.join(DISPERSIONS)}, got {dispersion!r}")
    if dispersion == "none":
        return None
    disp = estimate_dispersion(data, model)
    return disp if dispersion == "pearson" else replace(disp, checkpoint=disp.row, dof_checkpoint=disp.dof_row)


def estimate_dispersion(data: TaskData, model: EmergenceLawFit) -> OverDispersion:
    """Pearson dispersion of the binomial fit, per row and per checkpoint.

    Pearson residuals r = (y - n p) / sqrt(v) at the fitted rate p (clipped to [0, 1]), with
    v = max(n p (1 - p), 1) (a fitted rate of 0 at chance 0 must not blow up one row), and
    the fit's leverages H = X (X'X)^+ X' with X = J n / sqrt(v) (J: d p / d theta).

    * row: X^2 / (N - tr H), the textbook quasi-likelihood phi (McCullagh and Nelder 1989);
      about 1 when the counts are binomial around the law, larger when items are
      over-dispersed or the law does not fit.
    * checkpoint: sum_k (sum of r over checkpoint k's rows)^2 / m_k, divided by its expected
      value under independent rows, K - sum_k 1'H_kk 1 / m_k. Rows of one checkpoint share
      its pretraining loss, any checkpoint-level shift in accuracy and the law's lack of fit
      at that loss; positively correlated residuals inflate this one (by 1 + (m - 1) rho),
      not the row phi. Equal to the row phi when fewer than 2 degrees of freedom are left.

    No over-dispersion (all 1) for the Gaussian likelihood (its scale is estimated already)
    or when no residual degrees of freedom are left.
    """
    if model.likelihood != "binomial" or data.n_rows <= len(model.theta_):
        return NO_DISPERSION
    n = data.n_items.astype(float)
    perf, jac = performance_jacobian(model.spec, np.asarray(model.theta_, float)[None], data.loss,
                                     data.n_train, data.few_shot)
    perf, jac = perf[0], np.where(((perf[0] > 0) & (perf[0] < 1))[:, None], jac[0], 0.0)
    p = np.clip(perf, 0.0, 1.0)
    v = np.maximum(n * p * (1 - p), 1.0)
    r = (data.successes - n * p) / np.sqrt(v)
    x = jac * (n / np.sqrt(v))[:, None]
    xtx = x.T @ x
    inv = np.linalg.pinv(xtx)  # H = x inv x' is never formed (N x N): only its traces are needed
    dof = data.n_rows - float(np.sum(inv * xtx))  # N - tr H
    if dof <= 0:
        return NO_DISPERSION
    phi_row = float(np.sum(r**2) / dof)
    onehot = (data.ckpt[:, None] == np.arange(data.n_checkpoints)[None]).astype(float)  # (N, K)
    m = onehot.sum(0)
    onehot, m = onehot[:, m > 0], m[m > 0]
    g = x.T @ onehot  # (P, K): 1_k' H 1_k = g_k' inv g_k
    dof_ckpt = len(m) - float(np.sum(np.einsum("pk,pq,qk->k", g, inv, g) / m))
    if dof_ckpt < 2:
        return OverDispersion(phi_row, phi_row, float(m.mean()), dof, dof)
    return OverDispersion(phi_row, float(np.sum((r @ onehot) ** 2 / m) / dof_ckpt), float(m.mean()), dof, dof_ckpt)


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
    dispersion: float = 1.0  # phi: the interval is where deviance <= phi x the cut (quasi-likelihood)

    def end_thetas(self) -> np.ndarray:
        """(2, P) parameters at the grid points nearest the interval's two ends."""
        return self.theta[[int(np.argmin(np.abs(self.grid - self.low))), int(np.argmin(np.abs(self.grid - self.high)))]]


def profile_interval(data: TaskData, model: EmergenceLawFit, level: float = 0.90, half_width: float = 0.5,
                     n_grid: int = 25, n_starts: int = 4, reach: tuple[float, float] = (1.0, 0.5),
                     n_wide: int = 25, n_sweeps: int = 3, dispersion: Dispersion | None = None) -> ProfileInterval | None:
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

    Quasi-likelihood (``dispersion``, None: ``DEFAULT_DISPERSION``): with a Pearson dispersion
    phi > 1 the binomial deviance overstates the information in the data by phi, and the
    interval is where deviance / phi <= F(level; 1, dof), the quasi-likelihood profile
    interval (McCullagh and Nelder 1989, section 9.3; F instead of chi-squared because phi is
    estimated, on ``dof`` = the degrees of freedom of the estimate used: ``OverDispersion``). With phi = 1 (or ``"none"``) the cut is the chi-squared one, as before.
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
    disp = _resolve(data, model, dispersion)
    phi = 1.0 if disp is None else disp.phi
    cut = chi2_ppf_1(level) if phi <= 1.0 else phi * f_ppf_1(level, disp.dof)
    grid, theta, f = _refine_ends(problem, c, grid, theta, f, _deviance(f, f_best, model, data) <= cut, model.max_iter)
    f_best = min(f_best, float(f.min()))
    dev = _deviance(f, f_best, model, data)
    inside = dev <= cut
    low, high = _crossing(grid, dev, cut, np.argmax(inside), -1), _crossing(grid, dev, cut, len(grid) - 1 - np.argmax(inside[::-1]), 1)
    return ProfileInterval(low, high, bool(inside[0]), bool(inside[-1]), level, grid, dev, theta, phi)


def chi2_ppf_1(q: float) -> float:
    """``scipy.stats.chi2.ppf(q, 1)``, the same number (tested), without importing scipy.stats."""
    return 2 * special.gammaincinv(0.5, q)


def f_ppf_1(q: float, dfd: float) -> float:
    """``scipy.stats.f.ppf(q, 1, dfd)``, the same number (tested), without importing scipy.stats."""
    return special.fdtri(1, dfd, q)


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
