"""The per-task pipeline that the CLI, the backtest and the report all call.

    data -> EmergenceLawFit (MLE) -> ground truth -> bootstrap -> FLOPs -> TaskPrediction

Public API
----------
``FitConfig``            one config object for the whole stage (law form, likelihood, n_boot,
                         seed, method, ...), passed whole.
``TaskPrediction``       one task's answer; ``to_json()`` gives the issue's JSON keys (below).
``predict_data(data, config, *, ground_truth=None, progress=None, simulated=False)``
                         the pipeline on a ``TaskData`` (the backtest calls this on subsets,
                         passing the all-checkpoint ``ground_truth`` it computed once).
``predict_task(folder, task, config, progress=None, cache=None)``
``predict_all(folder, config, tasks=None, progress=False, workers=1, cache=None) -> list[TaskPrediction]``

Methods: ``config.method == "mle"`` runs here. Another method is an entry of
:data:`METHOD_HOOKS` (``"bayes"``: :mod:`fitting.bayes`), imported when used: its
``predict_data(data, config, *, ground_truth=None, progress=None, simulated=False)`` returns a
``TaskPrediction`` with ``method`` set, and its ``predict_all(folder, config, tasks=None,
progress=False)`` may pool tasks (the hierarchical model). A method module builds its records
with :func:`empty_record` and :func:`with_flops`; this module never imports it by name. Percentile keys are shared, so the
tables of both methods line up.

Errors: ``predict_data`` raises ``FitError`` when the data cannot be fitted (fewer than 3
checkpoints, or fewer rows than parameters); ``predict_task``/``predict_all`` turn that into a
record with a null prediction and a ``note``. Configuration errors (binomial likelihood on a
metric that is not a proportion, unknown task) always raise.

Few-shot-only data (no finetune rows): no prediction can be made; the record has
``emergence_loss = null``, ``converged = false`` and a ``note`` saying so, while the
ground-truth elbow and the FLOPs of that elbow are still reported.

JSON keys of ``TaskPrediction.to_json()``: ``task, method, law, likelihood, emergence_loss,
emergence_loss_p05 … _p95 (p05 p10 p25 p50 p75 p90 p95), ground_truth_loss, emerged,
ground_truth (details), emergence_flops, emergence_flops_p05 … _p95, flops_multiple,
flops_multiple_p05 … _p95, emergence_loss_profile_low, emergence_loss_profile_high,
profile_open (list of "low"/"high": sides the data do not bound), emergence_loss_boot_p05,
emergence_loss_boot_p95 (the bootstrap's own ends), interval_reliable, flops_extrapolated,
flops_law, flops_law_draws (compute-law draws behind the FLOPs percentiles; 0: its uncertainty left
out), ground_truth_flops, max_flops,
converged, message, n_checkpoints, n_rows, n_boot, n_boot_failed, params, loglik, simulated,
note``. Numbers that do not exist are ``null``, never NaN.

Size: one cohesive thing, the per-task pipeline (fit, certified intervals, FLOPs) and its
record; the law, optimiser, intervals and ground truth it calls live in their own modules.
"""

from __future__ import annotations

import importlib

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emergence.errors import FitError
from fitting import compute
from fitting import law as law_
from fitting.cost import task_cost
from fitting.data import TaskData
from fitting.fit import EmergenceLawFit, MIN_RISE, pinned_edge
from fitting.ground_truth import GroundTruth, fit_ground_truth, with_interval
from fitting.schema import ResultsFolder
from fitting.uncertainty import PERCENTILES, Progress, bootstrap, profile_interval

# Prediction methods other than the maximum likelihood of this module: name -> the
# "module:function" pair (one task, all tasks) with the signatures of predict_data and
# predict_all, imported when used (PyMC is an extra). A new method is one entry.
METHOD_HOOKS = {"bayes": ("fitting.bayes:predict_data", "fitting.bayes:predict_all")}
METHODS = ("mle", *METHOD_HOOKS)


@dataclass(frozen=True)
class FitConfig:
    """Everything that decides a prediction. ``law`` is a key of ``LAW_FORMS`` or a LawSpec."""

    law: str | law_.LawSpec = "log_power"
    d0: float | None = None  # D_0, the data level that stands for few-shot (None: the law's own, 1)
    likelihood: str = "binomial"
    n_boot: int = 1000
    seed: int = 0
    method: str = "mle"
    n_starts: int = 24
    items: str = "fitted"  # bootstrap item redraw: fitted | observed | none (fitting.uncertainty)
    compute_law: str = "auto"  # auto | pooled (fitting.compute.choose_law)
    compute_draws: int = compute.LAW_DRAWS  # compute-law draws in the FLOPs interval (0: leave its uncertainty out)
    metric: str | None = None  # default: accuracy, or the task's only metric
    gt_alpha: float = 1e-3  # ground truth: likelihood-ratio test level
    gt_min_rise: float = MIN_RISE  # ground truth and "no rise": minimal rise above base (metric units)
    gt_rule: str = "onset"  # ground truth: "onset" (elbow where accuracy leaves base) or "hinge" (fitting.ground_truth)
    gt_boot: int = 100  # ground truth: resamples of its 5-95% interval (fitting.ground_truth.with_interval; 0: none)
    profile: bool = True  # also the 90% profile-likelihood interval (fitting.uncertainty.profile_interval)
    fixed: tuple[tuple[str, float], ...] = ()  # law parameters held at given values (LawSpec.fixed)
    bayes: Any = None  # method="bayes": a fitting.bayes.BayesConfig (None: its defaults, this seed)

    def __post_init__(self) -> None:
        if isinstance(self.law, str) and self.law not in law_.LAW_FORMS:
            raise FitError(f"unknown law {self.law!r}; choose one of {', '.join(law_.LAW_FORMS)}")
        if self.d0 is not None and not (np.isfinite(self.d0) and self.d0 >= 1):
            raise FitError(f"d0 must be a number >= 1 (log D0 must not be negative), got {self.d0!r}")
        if self.likelihood not in ("binomial", "gaussian"):
            raise FitError(f"likelihood must be 'binomial' or 'gaussian', got {self.likelihood!r}")
        if self.method not in METHODS:
            raise FitError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.n_boot < 0:
            raise FitError(f"n_boot must be >= 0, got {self.n_boot}")
        if self.seed < 0:
            raise FitError(f"seed must be >= 0, got {self.seed}")
        if self.compute_draws < 0:
            raise FitError(f"compute_draws must be >= 0, got {self.compute_draws}")
        if self.items not in ("observed", "fitted", "none"):
            raise FitError(f"items must be observed, fitted or none, got {self.items!r}")
        if self.fixed:
            try:
                _ = self.spec
            except ValueError as err:
                raise FitError(f"--fix: {err}") from None

    @property
    def spec(self) -> law_.LawSpec:
        spec = law_.LAW_FORMS[self.law] if isinstance(self.law, str) else self.law
        spec = spec if self.d0 is None else spec.with_(d0=float(self.d0))
        return spec.with_(fixed=tuple(self.fixed)) if self.fixed else spec

    def ground_truth(self, data: TaskData) -> GroundTruth:
        """The few-shot ground-truth elbow of ``data`` under these settings."""
        settings = dict(likelihood=self.likelihood, alpha_level=self.gt_alpha, min_rise=self.gt_min_rise,
                        spec=self.spec, rule=self.gt_rule)
        return with_interval(fit_ground_truth(data, **settings), data, self.gt_boot, self.seed, **settings)

    @property
    def law_name(self) -> str:
        if not isinstance(self.law, str):
            return self.spec.label
        name = self.law if self.spec.d0 == 1.0 else f"{self.law}+d0={self.spec.d0:g}"
        return "+".join([name, *(f"{k}={v:g}" for k, v in self.fixed)])


@dataclass
class TaskPrediction:
    """One task's prediction. Loss in nats; FLOPs absolute; multiples of ``max_flops``."""

    task: str
    method: str
    law: str
    likelihood: str
    emergence_loss: float | None
    emergence_loss_pct: dict[int, float | None]
    ground_truth: GroundTruth | None
    emergence_flops: float | None
    emergence_flops_pct: dict[int, float | None]
    flops_multiple: float | None
    flops_multiple_pct: dict[int, float | None]
    flops_extrapolated: bool | None
    flops_law: str | None
    ground_truth_flops: float | None
    max_flops: float
    converged: bool
    message: str
    n_checkpoints: int
    n_rows: int
    n_boot: int
    n_boot_failed: int
    params: dict[str, float] = field(default_factory=dict)
    loglik: float | None = None
    simulated: bool = False
    note: str = ""
    profile: Any = None  # fitting.uncertainty.ProfileInterval or None
    boot_pct: dict[int, float | None] = field(default_factory=dict)  # bootstrap alone, before the hull
    interval_reliable: bool | None = None  # False: the data do not bound the prediction (see _add_profile)
    samples: np.ndarray | None = None  # bootstrap (or posterior) emergence-loss samples; not in JSON
    flops_law_draws: int = 0  # compute-law draws behind the FLOPs percentiles (0: its uncertainty left out)
    pinned: str | None = None  # "no rise" / "lowest checkpoint" / "search bound" (fitting.fit.pinned_edge)
    family_elbows: dict[str, float | None] = field(default_factory=dict)  # ground truth per family (several)
    cost: Any = None  # fitting.cost.Cost: the finetuning and evaluation FLOPs behind the prediction
    dispersion: float | None = None  # phi, the over-dispersion the intervals allow for (fitting.uncertainty)

    @property
    def ground_truth_loss(self) -> float | None:
        return None if self.ground_truth is None else self.ground_truth.elbow_loss

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(task=self.task, method=self.method, law=self.law,
                                   likelihood=self.likelihood, emergence_loss=self.emergence_loss)
        out.update(_pct_keys("emergence_loss", self.emergence_loss_pct))
        gt = self.ground_truth
        out.update(ground_truth_loss=self.ground_truth_loss, emerged=None if gt is None else gt.emerged,
                   ground_truth=None if gt is None else gt.to_json(),
                   emergence_flops=self.emergence_flops)
        out.update(_pct_keys("emergence_flops", self.emergence_flops_pct))
        out["flops_multiple"] = self.flops_multiple
        out.update(_pct_keys("flops_multiple", self.flops_multiple_pct))
        prof = self.profile
        out.update(emergence_loss_profile_low=None if prof is None else prof.low,
                   emergence_loss_profile_high=None if prof is None else prof.high,
                   profile_open=None if prof is None else [s for s, o in (("low", prof.open_low),
                                                                         ("high", prof.open_high)) if o])
        out.update(emergence_loss_boot_p05=self.boot_pct.get(5), emergence_loss_boot_p95=self.boot_pct.get(95),
                   interval_reliable=self.interval_reliable)
        out.update(flops_extrapolated=self.flops_extrapolated, flops_law=self.flops_law,
                   flops_law_draws=self.flops_law_draws,
                   ground_truth_flops=self.ground_truth_flops, max_flops=self.max_flops,
                   converged=self.converged, message=self.message, n_checkpoints=self.n_checkpoints,
                   n_rows=self.n_rows, n_boot=self.n_boot, n_boot_failed=self.n_boot_failed,
                   params=self.params, loglik=self.loglik, pinned=self.pinned,
                   simulated=self.simulated, note=self.note, family_elbows=self.family_elbows or None,
                   family_elbow_spread=self.family_spread, dispersion=self.dispersion,
                   cost=None if self.cost is None else self.cost.to_json())
        return _clean(out)

    @property
    def family_spread(self) -> float | None:
        """Largest minus smallest located per-family elbow (None with fewer than two)."""
        located = [e for e in self.family_elbows.values() if e is not None]
        return max(located) - min(located) if len(located) >= 2 else None


def _pct_keys(prefix: str, pct: dict[int, float | None]) -> dict[str, float | None]:
    return {f"{prefix}_p{q:02d}": pct.get(q) for q in PERCENTILES}


def _clean(x):
    """NaN/inf -> None, numpy scalars -> Python, recursively (valid JSON)."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


# --------------------------------------------------------------------------- pipeline


PINNED_NOTES = {
    "lowest checkpoint": ("prediction pinned on the lowest checkpoint loss ({:.3f} nats): it cannot be told "
                          "apart from the bound the at-chance few-shot results set there, 'not before this checkpoint'"),
    "search bound": "prediction pinned at the edge of the search range: the data do not locate the elbow",
    "no rise": ("no rise: the fitted law lifts no row of the data above its base by the ground truth's minimal "
                "rise, so the data do not locate the elbow and the prediction is where the optimiser stopped"),
}


def predict_data(data: TaskData, config: FitConfig = FitConfig(), *, ground_truth: GroundTruth | None = None,
                 progress: Progress | None = None, simulated: bool = False) -> TaskPrediction:
    """Fit, bootstrap and convert one task's data (see module docstring)."""
    if config.method != "mle":
        return method_hook(config.method, 0)(data, config, ground_truth=ground_truth, progress=progress,
                                              simulated=simulated)
    check_task(data, config)
    if ground_truth is None:
        ground_truth = config.ground_truth(data)
    record = empty_record(data, config, ground_truth, simulated)
    if not data.has_finetune:
        record.note = ("few-shot results only: the emergence law needs finetune results, so no "
                       "prediction (the ground-truth elbow and the compute law still work)")
        return with_flops(record, data, config)
    unidentified = shape_unidentified(data, config.spec)
    if unidentified:
        record.note = unidentified
        return with_flops(record, data, config)
    model = EmergenceLawFit(config.spec, config.likelihood, n_starts=config.n_starts, seed=config.seed).fit(data)
    record.converged, record.message = model.converged_, model.message_
    record.params, record.loglik = model.params_, model.loglik_
    if not model.converged_:
        record.note = "maximum-likelihood fit did not converge: no prediction"
        return with_flops(record, data, config)
    prof, boot, gain = _certified_intervals(data, model, config, progress)
    record.params, record.loglik = model.params_, model.loglik_
    record.emergence_loss = model.emergence_loss_
    record.pinned = pinned_edge(config.spec, data, config.likelihood, model.theta_, config.gt_min_rise)
    if record.pinned:
        record.note = PINNED_NOTES[record.pinned].format(float(data.ckpt_loss.min()))
    if gain > 0:
        record.message = model.message_
        record.note = "; ".join(filter(None, [record.note, (
            f"the multi-start optimum was improved by {gain:.3g} log-likelihood units from a point the "
            "profile or the bootstrap found; the intervals were recomputed around the better optimum")]))
    phi = prof.dispersion if prof is not None else (boot.dispersion.phi if boot is not None and boot.dispersion else None)
    record.dispersion = phi
    if phi is not None and phi > DISPERSION_NOTE:
        record.note = "; ".join(filter(None, [record.note, (
            f"the counts vary {phi:.3g}x more than binomial around the fitted law (over-dispersed items, "
            "checkpoints, or a law that does not fit): the intervals are widened for it")]))
    if boot is not None:
        record.emergence_loss_pct = dict(boot.percentiles)
        record.n_boot, record.n_boot_failed, record.samples = boot.n_boot, boot.n_failed, boot.emergence_loss
    if config.profile:
        _add_profile(record, data, model, prof)
    return with_flops(record, data, config)


MIN_LEVEL_SPAN = 2.0  # the largest finetuning data level over the smallest, to identify E(D)
SHAPE_PARAMS = ("k", "alpha")  # what E(D) = C - k·g(D; alpha) needs besides C


def shape_unidentified(data: TaskData, spec: law_.LawSpec) -> str | None:
    """Why the data cannot identify how the elbow moves with D (None when they can): one
    finetuning data level, or levels spanning less than ``MIN_LEVEL_SPAN`` (a factor), leave k
    and alpha (and so the extrapolation to D0, the prediction) free along a ridge: across law
    forms the prediction then ranges over nats. Holding k and alpha (``--fix``) identifies it."""
    if {name for name, _ in spec.fixed} >= set(SHAPE_PARAMS):
        return None
    levels = data.data_levels
    if len(levels) >= 2 and max(levels) / max(min(levels), 1) >= MIN_LEVEL_SPAN:
        return None
    which = (f"one finetuning data level (D = {levels[0]})" if len(levels) == 1 else
             f"finetuning data levels {levels} spanning less than a factor {MIN_LEVEL_SPAN:g}")
    return (f"E(D) is not identified from {which}: the prediction would be anywhere along a ridge, so none "
            "is made; finetune at several data levels (the paper: a factor 2-4 apart, over 1-2 decades), "
            "or hold the shape with --fix k=VALUE --fix alpha=VALUE")


DISPERSION_NOTE = 1.5  # phi above which the note says the intervals were widened for over-dispersion
CERTIFY_ROUNDS = 3  # refits from a better profile/bootstrap point before the intervals are kept


def _certified_intervals(data: TaskData, model: EmergenceLawFit, config: FitConfig, progress):
    """Profile and bootstrap around an optimum that no point they visit beats: when one scores
    better on the data, the fit restarts from it (``EmergenceLawFit.refit_from``) and both are
    recomputed, at most ``CERTIFY_ROUNDS`` times (the last intervals are kept as they come).
    Returns (profile or None, bootstrap or None, total log-likelihood gain)."""
    gain = 0.0
    for round_ in range(CERTIFY_ROUNDS + 1):
        refit = round_ < CERTIFY_ROUNDS
        prof = profile_interval(data, model) if config.profile else None
        if refit and prof is not None and prof.theta is not None:
            step = model.refit_from(data, prof.theta)
            if step > 0:
                gain += step
                continue
        boot = None
        if config.n_boot > 0:
            boot = bootstrap(data, model, config.n_boot, config.seed, config.items, progress=progress)
            if prof is not None and _outside(prof, boot.percentiles):  # flat direction: refit from its far ends too
                boot = bootstrap(data, model, config.n_boot, config.seed, config.items, progress=progress,
                                 extra_starts=prof.end_thetas(), rerun_of=boot)
            step = model.refit_from(data, boot.theta[boot.converged]) if refit else 0.0
            if step > 0:
                gain += step
                continue
        return prof, boot, gain
    raise AssertionError("unreachable: the last round returns")


def _outside(prof, pct: dict[int, float]) -> bool:
    """The profile interval reaches beyond the bootstrap's 5-95% interval by more than half its
    width on a side, or is open (the rerun costs 3x; on well-bounded fits the two agree)."""
    if not pct or prof.open_low or prof.open_high:
        return True
    half = 0.5 * (pct[95] - pct[5])
    return prof.low < pct[5] - half or prof.high > pct[95] + half


def _add_profile(record: TaskPrediction, data: TaskData, model: EmergenceLawFit, prof=None) -> None:
    """The profile-likelihood interval, combined with the bootstrap's (rule below).

    Rule: the reported 5-95% interval is the hull of the bootstrap 5-95% interval and the 90%
    profile-likelihood interval (p05 = min of the lows, p95 = max of the highs; p10-p90 stay
    the bootstrap's). The bootstrap is warm-started at the MLE and stays near it when the
    likelihood is flat in the prediction (few, pre-emergence checkpoints); the profile scans
    the prediction itself. Before the hull, when the profile reaches beyond the bootstrap's
    interval by more than half its width on a side (or is open), the bootstrap is rerun with
    every resample also started from the profile's two end solutions
    (``bootstrap(extra_starts=...)``, best optimum kept).
    ``emergence_loss_boot_p05/_p95`` keep the bootstrap's own ends.
    ``interval_reliable`` is False when the profile is open on a side (flat up to the edge of
    the scanned range: the data do not bound the prediction) or the bootstrap collapsed to a
    point; measured coverage by number of checkpoints: docs/law.md.
    """
    prof = profile_interval(data, model) if prof is None else prof
    record.profile = prof
    pct = record.emergence_loss_pct
    record.boot_pct = {q: pct.get(q) for q in (5, 95)} if pct else {}
    degenerate = bool(pct) and 5 in pct and 95 in pct and pct[95] - pct[5] < 1e-3
    if prof is None:
        record.interval_reliable = None if not pct else not degenerate
        return
    notes = []
    if prof.open_low or prof.open_high:
        notes.append(f"the likelihood is flat up to the edge of the scanned range [{prof.grid[0]:.2f}, "
                     f"{prof.grid[-1]:.2f}] on the "
                     + " and ".join(s for s, o in (("low", prof.open_low), ("high", prof.open_high)) if o)
                     + " side: the data do not bound the prediction there; interval unreliable")
    if 5 in pct and 95 in pct and (prof.low < pct[5] or prof.high > pct[95]):
        notes.append(f"5-95% interval widened to include the 90% profile-likelihood interval "
                     f"[{prof.low:.3f}, {prof.high:.3f}] (bootstrap alone [{pct[5]:.3f}, {pct[95]:.3f}])")
        pct[5], pct[95] = min(pct[5], prof.low), max(pct[95], prof.high)
    record.interval_reliable = not (prof.open_low or prof.open_high or degenerate)
    record.note = "; ".join(filter(None, [record.note, *notes]))


def check_task(data: TaskData, config: FitConfig) -> None:
    """Refuse a task the configuration cannot fit (before any work is started)."""
    if config.likelihood == "binomial" and not data.proportion:
        raise FitError(f"task {data.task!r}: metric {data.metric!r} is not a proportion of items; "
                       "use --likelihood gaussian")


def empty_record(data: TaskData, config: FitConfig, gt: GroundTruth, simulated: bool) -> TaskPrediction:
    return TaskPrediction(
        task=data.task, method=config.method, law=config.law_name, likelihood=config.likelihood,
        emergence_loss=None, emergence_loss_pct={}, ground_truth=gt, emergence_flops=None,
        emergence_flops_pct={}, flops_multiple=None, flops_multiple_pct={}, flops_extrapolated=None,
        flops_law=None, ground_truth_flops=None, max_flops=data.max_flops, converged=False,
        message="", n_checkpoints=data.n_checkpoints, n_rows=data.n_rows, n_boot=0,
        n_boot_failed=0, simulated=simulated,
    )


def with_flops(record: TaskPrediction, data: TaskData, config: FitConfig) -> TaskPrediction:
    """Fill the FLOPs fields (prediction and ground truth) from the compute law."""
    try:
        law = compute.choose_law(data.ckpt_loss, data.ckpt_flops, data.families, config.compute_law)
    except FitError as err:
        record.note = "; ".join(filter(None, [record.note, f"no FLOPs conversion: {err}"]))
        return record
    record.flops_law = law.label
    if record.ground_truth_loss is not None:
        record.ground_truth_flops = compute._finite(float(law.flops(record.ground_truth_loss)))
    if record.emergence_loss is None:
        return record
    laws = compute.sample_laws(law, config.compute_draws, config.seed) if record.emergence_loss_pct else None
    conv = compute.convert(law, record.emergence_loss, record.emergence_loss_pct, data.max_flops, laws, config.seed)
    record.emergence_flops, record.flops_multiple = conv.flops, conv.multiple
    record.emergence_flops_pct, record.flops_multiple_pct = conv.flops_percentiles, conv.multiple_percentiles
    record.flops_extrapolated, record.flops_law_draws = conv.extrapolated, conv.n_law_draws
    if conv.note:
        record.note = "; ".join(filter(None, [record.note, conv.note]))
    return record


def predict_task(folder: ResultsFolder, task: str, config: FitConfig = FitConfig(),
                 progress: Progress | None = None, cache=None) -> TaskPrediction:
    """The pipeline for one task of a results folder.

    A task whose data cannot be fitted (``FitError``: e.g. fewer than 3 checkpoints) gives a
    record with a null prediction and the reason in ``note``, so one thin task does not stop
    a multi-task run. (``predict_data`` raises instead; the backtest relies on that.)
    ``cache`` (a :class:`fitting.backtest_cache.BacktestCache`): the ground truth is read from
    it, or computed and stored there for ``backtest`` and ``report``.
    """
    data = TaskData.from_folder(folder, task, config.metric)
    truth = None if cache is None or config.method != "mle" else cache.ground_truth(data, config)
    try:
        return predict_data(data, config, ground_truth=truth, progress=progress, simulated=is_simulated(folder))
    except FitError as err:
        check_task(data, config)  # configuration errors still stop the run
        gt = config.ground_truth(data) if truth is None else truth
        record = empty_record(data, config, gt, is_simulated(folder))
        record.note = f"no prediction: {err}"
        return with_flops(record, data, config)


def predict_all(folder: ResultsFolder, config: FitConfig = FitConfig(), tasks: list[str] | None = None,
                progress: bool = False, workers: int = 1, cache=None) -> list[TaskPrediction]:
    """Every task (or ``tasks``), in order; progress on stderr when ``progress``.

    ``workers`` > 1: tasks run in that many processes, this one and ``workers - 1`` spawned
    (:func:`fitting.pool.run_parallel`), each task's work in one of them; the records are the
    same as with one.
    ``cache``: see :func:`predict_task`."""
    tasks = folder.tasks if tasks is None else list(tasks)
    for task in tasks:  # validate every task before any work (and before progress bars)
        check_task(TaskData.from_folder(folder, task, config.metric), config)
    if config.method != "mle":
        return method_hook(config.method, 1)(folder, config, tasks=tasks, progress=progress)
    if workers < 1:
        raise FitError(f"workers must be >= 1, got {workers}")
    if workers > 1 and len(tasks) > 1:
        out = _in_processes(folder, config, tasks, min(workers, len(tasks)), progress, cache)
    elif progress:
        out = _with_progress(folder, config, tasks, cache)
    else:
        out = [predict_task(folder, t, config, cache=cache) for t in tasks]
    for record in out:
        record.family_elbows = family_elbows(folder, record.task, config)
        record.cost = task_cost(folder, record.task, record.emergence_flops)
    return out


def _in_processes(folder: ResultsFolder, config: FitConfig, tasks: list[str], workers: int, progress: bool,
                  cache) -> list[TaskPrediction]:
    from fitting.pool import run_parallel
    from fitting.progress import CountBar

    with CountBar("fit", len(tasks), progress) as tick:
        return run_parallel(_predict_task_job, [(folder, t, config, cache) for t in tasks], workers,
                            lambda i: tick(f"tasks (done: {tasks[i]})"))


def _predict_task_job(args) -> TaskPrediction:
    folder, task, config, cache = args
    return predict_task(folder, task, config, None, cache)


def family_elbows(folder: ResultsFolder, task: str, config: FitConfig) -> dict[str, float | None]:
    """The few-shot ground-truth elbow of each pretraining run (family) alone, when the folder
    has several: the paper's claim is that emergence happens at one pretraining loss across
    sizes, and the spread of these says whether the data agree (empty with one family)."""
    data = TaskData.from_folder(folder, task, config.metric)
    families = sorted(set(data.families))
    if len(families) < 2 or not data.few_shot.any():
        return {}
    out = {}
    for family in families:
        part = data.select_checkpoints(np.asarray(data.families) == family)
        out[family] = (fit_ground_truth(part, config.likelihood, config.gt_alpha, config.gt_min_rise, config.spec,
                                        config.gt_rule).elbow_loss if part.few_shot.any() else None)
    return out


def _with_progress(folder: ResultsFolder, config: FitConfig, tasks: list[str], cache=None) -> list[TaskPrediction]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    out = []
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        for task in tasks:
            tid = bar.add_task(f"bootstrap {task}", total=max(config.n_boot, 1))
            out.append(predict_task(folder, task, config, cache=cache,
                                    progress=lambda done, total, tid=tid: bar.update(tid, completed=done)))
            bar.update(tid, completed=max(config.n_boot, 1))
    return out


def method_hook(method: str, which: int):
    """The function of ``method`` for one task (``which=0``) or all tasks (1)."""
    module, name = METHOD_HOOKS[method][which].split(":")
    return getattr(importlib.import_module(module), name)


def is_simulated(folder: ResultsFolder) -> bool:
    return bool(folder.metadata.get("simulated", False))
