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
percentile is ``F(loss percentile 100 − q)``. The compute law's own uncertainty is not
propagated (docs/law.md). A conversion is flagged ``extrapolated`` when the emergence FLOPs lie
beyond the largest FLOPs the law was fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

from emergence.errors import FitError

MIN_POINTS = 4  # a 3-parameter curve needs at least 4 checkpoints to be checked at all


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
    """Least squares in loss (nats) with ``scipy.optimize.curve_fit``, multi-start over L_inf."""
    loss, flops = np.asarray(loss, float), np.asarray(flops, float)
    if len(loss) < MIN_POINTS:
        raise FitError(f"compute law for {family or 'all families'}: {len(loss)} checkpoints, need >= {MIN_POINTS}")
    f_ref = float(flops.max())
    x = flops / f_ref
    best = None
    for frac in (0.0, 0.5, 0.8, 0.95):
        l_inf0 = frac * loss.min()
        p0 = (l_inf0, max(loss.max() - l_inf0, 1e-3) * x.min() ** 0.3, 0.3)
        try:
            popt, _ = optimize.curve_fit(
                _curve, x, loss, p0=p0, bounds=([0.0, 1e-9, 1e-4], [loss.min(), np.inf, 5.0]),
                method="trf", max_nfev=5000,
            )
        except (RuntimeError, ValueError):
            continue
        rss = float(np.sum((_curve(x, *popt) - loss) ** 2))
        if best is None or rss < best[1]:
            best = (popt, rss)
    if best is None:
        raise FitError(f"compute law for {family or 'all families'} did not converge")
    (l_inf, a, b), rss = best
    return ComputeLaw(family, float(l_inf), float(a), float(b), f_ref, f_ref, len(loss),
                      float(np.sqrt(rss / len(loss))))


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


def convert(law: ComputeLaw, loss: float, loss_percentiles: dict[int, float], max_flops: float) -> FlopsConversion:
    """Convert the MLE loss and its percentiles; percentile q in FLOPs is loss percentile 100 − q."""
    f = float(law.flops(loss))
    pct = {q: _finite(float(law.flops(loss_percentiles[100 - q]))) for q in loss_percentiles
           if (100 - q) in loss_percentiles}
    mult = {q: None if v is None else v / max_flops for q, v in pct.items()}
    notes = []
    if not np.isfinite(f):
        notes.append(f"loss {loss:.3f} is at or below the {law.label} floor L_inf = {law.L_inf:.3f}: never reached")
    extrapolated = (not np.isfinite(f)) or f > law.flops_max
    if extrapolated and np.isfinite(f):
        notes.append(f"{f / law.flops_max:.3g}x beyond the largest FLOPs the {law.label} law was fitted on")
    f_out = _finite(f)
    return FlopsConversion(f_out, None if f_out is None else f_out / max_flops, pct, mult,
                           bool(extrapolated), law.label, "; ".join(notes))


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None
