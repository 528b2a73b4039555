"""The emergence law and its exact Jacobian, vectorised over a batch of parameter sets: the
same maths as :func:`fitting.law.performance` (tested against it), written out for the
optimiser."""

from __future__ import annotations

import numpy as np

from fitting import law as law_


class Rows:
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
    precomputed :class:`Rows` of (loss, n_train, few_shot). The Jacobian is a (B, N, P) view
    of a parameter-major (B, P, N) array (the layout the Hessian's matmul wants).
    """
    rows = Rows(spec, loss, n_train, few_shot) if rows is None else rows
    perf, jac = law_eval(spec, theta, rows, jacobian=True)
    return perf, jac.transpose(0, 2, 1)


def law_eval(spec: law_.LawSpec, theta: np.ndarray, rows: Rows, jacobian: bool = False):
    """Performance (B, N) of theta (B, P) on ``rows``; with ``jacobian``, also (B, P, N)."""
    theta = np.atleast_2d(np.asarray(theta, dtype=float))
    names = spec.param_names
    col = lambda name: theta[:, names.index(name)]  # noqa: E731
    A, B, k, alpha, C = theta[:, 0], theta[:, 1], theta[:, 2], theta[:, 3], theta[:, 4]  # names[:5]
    t = np.exp(alpha[:, None] * rows.logx) * rows.xpos  # (B, L): x^α per data level
    t0 = np.exp(alpha * rows.logx0) * rows.x0pos  # (B,)
    e_k = t - t0[:, None]
    gap = np.take(k[:, None] * e_k + C[:, None], rows.level, axis=1)
    gap -= rows.loss  # E(D) - L, (B, N)
    if spec.hinge == "relu" and not spec.ceiling:
        return _relu_eval(spec, theta, rows, A, B, k, t, t0, e_k, gap, jacobian)
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


def _relu_eval(spec, theta, rows: Rows, A, B, k, t, t0, e_k, gap, jacobian: bool):
    """:func:`law_eval` of the ReLU law without a ceiling (the default), written into its outputs
    (fewer temporaries): the same operations in the same order, so the same numbers bit for bit."""
    if not jacobian:
        h = np.maximum(gap, 0.0, out=gap)
        perf = np.multiply(A[:, None], h, out=h)  # A h
        return _add_base(perf, spec, theta, rows, B), None
    jac = np.empty((len(theta), len(spec.param_names), rows.n))
    h = np.maximum(gap, 0.0, out=jac[:, 0])  # d perf / dA = h
    jac[:, 1] = 1.0  # d perf / dB
    d_e = np.multiply(A[:, None], gap > 0, out=jac[:, 4])  # d perf / dC = A h'(gap)
    e_alpha = k[:, None] * (t * rows.logx - (t0 * rows.logx0)[:, None])  # k d(x^α - x0^α)/dα
    np.multiply(d_e, np.take(e_k, rows.level, axis=1), out=jac[:, 2])
    np.multiply(d_e, np.take(e_alpha, rows.level, axis=1), out=jac[:, 3])
    perf = np.multiply(A[:, None], h, out=gap)
    if spec.delta:
        jac[:, spec.param_names.index("delta")] = rows.fs  # 1.0 · fs
    return _add_base(perf, spec, theta, rows, B), jac


def _add_base(perf, spec, theta, rows: Rows, B):
    """``perf += B + fs Δ`` (Δ only in a form that has it), in place, in the order the general
    path computes it: (B + fs Δ) + A h."""
    if spec.delta:
        base = np.multiply(rows.fs, theta[:, spec.param_names.index("delta"), None])
        base += B[:, None]
        perf += base
    else:
        perf += B[:, None] + 0.0
    return perf


def _hinge_and_slope(x, spec: law_.LawSpec, slope: bool = True):
    shape, tau = spec.hinge_shape, spec.temperature
    return shape.value(x, tau, law_.NUMPY_OPS), shape.slope(x, tau) if slope else None
