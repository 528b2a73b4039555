"""The backtest's truth: the few-shot elbow fitted to all checkpoints, or null when few-shot
performance has not left its base (likelihood-ratio test and a minimal rise).

The elbow is where accuracy leaves base. A hinge ``B + A·relu(E − L)`` fitted to every checkpoint
places it there when the rise is straight; when the curve steps up between two checkpoints and
then saturates, the straight line through the whole rise reaches back to base well before the step,
at checkpoints that measured base. The default rule (``"onset"``) locates the elbow from the
checkpoints up to the onset (the first checkpoint clearly above base whose successor is too) and
``POST_ONSET`` from it, inside the gap between the last checkpoint before the onset and the onset.
Later checkpoints only decide whether the task emerged, so cutting them back does not move the
elbow (``tests/fitting/test_ground_truth.py``). On a curve that is a hinge (a straight rise) this is where
the rise first shows, up to one checkpoint after the hinge's own elbow: the law-recovery tests
measure a hinge curve's elbow with ``rule="hinge"``."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import special

from fitting import law as law_
from fitting.data import TaskData
from fitting.fit import MIN_RISE
from fitting.likelihood import Likelihood, binomial_loglik
from fitting.optimise import Problem, lm_batch, make_problem


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
    # 5-95% bootstrap interval of elbow_loss over checkpoints and items (:func:`with_interval`)
    elbow_p05: float | None = None
    elbow_p95: float | None = None
    n_boot: int = 0  # resamples drawn
    n_located: int = 0  # resamples in which the elbow was located

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @property
    def interval_text(self) -> str:
        """``"3.775 (3.55–3.86)"``, the elbow alone without an interval, or ``""``."""
        if self.elbow_loss is None:
            return ""
        if self.elbow_p05 is None or self.elbow_p95 is None:
            return f"{self.elbow_loss:.3f}"
        return f"{self.elbow_loss:.3f} ({self.elbow_p05:.3f}–{self.elbow_p95:.3f})"


GT_RULES = ("onset", "hinge")


def fit_ground_truth(data: TaskData, likelihood: Likelihood = "binomial", alpha_level: float = 1e-3,
                     min_rise: float = MIN_RISE, spec: law_.LawSpec = law_.LawSpec(),
                     rule: str = "onset") -> GroundTruth:
    """Fit the hinge to the few-shot rows of every checkpoint in ``data``.

    ``rule="onset"`` (default): the elbow where accuracy leaves base (:func:`find_onset`; module
    docstring). ``rule="hinge"``: the whole-curve hinge alone (the rule before issue 20)."""
    if rule not in GT_RULES:
        raise ValueError(f"ground-truth rule {rule!r}: expected one of {GT_RULES}")
    few = data.few_shot_only() if data.few_shot.any() else None
    if few is None or few.n_rows < 3:
        n = 0 if few is None else few.n_rows
        return GroundTruth(None, False, np.nan, np.nan, np.nan, 0.0, 1.0, 0.0, 0,
                           f"{n} few-shot rows; need >= 3")
    if likelihood == "binomial" and not few.proportion:
        likelihood = "gaussian"
    problem, best = _hinge_fit(few, likelihood, spec)
    A, B, E = float(best[0]), float(best[1]), float(best[4])
    ll_hinge = _loglik_rows(problem, best, few, likelihood)
    ll_flat = _flat_loglik(few, likelihood)
    lr = max(2.0 * (ll_hinge - ll_flat), 0.0)
    p_value = float(special.chdtrc(2, lr))  # scipy.stats.chi2.sf(lr, df=2), without importing scipy.stats
    rise = A * max(E - float(few.loss.min()), 0.0)
    onset = find_onset(few, max(B, few.chance) if few.proportion else B, likelihood)
    if rule == "onset" and onset is not None and p_value < alpha_level and rise >= min_rise:
        # The hinge refitted to the checkpoints up to the onset and the first POST_ONSET from it
        # (later ones, a long saturating rise or none, do not move it), its elbow kept inside the
        # gap where accuracy leaves base: after the last checkpoint before the onset, at or before
        # the onset.
        _, local = _hinge_fit(few.select_checkpoints(onset.window), likelihood, spec)
        A, B = float(local[0]), float(local[1])
        upper = onset.before if onset.before is not None else np.inf
        E = float(np.clip(local[4], onset.loss + ONSET_EPS, upper))
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


POST_ONSET = 3  # checkpoints from the onset on that place the elbow (later ones only say it emerged)
ONSET_Z = 3.0  # a checkpoint clearly above base: this many binomial standard errors ...
ONSET_RISE = MIN_RISE / 2  # ... and at least this far above it (metric units)
ONSET_EPS = 1e-6  # nats: an elbow clipped to the onset sits just above its loss (the onset is past it)


@dataclass(frozen=True)
class Onset:
    """Where few-shot accuracy first clearly leaves base (see :func:`find_onset`)."""

    loss: float  # the onset checkpoint's pretraining loss
    before: float | None  # the loss of the checkpoint just before it (None: the onset is the first)
    window: np.ndarray  # mask over checkpoints: those up to the onset and POST_ONSET - 1 after it


def checkpoint_values(few: TaskData) -> tuple[np.ndarray, np.ndarray]:
    """Per checkpoint: the item-weighted mean value and the number of items."""
    k = few.n_checkpoints
    items = np.bincount(few.ckpt, few.n_items, k)
    return np.bincount(few.ckpt, few.value * few.n_items, k) / np.maximum(items, 1), items


def clearly_above(value: np.ndarray, items: np.ndarray, base: float, proportion: bool) -> np.ndarray:
    """Per checkpoint: at least ``ONSET_RISE`` above ``base`` and, for proportions, ``ONSET_Z``
    binomial standard errors above it."""
    above = value - base >= ONSET_RISE
    if proportion:
        p = min(max(base, 1e-3), 1 - 1e-3)
        above &= (value - base) / np.sqrt(p * (1 - p) / np.maximum(items, 1)) >= ONSET_Z
    return above


def find_onset(few: TaskData, base: float, likelihood: str) -> Onset | None:
    """The first checkpoint in training order (decreasing loss) that is clearly above ``base``
    (:func:`clearly_above`) and whose successor is too, or that is the last; None when none is.
    It depends only on the checkpoints up to the one after it, so cutting later ones leaves it."""
    value, items = checkpoint_values(few)
    clear = clearly_above(value, items, base, likelihood == "binomial" and few.proportion)
    order = np.argsort(-few.ckpt_loss, kind="stable")
    for i, c in enumerate(order):
        if clear[c] and (i + 1 == len(order) or clear[order[i + 1]]):
            window = np.zeros(len(order), dtype=bool)
            window[order[: i + POST_ONSET]] = True
            before = float(few.ckpt_loss[order[i - 1]]) if i else None
            return Onset(float(few.ckpt_loss[c]), before, window)
    return None


def few_shot_shape(spec: law_.LawSpec, terms: bool = False) -> law_.LawSpec:
    """The law with k = 0 as a curve in loss alone: the hinge B + A·h(E − L) with ``spec``'s hinge
    (ReLU or softplus); E = C at D0 = 1. With ``terms``, also those of ``spec``'s optional terms
    that shape one curve (``LawTerm.few_shot``: the ceiling U, not the shift Δ between curves)."""
    flags = {t.flag: terms and t.few_shot and getattr(spec, t.flag) for t in law_.TERMS}
    return law_.LawSpec(elbow="log_power", hinge=spec.hinge, temperature=spec.temperature, d0=1.0, **flags)


def _hinge_fit(few: TaskData, likelihood: str, spec: law_.LawSpec, terms: bool = False) -> tuple[Problem, np.ndarray]:
    """The hinge B + A·relu(E − L) fitted to ``few`` (all rows), multi-start over E (``terms``:
    the shape of :func:`few_shot_shape` with ``spec``'s terms)."""
    gt_spec = few_shot_shape(spec, terms)
    # the hinge as the law with k = 0: parameters (A, B, k, alpha, C); k and alpha pinned
    problem = make_problem(gt_spec, few, likelihood)
    lower, upper = problem.lower.copy(), problem.upper.copy()
    lower[2] = upper[2] = 0.0
    lower[3] = upper[3] = 1.0
    problem = replace(problem, lower=lower, upper=upper)
    grid = np.linspace(few.loss.min() - 0.05, few.loss.max() + 0.05, 24)
    span = max(float(np.ptp(few.loss)), 0.05)
    base = float(np.quantile(few.value, 0.25))
    columns = [np.full_like(grid, (few.value.max() - base + 1e-3) / span),
               np.full_like(grid, base), np.zeros_like(grid), np.ones_like(grid), grid]
    top = float(few.value.max())
    for i, term in enumerate(gt_spec.terms, start=len(columns)):  # the term's start, inside its box
        columns.append(np.full_like(grid, min(term.start(top, few.proportion), float(problem.upper[i]))))
    theta, f, _, _ = lm_batch(problem, np.stack(columns, -1))
    return problem, theta[int(np.argmin(f))]


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


def with_interval(truth: GroundTruth, data: TaskData, n_boot: int = 100, seed: int = 0,
                  **settings) -> GroundTruth:
    """``truth`` with a 5-95% bootstrap interval of its elbow: each resample draws the checkpoints
    with replacement (the distinct ones drawn are kept: a checkpoint twice would pass the onset's
    "and its successor" test by itself) and redraws every kept row's items as Binomial(n, observed
    rate) (proportions; other metrics keep their values), then reapplies the ground-truth rule
    (``settings``: those of :func:`fit_ground_truth`). The interval is over the resamples that
    locate an elbow; ``n_located`` of ``n_boot`` did. Nothing is drawn when ``truth`` has no elbow."""
    if truth.elbow_loss is None or n_boot <= 0:
        return truth
    few = data.few_shot_only()
    rng = np.random.default_rng(seed)
    elbows = []
    for _ in range(n_boot):
        keep = np.zeros(few.n_checkpoints, dtype=bool)
        keep[rng.integers(0, few.n_checkpoints, few.n_checkpoints)] = True
        sub = few.select_checkpoints(keep)
        if few.proportion:
            n = sub.n_items.astype(np.int64)
            sub = replace(sub, value=rng.binomial(n, np.clip(sub.value, 0.0, 1.0)) / np.maximum(n, 1))
        elbow = fit_ground_truth(sub, **settings).elbow_loss
        if elbow is not None:
            elbows.append(elbow)
    p05, p95 = (np.percentile(elbows, [5, 95]).tolist() if len(elbows) >= max(10, n_boot // 4) else (None, None))
    return replace(truth, elbow_p05=p05, elbow_p95=p95, n_boot=n_boot, n_located=len(elbows))


def curve_ground_truth(data: TaskData, level: int, likelihood: Likelihood = "binomial",
                       rule: str = "onset") -> GroundTruth:
    """One curve's own hinge (``level`` 0: few-shot; else that data level, all subsets), fitted
    to its rows alone by the ground-truth rule (``elbow_loss`` None unless located)."""
    rows = data.few_shot if level == 0 else (~data.few_shot & (data.n_train == level))
    curve = data.select_rows(rows)
    return fit_ground_truth(replace(curve, few_shot=np.ones(curve.n_rows, dtype=bool)), likelihood, rule=rule)


def curve_elbow(data: TaskData, level: int, likelihood: Likelihood = "binomial", rule: str = "onset") -> float | None:
    """The elbow of :func:`curve_ground_truth`: None when the curve has not left base inside the data."""
    return curve_ground_truth(data, level, likelihood, rule).elbow_loss
