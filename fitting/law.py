r"""The emergence law: pure, vectorised maths (no data, no optimiser).

Notation of Snell et al. (2024), Table 1. For a checkpoint M with pretraining loss L = L(M),
finetuned on D examples (lower loss = better model):

.. math::

    \mathrm{perf}(M, D) &= B + A\,h\big(E_\theta(D) - L\big)                \\
    E_\theta(D)         &= k\,\big((\log D)^\alpha - (\log D_0)^\alpha\big) + C   \quad\text{(log power law, default)} \\
    E_\theta(D)         &= k\,\big(D^\alpha - D_0^\alpha\big) + C                  \quad\text{(power law, ablation)}    \\
    \mathrm{perf}_{\text{few-shot}}(M) &= B + \Delta + A\,h\big(E_\theta(D_0) - L\big)

The elbow law is anchored at D_0, so C *is* the prediction E_θ(D_0) for every form and every
D_0: the fit's search box and the profile interval of C bound the prediction itself. With the
paper's D_0 = 1 the log power law reads k (log D)^α + C, as in the paper; the anchor only
re-labels C (the family of curves is the same).

``h`` is the hinge: ``relu`` (the paper) or ``softplus`` with temperature τ (a smoothed elbow).
With ``ceiling=True`` performance bends toward a ceiling U past the elbow,
``base + (U - base)(1 - exp(-A h / (U - base)))``, which has the same slope A at the elbow but
does not overshoot on a wide loss range. The prediction is the few-shot elbow ``E_θ(D_0)``.

Parameter sharing (documented choice, the paper's): A, B, Δ (and U) are shared by every data
level and by the few-shot curve; only the elbow moves with D, through the three law
parameters k, α, C. So a task's whole surface has 5-7 parameters. The optional ones (Δ, U)
are the entries of :data:`TERMS`.

Every function takes parameter arrays of any leading shape and broadcasts, so one call can
evaluate a thousand bootstrap parameter sets at once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
from scipy import special


@dataclass(frozen=True)
class ElbowShape:
    """How the elbow moves with D: E(D) = k (x(D)^α − x(D_0)^α) + C. One entry of
    :data:`ELBOW_SHAPES` carries everything the fit, its starts and the Bayesian prior need."""

    name: str
    x: Callable[[np.ndarray], np.ndarray]  # D -> x(D)
    alpha_bounds: tuple[float, float]  # the maximum-likelihood search box of α
    alpha_starts: tuple[float, float]  # the range the multi-start draws α from
    alpha_grid: tuple[float, float]  # the staged start's grid of α (50 points)
    log_alpha_prior: tuple[float, float]  # Bayesian (mean, sd) of the population's log α


@dataclass(frozen=True)
class HingeShape:
    """h(x) and h'(x) of the elbow, with temperature τ (ignored by the ReLU). ``value`` takes
    the array namespace: numpy here, pytensor in the Bayesian model (``maximum``, ``softplus``)."""

    name: str
    value: Callable[[Any, float, Any], Any]  # (x, τ, ops) -> h(x)
    slope: Callable[[np.ndarray, float], np.ndarray]  # (x, τ) -> h'(x) (ReLU: 0 at the kink)


# D spans 1..1e4: the log power law's α sits near 1, the power law's D^α needs a small α.
ELBOW_SHAPES: dict[str, ElbowShape] = {
    "log_power": ElbowShape("log_power", np.log, (0.02, 4.0), (0.3, 2.0), (0.05, 2.5), (0.0, 0.3)),
    "power": ElbowShape("power", lambda d: d, (0.001, 2.0), (0.05, 0.75), (0.01, 1.0), (float(np.log(0.3)), 0.3)),
}
HINGE_SHAPES: dict[str, HingeShape] = {
    "relu": HingeShape("relu", lambda x, tau, ops: ops.maximum(x, 0.0), lambda x, tau: (x > 0).astype(float)),
    "softplus": HingeShape("softplus", lambda x, tau, ops: tau * ops.softplus(x / tau),
                           lambda x, tau: special.expit(x / tau)),
}


@dataclass(frozen=True)
class LawTerm:
    """An optional parameter beyond A, B, k, α, C, switched on by a boolean :class:`LawSpec`
    field. One entry of :data:`TERMS` carries its bookkeeping: the parameter's name, its value
    when the form lacks it, its search box and start, whether the Bayesian model has it, whether
    it shapes a single curve, and its label. Its maths is the law's own (:func:`performance`,
    written out again with derivatives in ``fitting.jacobian.law_eval`` and, where ``bayes``, in
    ``fitting.bayes.model``); ``tests/fitting/test_law.py`` checks every entry there: each term
    moves the law, and the Jacobian matches finite differences for every combination of terms."""

    param: str  # its name in theta, after A, B, k, alpha, C
    flag: str  # the LawSpec field that switches it on
    absent: float  # what LawSpec.unpack reports for it in a form without it
    box: Callable[[float, float], tuple[float, float]]  # (v_lo, v_hi), the value range -> search box
    start: Callable[[float, bool], float]  # (highest value, proportion) -> starting value
    bayes: bool  # the hierarchical PyMC model has it
    few_shot: bool  # it shapes a single curve in loss (the few-shot curve alone, k = 0)
    label_on: str = ""  # LawSpec.label's part when the flag is on ...
    label_off: str = ""  # ... and when it is off


TERMS: tuple[LawTerm, ...] = (
    # Δ: the few-shot curve's own base B + Δ (prompted and finetuned answers sit differently at
    # chance); a shift between curves, so a single curve's B absorbs it
    LawTerm("delta", "delta", 0.0, lambda lo, hi: (lo - hi, hi - lo), lambda top, proportion: 0.0,
            bayes=True, few_shot=False, label_off="no_delta"),
    # U: past the elbow, performance bends toward a ceiling U instead of rising linearly
    LawTerm("U", "ceiling", 1.0, lambda lo, hi: (lo, hi),
            lambda top, proportion: min(top + 0.02, 1.0) if proportion else top,
            bayes=False, few_shot=True, label_on="ceiling"),
)
CORE_PARAMS = ("A", "B", "k", "alpha", "C")
NUMPY_OPS = SimpleNamespace(maximum=np.maximum, softplus=lambda z: np.logaddexp(0.0, z))

ElbowForm = str  # a key of ELBOW_SHAPES
Hinge = str  # a key of HINGE_SHAPES


def _shape(table: dict, name: str, what: str):
    if name not in table:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, table))}, got {name!r}")
    return table[name]


@dataclass(frozen=True)
class LawSpec:
    """Which emergence law to fit. The defaults are the paper's choices."""

    elbow: ElbowForm = "log_power"
    hinge: Hinge = "relu"
    temperature: float = 0.02  # softplus τ in nats: smaller is closer to the ReLU
    delta: bool = True  # few-shot base shift Δ
    ceiling: bool = False  # saturate toward U past the elbow
    d0: float = 1.0  # low-data extrapolation limit D_0 that stands for "few-shot"
    # parameters held at given values, e.g. (("k", 0.05), ("alpha", 1.0)): the shape of E(D) taken
    # from elsewhere when the data cannot identify it (one finetuning data level)
    fixed: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        names = self.param_names
        for name, value in self.fixed:
            if name not in names or name == "C":
                raise ValueError(f"fixed parameter {name!r}: expected one of {[n for n in names if n != 'C']}")
            if not np.isfinite(value):
                raise ValueError(f"fixed parameter {name!r}: value {value!r} is not a finite number")
        _shape(ELBOW_SHAPES, self.elbow, "elbow")
        _shape(HINGE_SHAPES, self.hinge, "hinge")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature!r}")
        if not self.d0 >= 1:
            raise ValueError(f"d0 must be >= 1 (log D must not be negative), got {self.d0!r}")

    @property
    def elbow_shape(self) -> ElbowShape:
        return ELBOW_SHAPES[self.elbow]

    @property
    def hinge_shape(self) -> HingeShape:
        return HINGE_SHAPES[self.hinge]

    @property
    def terms(self) -> tuple[LawTerm, ...]:
        """The optional terms this form has (entries of :data:`TERMS`, in their order)."""
        return tuple(t for t in TERMS if getattr(self, t.flag))

    @property
    def param_names(self) -> tuple[str, ...]:
        return CORE_PARAMS + tuple(t.param for t in self.terms)

    def with_(self, **changes) -> "LawSpec":
        return replace(self, **changes)

    def unpack(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Split a (..., P) parameter array into named (...,) arrays (an absent term at its
        ``LawTerm.absent`` value: Δ = 0, U = 1)."""
        theta = np.asarray(theta, dtype=float)
        out = {name: theta[..., i] for i, name in enumerate(self.param_names)}
        for term in TERMS:
            out.setdefault(term.param, np.full(theta.shape[:-1], term.absent))
        return out

    @property
    def label(self) -> str:
        parts = [self.elbow, self.hinge]
        if self.d0 != 1.0:
            parts.append(f"d0={self.d0:g}")
        parts += [t.label_on if getattr(self, t.flag) else t.label_off for t in TERMS]
        parts = [p for p in parts if p]
        parts += [f"{name}={value:g}" for name, value in self.fixed]
        return "+".join(parts)


# Named variants offered to users and compared by held-out likelihood.
LAW_FORMS: dict[str, LawSpec] = {
    "log_power": LawSpec(),
    "power": LawSpec(elbow="power"),
    "no_delta": LawSpec(delta=False),
    "softplus": LawSpec(hinge="softplus"),
    "ceiling": LawSpec(ceiling=True),
}


def elbow_x(d, form: ElbowForm = "log_power"):
    """The elbow law's argument x(D): log D (log power law) or D (power law)."""
    return _shape(ELBOW_SHAPES, form, "elbow").x(np.asarray(d, dtype=float))


def elbow(n_train, k, alpha, C, form: ElbowForm = "log_power", d0: float = 1.0):
    """E_θ(D) = k (x(D)^α − x(D_0)^α) + C: the pretraining loss at which performance leaves its
    base, for D examples; C is the few-shot elbow E_θ(D_0)."""
    return k * (elbow_x(n_train, form) ** alpha - elbow_x(d0, form) ** alpha) + C


def hinge(x, kind: Hinge = "relu", temperature: float = 0.02):
    """h(x): ReLU, or its softplus smoothing with temperature τ (same asymptotes)."""
    return _shape(HINGE_SHAPES, kind, "hinge").value(np.asarray(x), temperature, NUMPY_OPS)


def relu_curve(loss, A, B, E, hinge_kind: Hinge = "relu", temperature: float = 0.02):
    """B + A·h(E − L): one ReLU in pretraining loss (the ground-truth few-shot elbow fit)."""
    return B + A * hinge(E - np.asarray(loss), hinge_kind, temperature)


def performance(spec: LawSpec, theta, loss, n_train, few_shot):
    """Predicted performance for each (loss, n_train, few_shot) under parameters ``theta``.

    ``loss``, ``n_train`` and ``few_shot`` are aligned 1-D arrays (one entry per evaluation;
    ``n_train`` is ignored where ``few_shot``), ``theta`` is (..., P). Returns (..., N).
    """
    p = {k: v[..., None] for k, v in spec.unpack(theta).items()}
    few_shot = np.asarray(few_shot, dtype=bool)
    d = np.where(few_shot, spec.d0, np.maximum(np.asarray(n_train, dtype=float), 1.0))
    e = elbow(d, p["k"], p["alpha"], p["C"], spec.elbow, spec.d0)
    h = hinge(e - np.asarray(loss, dtype=float), spec.hinge, spec.temperature)
    base = p["B"] + np.where(few_shot, p["delta"], 0.0)
    if not spec.ceiling:
        return base + p["A"] * h
    room = np.maximum(p["U"] - base, 1e-6)
    return base + room * -np.expm1(-p["A"] * h / room)


def emergence_loss(spec: LawSpec, theta):
    """The prediction: the few-shot elbow E_θ(D_0) = C, in pretraining-loss nats."""
    return spec.unpack(theta)["C"]
