"""Per-row likelihood terms of the fit: binomial (with a quadratic continuation outside
[EPS, 1 - EPS], so the identity link never sees -inf) and Gaussian (least squares)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import special

Likelihood = Literal["binomial", "gaussian"]
LIKELIHOODS = ("binomial", "gaussian")
EPS = 1e-6  # the binomial terms are exact inside [EPS, 1 - EPS], extended quadratically outside


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
    if _fits_into(y, pc.shape) and _fits_into(ny, pc.shape):  # the same operations, in place
        nll = np.log(pc)
        nll *= y
        tail = np.negative(pc)
        np.log1p(tail, out=tail)
        tail *= ny
        nll += tail
        np.negative(nll, out=nll)
    else:
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


def _binomial_score_weight(p, y, ny, n, curv_lo, curv_hi):
    """The d/dp and Fisher weight of :func:`_binomial_terms` (the same numbers, bit for bit),
    without the negative log-likelihood (the Hessian of a Levenberg-Marquardt step needs no
    objective)."""
    pc = np.clip(p, EPS, 1 - EPS)
    q = 1 - pc
    grad = ny / q - y / pc
    q *= pc  # pc (1 - pc)
    weight = np.divide(n, q, out=q) if _fits_into(n, q.shape) else n / q
    out = np.flatnonzero(p != pc)  # outside [EPS, 1 - EPS] (or NaN): the quadratic continuation
    if len(out):
        at = np.unravel_index(out, p.shape)
        dp = p[at] - pc[at]
        curv = np.where(dp < 0, np.broadcast_to(curv_lo, p.shape)[at], np.broadcast_to(curv_hi, p.shape)[at])
        grad[at] = grad[at] + curv * dp
        weight[at] = curv
    return grad, weight


def _fits_into(a, shape) -> bool:
    """``a`` broadcasts to ``shape`` without growing it (it can be an in-place operand)."""
    a_shape = np.shape(a)
    return len(a_shape) <= len(shape) and tuple(shape[len(shape) - len(a_shape):]) == a_shape


def gaussian_terms(p, v, _n=None):
    """Half squared error per row, its d/dp, and weight 1 (least squares)."""
    r = p - v
    return 0.5 * r * r, r, np.ones_like(r)


def binomial_loglik(p, y, n) -> np.ndarray:
    """Full binomial log-likelihood per row (with the log binomial coefficient)."""
    log_choose = special.gammaln(n + 1) - special.gammaln(y + 1) - special.gammaln(n - y + 1)
    return log_choose - binomial_terms(p, y, n)[0]
