r"""The compute axis: pretraining loss against FLOPs, and the emergence loss in FLOPs.

Per family (one pretraining run or model series) the loss follows a saturating power law

.. math::  L(F) = L_\infty + a\,(F / F_\text{ref})^{-b},   \qquad a, b > 0,\ L_\infty \ge 0

(``F_ref`` = the family's largest FLOPs, so ``a`` is in nats). It is exact for a
Chinchilla-style run of fixed size N, where ``L_∞ = E + A/N^α``. Its inverse
``F(L) = F_ref · ((L − L_∞)/a)^{-1/b}`` converts an emergence loss to FLOPs; a loss at or
below ``L_∞`` is never reached by that family (FLOPs = +inf).

Which law converts a task's prediction (``choose_law``): the family of the checkpoint with the
lowest pretraining loss (the run that will be continued), fitted when it has at least
``MIN_POINTS`` checkpoints; otherwise a **pooled** law fitted to every checkpoint of every
family (one curve through the compute frontier: reasonable when the families share data and
recipe, e.g. one model series; documented as an approximation otherwise). ``mode="pooled"``
forces the pooled law.

The interval is carried through the inverse, which is monotone decreasing: the q-th FLOPs
percentile is ``F(loss percentile 100 − q)``. With ``laws`` (``sample_laws``: draws from the
compute law's sampling distribution) the law's own uncertainty is added by Monte Carlo:
losses drawn from the emergence loss's percentiles (a piecewise-linear quantile function) are
paired with law replicates, and the FLOPs percentiles are those of the converted draws, so an
extrapolation far beyond the data gets the wider interval it deserves. A conversion is flagged
``extrapolated`` when the emergence FLOPs lie beyond the largest FLOPs the law was fitted on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from scipy import optimize

from emergence.errors import FitError

MIN_POINTS = 4  # a 3-parameter curve needs at least 4 checkpoints to be checked at all


LAW_DRAWS = 400  # compute-law draws behind a FLOPs interval (FitConfig.compute_draws)
MC_DRAWS = 4000  # Monte Carlo draws pairing emergence losses with law replicates


@dataclass(frozen=True)
class ComputeLaw:
    """L(F) = L_inf + a (F / f_ref)^-b for one family (``family=None``: pooled)."""

    family: str | None
    L_inf: float
    a: float
    b: float
    f_ref: float
    flops_max: float  # largest FLOPs among the points fitted
    n_points: int
    rmse: float  # nats
    points: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())  # (loss, flops) it was fitted on

    @property
    def label(self) -> str:
        return "pooled" if self.family is None else f"family:{self.family}"

    def loss(self, flops) -> np.ndarray:
        """Pretraining loss (nats) at ``flops``."""
        return self.L_inf + self.a * (np.asarray(flops, float) / self.f_ref) ** -self.b

    def flops(self, loss) -> np.ndarray:
        """FLOPs at which the family reaches ``loss`` (+inf at or below L_inf)."""
        excess = np.asarray(loss, float) - self.L_inf
        with np.errstate(divide="ignore", over="ignore"):
            out = self.f_ref * (np.maximum(excess, 0.0) / self.a) ** (-1.0 / self.b)
        return np.where(excess > 0, out, np.inf)


def fit_compute_law(loss, flops, family: str | None = None) -> ComputeLaw:
    """Least squares in loss (nats) with ``scipy.optimize.curve_fit``, multi-start over L_inf.

    Memoised on the exact points (a backtest converts every task of a cutoff, and the report
    every fit, with the law of the same checkpoints): the law is a pure function of them."""
    loss, flops = np.asarray(loss, float), np.asarray(flops, float)
    return _fit_compute_law(tuple(loss.tolist()), tuple(flops.tolist()), family)


@lru_cache(maxsize=512)
def _fit_compute_law(loss: tuple, flops: tuple, family: str | None) -> ComputeLaw:
    loss, flops = np.array(loss, float), np.array(flops, float)
    if len(loss) < MIN_POINTS:
        raise FitError(f"compute law for {family or 'all families'}: {len(loss)} checkpoints, need >= {MIN_POINTS}")
    f_ref = float(flops.max())
    x = flops / f_ref
    best = None
    for frac in (0.0, 0.5, 0.8, 0.95):
        l_inf0 = frac * loss.min()
        fit = _least_squares(x, loss, (l_inf0, max(loss.max() - l_inf0, 1e-3) * x.min() ** 0.3, 0.3))
        if fit is not None and (best is None or fit[1] < best[1]):
            best = fit
    if best is None:
        raise FitError(f"compute law for {family or 'all families'} did not converge")
    (l_inf, a, b), rss = best
    return ComputeLaw(family, float(l_inf), float(a), float(b), f_ref, f_ref, len(loss),
                      float(np.sqrt(rss / len(loss))), (tuple(loss.tolist()), tuple(flops.tolist())))


def _least_squares(x, loss, p0) -> tuple[np.ndarray, float] | None:
    """(params, residual sum of squares) of one ``curve_fit`` from ``p0``; None if it fails."""
    try:
        popt, _ = optimize.curve_fit(_curve, x, loss, p0=p0, bounds=([0.0, 1e-9, 1e-4], [loss.min(), np.inf, 5.0]),
                                     method="trf", max_nfev=5000)
    except (RuntimeError, ValueError):
        return None
    return popt, float(np.sum((_curve(x, *popt) - loss) ** 2))


@lru_cache(maxsize=256)  # a backtest converts every task of a cutoff with the same law
def sample_laws(law: ComputeLaw, n: int = LAW_DRAWS, seed: int = 0) -> tuple[ComputeLaw, ...]:
    """``n`` draws of the law's parameters from their sampling distribution.

    The least-squares estimate is approximately multivariate Student-t around the fit, with
    scale s²(JᵀJ)⁻¹ (J the Jacobian at the fit, s² the residual variance) and n_points − 3
    degrees of freedom: the t accounts for s² estimated from a handful of checkpoints. L_inf is
    clipped to the fit's bounds; draws with a or b <= 0 (outside the law) are dropped. Measured
    on simulated runs of 8 checkpoints (``tests/fitting/test_compute.py``), this interval covers the true
    FLOPs of a loss 2-3x beyond the data about 90% of the time at nominal 90%; a residual
    bootstrap covered 77-79%. A tuple: the result is cached and shared.
    """
    loss, flops = (np.asarray(v, float) for v in law.points)
    df = len(loss) - 3
    if n <= 0 or df < 1:
        return ()
    x = flops / law.f_ref
    jac = np.column_stack([np.ones_like(x), x**-law.b, -law.a * x**-law.b * np.log(x)])
    s2 = float(np.sum((loss - _curve(x, law.L_inf, law.a, law.b)) ** 2)) / df
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal(np.zeros(3), s2 * np.linalg.pinv(jac.T @ jac), size=n, method="svd")
    theta = np.array([law.L_inf, law.a, law.b]) + z * np.sqrt(df / rng.chisquare(df, size=n))[:, None]
    # L_inf is bounded like the fit's (0 <= L_inf <= lowest loss): a fit on the bound has half its
    # draws beyond it, and clipping keeps them as the constrained estimator would
    theta[:, 0] = np.clip(theta[:, 0], 0.0, loss.min())
    ok = (theta[:, 1] > 0) & (theta[:, 2] > 0)
    return tuple(replace(law, L_inf=float(l_inf), a=float(a), b=float(b)) for l_inf, a, b in theta[ok])


def _curve(x, l_inf, a, b):
    return l_inf + a * x**-b


def choose_law(ckpt_loss, ckpt_flops, families, mode: str = "auto") -> ComputeLaw:
    """The law that converts predictions for this set of checkpoints (see module docstring)."""
    ckpt_loss, ckpt_flops = np.asarray(ckpt_loss, float), np.asarray(ckpt_flops, float)
    families = np.asarray(families, dtype=object)
    if mode not in ("auto", "pooled"):
        raise FitError(f"compute law mode must be 'auto' or 'pooled', got {mode!r}")
    frontier = families[int(np.argmin(ckpt_loss))]
    own = families == frontier
    if mode == "auto" and own.sum() >= MIN_POINTS:
        try:
            return fit_compute_law(ckpt_loss[own], ckpt_flops[own], str(frontier))
        except FitError:
            pass
    return fit_compute_law(ckpt_loss, ckpt_flops, None)


@dataclass(frozen=True)
class FlopsConversion:
    """An emergence loss (with percentiles) expressed in FLOPs and in multiples of today's max."""

    flops: float | None  # None when the loss is never reached by the law (below L_inf)
    multiple: float | None
    flops_percentiles: dict[int, float | None]
    multiple_percentiles: dict[int, float | None]
    extrapolated: bool
    law: str
    note: str = ""
    n_law_draws: int = 0  # compute-law draws in the interval (0: the law's uncertainty left out)


def convert(law: ComputeLaw, loss: float, loss_percentiles: dict[int, float], max_flops: float,
            laws: Sequence[ComputeLaw] | None = None, seed: int = 0) -> FlopsConversion:
    """Convert the MLE loss and its percentiles; percentile q in FLOPs is loss percentile 100 − q.

    With ``laws`` (``sample_laws``) the FLOPs percentiles also carry the compute law's
    uncertainty (module docstring); the point FLOPs stay those of ``law``.
    """
    f = float(law.flops(loss))
    known = {q: v for q, v in loss_percentiles.items() if v is not None}
    if laws:
        pct = _mc_percentiles(known or {50: loss}, laws, seed)
    else:
        pct = {q: _finite(float(law.flops(known[100 - q]))) for q in known if (100 - q) in known}
    mult = {q: None if v is None else v / max_flops for q, v in pct.items()}
    notes = []
    if not np.isfinite(f):
        notes.append(f"loss {loss:.3f} is at or below the {law.label} floor L_inf = {law.L_inf:.3f}: never reached")
    extrapolated = (not np.isfinite(f)) or f > law.flops_max
    if extrapolated and np.isfinite(f):
        notes.append(f"{f / law.flops_max:.3g}x beyond the largest FLOPs the {law.label} law was fitted on")
    f_out = _finite(f)
    return FlopsConversion(f_out, None if f_out is None else f_out / max_flops, pct, mult,
                           bool(extrapolated), law.label, "; ".join(notes), len(laws or ()))


def _mc_percentiles(loss_pct: dict[int, float], laws: Sequence[ComputeLaw], seed: int) -> dict[int, float | None]:
    """FLOPs percentiles of emergence losses (drawn from their percentiles) converted by law draws.

    The loss quantile function is piecewise linear through the known percentiles and extended
    linearly beyond the outermost ones (slope of the nearest segment); with one percentile the
    loss is that value. A draw the law never reaches is +inf FLOPs: a percentile that lands
    there is None (unbounded).
    """
    qs = np.array(sorted(loss_pct), float) / 100
    vals = np.maximum.accumulate(np.array([loss_pct[q] for q in sorted(loss_pct)], float))
    rng = np.random.default_rng(seed)
    u = rng.uniform(size=MC_DRAWS)
    if len(qs) == 1:
        draws = np.full(MC_DRAWS, vals[0])
    else:
        draws = np.interp(u, qs, vals)
        lo, hi = u < qs[0], u > qs[-1]
        draws[lo] = vals[0] - (qs[0] - u[lo]) * (vals[1] - vals[0]) / (qs[1] - qs[0])
        draws[hi] = vals[-1] + (u[hi] - qs[-1]) * (vals[-1] - vals[-2]) / (qs[-1] - qs[-2])
    params = np.array([(lw.L_inf, lw.a, lw.b) for lw in laws])[rng.integers(len(laws), size=MC_DRAWS)]
    flops = replace(laws[0], L_inf=params[:, 0], a=params[:, 1], b=params[:, 2]).flops(draws)  # one law per draw
    # no interpolation between draws: a percentile next to an unreached (+inf) draw stays finite or inf, never nan
    out = np.percentile(flops, sorted(loss_pct), method="inverted_cdf")
    return {q: _finite(float(v)) for q, v in zip(sorted(loss_pct), out)}


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None
