"""Backtest: how far ahead, in pretraining FLOPs, does the emergence prediction work?

Protocol (Snell et al. 2024, Sec. 6; ``docs/backtest.md``), per task:

1. **Ground truth**: the few-shot elbow fitted to every checkpoint
   (:func:`fitting.ground_truth.fit_ground_truth`); null when few-shot performance never left chance.
2. **Cutoffs**: every distinct checkpoint FLOPs value, from the largest (all checkpoints) down
   to the smallest that keeps at least ``min_checkpoints`` checkpoints and still allows a fit
   (the first cutoff whose fit raises :class:`~emergence.errors.FitError` for lack of data ends
   the list). Each cutoff keeps the checkpoints with FLOPs <= cutoff (their finetune and
   few-shot rows), refits, and predicts the few-shot emergence loss with its 5–95% interval
   using the configured method (:func:`fitting.predict.predict_data`).
3. **Success**: the fit converged and ``|MLE prediction − ground truth| <= tolerance``
   (0.1 nats by default). **Covered**: ``p05 <= ground truth <= p95``; ``covered_profile``
   the same for the 90% profile-likelihood interval when the fit gives one (a side the data do
   not bound counts as unbounded).
4. **Earliest post-emergence checkpoint**: among the task's checkpoints whose pretraining loss
   is strictly below the ground-truth elbow (so the ground-truth hinge puts their few-shot
   accuracy above its base: they have left chance), the one with the fewest FLOPs (ties: the
   lower loss). **Most capable checkpoint of a cutoff**: the kept checkpoint with the lowest
   pretraining loss (ties: more FLOPs).
5. **FLOP multiplier** = FLOPs(earliest post-emergence checkpoint) ÷ FLOPs(most capable
   checkpoint of the earliest successful cutoff). ``flop_multiplier`` uses the smallest
   successful cutoff even when a larger one fails (the paper's reading);
   ``flop_multiplier_strict`` the smallest cutoff from which every larger cutoff succeeds.
   Null when no cutoff succeeds or the task never emerged. A multiplier <= 1 means the first
   success already saw a post-emergence checkpoint: no foresight.
6. **Pinned predictions** (``CutoffResult.pinned``, :func:`fitting.fit.pinned_edge`): a
   prediction from a fit in which nothing rises (*no rise*: the law lifts no row above its base
   by 0.05, the ground truth's minimal rise, so any elbow fits equally), on the fit's lowest
   checkpoint loss (within 0.05 nats) or on the edge of the search range cannot be told apart
   from that edge. Before emergence the first kind is
   common: when the finetuned curves point higher than the at-chance few-shot results allow,
   the maximum sits on the lowest checkpoint, and it "succeeds" whenever that checkpoint
   happens to lie within the tolerance of the truth. ``flop_multiplier_unpinned`` is the
   paper's reading counting only successes that are not pinned.

Ablations (the paper's Table 2) refit one variant of the data per row, on the **base set**:
the checkpoints of the largest cutoff whose kept checkpoints are all pre-emergence (the
realistic prediction setting; every checkpoint when the task never emerged, or with
``base="all"``). Variants: drop the k smallest / largest data levels, keep one subset seed,
keep the k checkpoints of the base set closest to emergence (lowest pretraining loss).
Ablation fits are MLE only (``n_boot=0``): the table is about the point error.

Size: one cohesive thing, the backtest's plan, scoring and multipliers over one set of cutoff
fits (the CLI's tables are in ``fitting.backtest_cli``, the cache in ``fitting.backtest_cache``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from emergence.errors import DiagnosticsError, EmergenceError, FitError
from fitting.cost import task_cost
from fitting.data import TaskData
from fitting.ground_truth import GroundTruth, checkpoint_values, clearly_above
from fitting.backtest_cache import BacktestCache, FitFailure
from fitting.pool import run_parallel
from fitting.predict import FitConfig, TaskPrediction, _clean, check_task, is_simulated, predict_data
from fitting.progress import CountBar, Tick
from fitting.schema import ResultsFolder




# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class AblationSpec:
    """Which Table-2 variants to run; each ``k`` gives one row."""

    drop_smallest: tuple[int, ...] = (1,)  # drop the k smallest data levels
    drop_largest: tuple[int, ...] = (1,)  # drop the k largest data levels
    one_subset: bool = True  # one row per subset seed, keeping only that seed
    last_k: tuple[int, ...] = (6, 4)  # keep the k base checkpoints nearest emergence
    base: str = "pre_emergence"  # or "all": which checkpoints the variants start from

    def __post_init__(self) -> None:
        if self.base not in ("pre_emergence", "all"):
            raise EmergenceError(f"ablation base must be 'pre_emergence' or 'all', got {self.base!r}")
        for name in ("drop_smallest", "drop_largest", "last_k"):
            bad = [k for k in getattr(self, name) if k < 1]
            if bad:
                raise EmergenceError(f"ablation {name} values must be >= 1, got {bad}")


@dataclass(frozen=True)
class BacktestConfig:
    """Everything that decides a backtest; ``fit`` is passed whole to the prediction pipeline."""

    fit: FitConfig = field(default_factory=FitConfig)
    tolerance: float = 0.1  # nats: success when |MLE − ground truth| <= tolerance
    min_checkpoints: int = 3  # fewest checkpoints a cutoff may keep
    workers: int = 1  # processes for the fits (1: in this process)
    ablations: AblationSpec | None = None  # None: no ablation table
    cutoffs: bool = True  # False: ablations only (``emergence ablate``)
    max_cutoffs: int | None = None  # None: every checkpoint's FLOPs is a cutoff; k: k of them, evenly spread

    def __post_init__(self) -> None:
        if not (self.tolerance > 0 and math.isfinite(self.tolerance)):
            raise EmergenceError(f"tolerance must be a positive number of nats, got {self.tolerance!r}")
        if self.min_checkpoints < 3:
            raise EmergenceError(f"min_checkpoints must be >= 3 (a hinge needs 3 points), got {self.min_checkpoints}")
        if self.workers < 1:
            raise EmergenceError(f"workers must be >= 1, got {self.workers}")
        if self.max_cutoffs is not None and self.max_cutoffs < 2:
            raise EmergenceError(f"max_cutoffs must be >= 2 (the largest and the smallest cutoff), got {self.max_cutoffs}")
        if self.fit.method == "bayes":  # a missing extra is one line now, not after the first fits
            from fitting.bayes import _import_pymc

            _import_pymc()


# --------------------------------------------------------------------------- results


@dataclass
class CutoffResult:
    """One cutoff of one task's backtest."""

    max_flops: float
    n_checkpoints: int
    most_capable: str  # kept checkpoint with the lowest pretraining loss
    most_capable_flops: float
    most_capable_loss: float
    pre_emergence: bool | None  # every kept checkpoint is before the ground-truth elbow
    emergence_loss: float | None = None  # MLE (or posterior point) prediction, nats
    p05: float | None = None
    p95: float | None = None
    converged: bool = False
    error: float | None = None  # prediction − ground truth, nats
    success: bool | None = None  # None when there is no ground truth
    covered: bool | None = None  # ground truth inside [p05, p95]; None without either
    profile_low: float | None = None  # 90% profile-likelihood interval (when the method gives one)
    profile_high: float | None = None
    profile_open: list[str] = field(default_factory=list)  # sides the data do not bound: "low"/"high"
    covered_profile: bool | None = None  # truth inside the profile interval (open sides unbounded)
    note: str = ""
    pinned: str | None = None  # "no rise" / "lowest checkpoint" / "search bound" (fitting.fit.pinned_edge)
    prediction: TaskPrediction | None = field(default=None, repr=False)  # not in JSON

    def to_json(self) -> dict[str, Any]:
        return _clean(dict(
            max_flops=self.max_flops, n_checkpoints=self.n_checkpoints,
            most_capable_checkpoint=self.most_capable, most_capable_flops=self.most_capable_flops,
            most_capable_loss=self.most_capable_loss, pre_emergence=self.pre_emergence,
            emergence_loss=self.emergence_loss, emergence_loss_p05=self.p05,
            emergence_loss_p95=self.p95, converged=self.converged, error=self.error,
            success=self.success, covered=self.covered, profile_low=self.profile_low,
            profile_high=self.profile_high, profile_open=self.profile_open,
            covered_profile=self.covered_profile, pinned=self.pinned, note=self.note,
        ))


@dataclass
class AblationResult:
    """One Table-2 row for one task: the MLE error of a variant of the base data."""

    name: str
    kind: str
    k: int | None
    n_checkpoints: int
    data_levels: list[int]
    emergence_loss: float | None = None
    error: float | None = None
    success: bool | None = None
    converged: bool = False
    note: str = ""
    pinned: str | None = None  # as CutoffResult.pinned

    def to_json(self) -> dict[str, Any]:
        return _clean({k: v for k, v in self.__dict__.items()})


@dataclass
class TaskBacktest:
    """A task's backtest: ground truth, every cutoff (largest first), multipliers, ablations."""

    task: str
    ground_truth: GroundTruth | None
    tolerance: float
    method: str
    cutoffs: list[CutoffResult]
    post_emergence_checkpoint: str | None = None
    post_emergence_flops: float | None = None
    ablations: list[AblationResult] = field(default_factory=list)
    simulated: bool = False
    note: str = ""
    law: str = "log_power"  # the law form fitted (FitConfig.law_name: with its D0 when not 1)
    cost: Any = None  # fitting.cost.Cost of the task's results (the prediction's spend)

    @property
    def ground_truth_loss(self) -> float | None:
        return None if self.ground_truth is None else self.ground_truth.elbow_loss

    @property
    def emerged(self) -> bool:
        """Few-shot accuracy left chance (the ground truth's test, as ``emergence fit`` says)."""
        return self.ground_truth is not None and self.ground_truth.emerged

    @property
    def located(self) -> bool:
        """The elbow is located inside the data: there is a ground truth to score cutoffs against."""
        return self.ground_truth_loss is not None

    @property
    def truth_label(self) -> str:
        """The ground-truth cell of a table: the elbow, or why there is none."""
        if self.located:
            return self.ground_truth.interval_text
        return "emerged, elbow not located" if self.emerged else "never emerged"

    def _smallest(self, keep: Callable[[CutoffResult], bool]) -> CutoffResult | None:
        wins = [c for c in self.cutoffs if c.success and keep(c)]
        return min(wins, key=lambda c: c.max_flops) if wins else None

    @property
    def earliest_success(self) -> CutoffResult | None:
        """The smallest cutoff that succeeded (the paper's reading)."""
        return self._smallest(lambda c: True)

    @property
    def earliest_unpinned_success(self) -> CutoffResult | None:
        """The smallest cutoff that succeeded with a prediction that is not pinned."""
        return self._smallest(lambda c: not c.pinned)

    @property
    def earliest_strict_success(self) -> CutoffResult | None:
        """The smallest cutoff from which every larger cutoff also succeeded."""
        best = None
        for c in sorted(self.cutoffs, key=lambda c: -c.max_flops):
            if not c.success:
                break
            best = c
        return best

    def _multiplier(self, cutoff: CutoffResult | None) -> float | None:
        if cutoff is None or self.post_emergence_flops is None:
            return None
        return self.post_emergence_flops / cutoff.most_capable_flops

    @property
    def flop_multiplier(self) -> float | None:
        return self._multiplier(self.earliest_success)

    @property
    def flop_multiplier_strict(self) -> float | None:
        return self._multiplier(self.earliest_strict_success)

    @property
    def flop_multiplier_unpinned(self) -> float | None:
        return self._multiplier(self.earliest_unpinned_success)

    @property
    def n_pinned_successes(self) -> int:
        return sum(bool(c.success and c.pinned) for c in self.cutoffs)

    @property
    def coverage(self) -> tuple[int, int]:
        """(covered, cutoffs with an interval and a ground truth)."""
        known = [c.covered for c in self.cutoffs if c.covered is not None]
        return sum(known), len(known)

    @property
    def coverage_profile(self) -> tuple[int, int]:
        """(covered, cutoffs with a profile-likelihood interval and a ground truth)."""
        known = [c.covered_profile for c in self.cutoffs if c.covered_profile is not None]
        return sum(known), len(known)

    @property
    def main_cutoff(self) -> CutoffResult | None:
        """The fit a user would have made before emergence: the largest pre-emergence cutoff
        (every checkpoint when the task never emerged)."""
        fitted = [c for c in self.cutoffs if c.prediction is not None]
        pre = [c for c in fitted if c.pre_emergence is not False]
        return max(pre, key=lambda c: c.max_flops) if pre else None

    def to_json(self) -> dict[str, Any]:
        first, strict = self.earliest_success, self.earliest_strict_success
        covered, n = self.coverage
        pcov, pn = self.coverage_profile
        gt = self.ground_truth
        return _clean(dict(
            task=self.task, method=self.method, law=self.law, tolerance=self.tolerance,
            cost=None if self.cost is None else self.cost.to_json(),
            ground_truth_loss=self.ground_truth_loss, emerged=self.emerged,
            ground_truth_reason=None if gt is None else gt.reason,
            ground_truth_p05=None if gt is None else gt.elbow_p05, ground_truth_p95=None if gt is None else gt.elbow_p95,
            post_emergence_checkpoint=self.post_emergence_checkpoint,
            post_emergence_flops=self.post_emergence_flops,
            flop_multiplier=self.flop_multiplier, flop_multiplier_strict=self.flop_multiplier_strict,
            flop_multiplier_unpinned=self.flop_multiplier_unpinned, n_pinned_successes=self.n_pinned_successes,
            earliest_success_max_flops=None if first is None else first.max_flops,
            earliest_success_checkpoint=None if first is None else first.most_capable,
            strict_success_max_flops=None if strict is None else strict.max_flops,
            coverage=covered / n if n else None, n_covered=covered, n_intervals=n,
            coverage_profile=pcov / pn if pn else None, n_covered_profile=pcov, n_profile=pn,
            simulated=self.simulated, note=self.note,
            cutoffs=[c.to_json() for c in self.cutoffs],
            ablations=[a.to_json() for a in self.ablations],
        ))


# --------------------------------------------------------------------------- the protocol


def cutoff_values(data: TaskData, min_checkpoints: int, max_cutoffs: int | None = None) -> list[float]:
    """Distinct checkpoint FLOPs, largest first, keeping >= ``min_checkpoints`` checkpoints each;
    with ``max_cutoffs`` k, k of them evenly spread by rank (the largest and the smallest always).

    Every cutoff refits on the checkpoints it keeps, so the full backtest's work grows with the
    square of a task's checkpoints; with a fixed k it grows linearly (``benchmarks/bench_scaling.py``)."""
    flops = np.sort(np.unique(data.ckpt_flops))[::-1]
    values = [float(f) for f in flops if int((data.ckpt_flops <= f).sum()) >= min_checkpoints]
    if max_cutoffs is None or len(values) <= max_cutoffs:
        return values
    return [values[i] for i in np.unique(np.linspace(0, len(values) - 1, max_cutoffs).round().astype(int))]


def post_emergence(data: TaskData, truth: GroundTruth) -> tuple[str | None, float | None]:
    """(name, FLOPs) of the cheapest checkpoint past the ground-truth elbow whose few-shot accuracy
    is clearly above base by the ground truth's own test (:func:`fitting.ground_truth.clearly_above`):
    not merely past a line's elbow while still at chance."""
    elbow = truth.elbow_loss
    if elbow is None:
        return None, None
    few = data.few_shot_only()
    value, items = checkpoint_values(few)
    base = max(truth.B, few.chance) if few.proportion else truth.B
    above = clearly_above(value, items, base, few.proportion)
    index = {name: i for i, name in enumerate(few.checkpoints)}
    past = np.array([i for i in np.flatnonzero(data.ckpt_loss < elbow)
                     if data.checkpoints[i] in index and above[index[data.checkpoints[i]]]], dtype=int)
    if past.size == 0:
        return None, None
    best = min(past, key=lambda i: (data.ckpt_flops[i], data.ckpt_loss[i]))
    return data.checkpoints[best], float(data.ckpt_flops[best])


def most_capable(data: TaskData) -> int:
    """Index of the kept checkpoint with the lowest pretraining loss (ties: more FLOPs)."""
    return min(range(data.n_checkpoints), key=lambda i: (data.ckpt_loss[i], -data.ckpt_flops[i]))


def ground_truth_of(data: TaskData, config: FitConfig) -> GroundTruth:
    return config.ground_truth(data)


def _blank_cutoff(data: TaskData, max_flops: float, elbow: float | None) -> CutoffResult:
    i = most_capable(data)
    pre = None if elbow is None else bool(np.all(data.ckpt_loss >= elbow))
    return CutoffResult(max_flops, data.n_checkpoints, data.checkpoints[i], float(data.ckpt_flops[i]),
                        float(data.ckpt_loss[i]), pre)


def score_cutoff(cut: CutoffResult, pred: TaskPrediction, truth: float | None, tolerance: float) -> CutoffResult:
    """Fill a cutoff from its prediction: error, success, coverage."""
    cut.prediction, cut.converged, cut.note = pred, bool(pred.converged), pred.note
    cut.pinned = getattr(pred, "pinned", None)
    cut.emergence_loss = pred.emergence_loss
    cut.p05, cut.p95 = pred.emergence_loss_pct.get(5), pred.emergence_loss_pct.get(95)
    _take_profile(cut, getattr(pred, "profile", None))
    if truth is None:
        return cut
    if cut.emergence_loss is not None and cut.converged:
        cut.error = cut.emergence_loss - truth
    cut.success = cut.error is not None and abs(cut.error) <= tolerance
    if cut.p05 is not None and cut.p95 is not None:
        cut.covered = bool(cut.p05 <= truth <= cut.p95)
    if cut.profile_low is not None and cut.profile_high is not None:
        low = -np.inf if "low" in cut.profile_open else cut.profile_low
        high = np.inf if "high" in cut.profile_open else cut.profile_high
        cut.covered_profile = bool(low <= truth <= high)
    return cut


# --------------------------------------------------------------------------- ablation variants


def ablation_variants(data: TaskData, spec: AblationSpec) -> list[tuple[str, str, int | None]]:
    """(row name, kind, k) of every ablation row that the base data allows."""
    levels, seeds = data.data_levels, data.subset_seeds
    rows: list[tuple[str, str, int | None]] = [("base (no ablation)", "base", None)]
    rows += [(f"drop {k} smallest level{'s' * (k > 1)}", "drop_smallest", k)
             for k in spec.drop_smallest if k < len(levels)]
    rows += [(f"drop {k} largest level{'s' * (k > 1)}", "drop_largest", k)
             for k in spec.drop_largest if k < len(levels)]
    if spec.one_subset and len(seeds) > 1:
        rows += [(f"one subset (seed {s})", "one_subset", s) for s in seeds]
    rows += [(f"last {k} checkpoints", "last_k", k) for k in spec.last_k if k < data.n_checkpoints]
    return rows


def apply_variant(data: TaskData, kind: str, k: int | None) -> TaskData:
    """The data of one ablation row (see :func:`ablation_variants`)."""
    levels = data.data_levels
    if kind == "base":
        return data
    if kind == "drop_smallest":
        return data.drop_levels(levels[:k])
    if kind == "drop_largest":
        return data.drop_levels(levels[-k:])
    if kind == "one_subset":
        return data.select_subset_seeds([k])
    if kind == "last_k":
        nearest = np.argsort(data.ckpt_loss, kind="stable")[:k]  # lowest loss = nearest emergence
        return data.select_checkpoints(np.isin(np.arange(data.n_checkpoints), nearest))
    raise EmergenceError(f"unknown ablation kind {kind!r}")


def ablation_base(data: TaskData, elbow: float | None, spec: AblationSpec) -> TaskData:
    """The base set: pre-emergence checkpoints (all when never emerged or ``base='all'``)."""
    if spec.base == "all" or elbow is None:
        return data
    return data.select_checkpoints(data.ckpt_loss >= elbow)


# --------------------------------------------------------------------------- running fits


@dataclass(frozen=True)
class _Job:
    """One fit to run (picklable: sent to worker processes)."""

    task: str
    key: tuple  # ("cutoff", max_flops) or ("ablation", name)
    data: TaskData
    config: FitConfig
    ground_truth: GroundTruth | None
    simulated: bool


Outcome = TaskPrediction | FitFailure


def _run_job(job: _Job) -> Outcome:
    """The prediction, or why there is none."""
    try:
        return predict_data(job.data, job.config, ground_truth=job.ground_truth, simulated=job.simulated)
    except FitError as err:
        return FitFailure(f"no fit: {err}", stop=True)
    except DiagnosticsError as err:  # method bayes: the MCMC gate refused this cutoff's answer
        return FitFailure(f"diagnostics failed: {err}", stop=False)
    except np.linalg.LinAlgError as err:  # a numerically singular fit: a failed cutoff, not a crash
        return FitFailure(f"fit failed numerically: {err}", stop=False)


def run_jobs(jobs: Sequence[_Job], workers: int, tick: Tick | None = None) -> list[Outcome]:
    """Run every job, in order of ``jobs``; ``workers`` > 1 uses processes, this one and
    ``workers - 1`` spawned (:func:`fitting.pool.run_parallel`), unless every job is a point fit
    (no resamples, no profile: the ablation rows), which takes less time than starting a process."""
    tick = tick or (lambda _label: None)
    point_fits = all(job.config.n_boot == 0 and not job.config.profile for job in jobs)
    if workers <= 1 or len(jobs) <= 1 or point_fits:
        out = []
        for job in jobs:
            out.append(_run_job(job))
            tick(f"{job.task} {job.key[0]}")
        return out
    # the jobs of one cutoff (every task's) go to one process: they share its checkpoints, so
    # the compute law of those checkpoints is fitted once there (compute.choose_law's memo)
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.key, []).append(i)
    order = list(groups.values())

    def done(g: int) -> None:
        for i in order[g]:
            tick(f"{jobs[i].task} {jobs[i].key[0]}")

    out: list[Outcome | None] = [None] * len(jobs)
    for members, results in zip(order, run_parallel(_run_group, [[jobs[i] for i in m] for m in order],
                                                     workers, done)):
        for i, result in zip(members, results):
            out[i] = result
    return out


def _run_group(jobs: list[_Job]) -> list[Outcome]:
    return [_run_job(job) for job in jobs]


# --------------------------------------------------------------------------- per task


@dataclass
class _TaskPlan:
    data: TaskData
    truth: GroundTruth
    cuts: list[CutoffResult]
    jobs: list[_Job]
    ablation_rows: list[tuple[str, str, int | None]]
    ablation_data: dict[str, TaskData]
    note: str = ""


def plan_task(data: TaskData, config: BacktestConfig, simulated: bool,
              cache: "BacktestCache | None" = None) -> _TaskPlan:
    """Ground truth (from ``cache`` when it has it) and the list of fits (cutoffs, ablations)
    for one task."""
    check_task(data, config.fit)  # configuration errors stop the run; FitErrors later end a task's cutoffs
    truth = ground_truth_of(data, config.fit) if cache is None else cache.ground_truth(data, config.fit)
    elbow = truth.elbow_loss
    cuts, jobs, note = [], [], ""
    if not data.has_finetune:
        note = "few-shot results only: nothing to backtest (the emergence law needs finetune results)"
    elif config.cutoffs:
        for f in cutoff_values(data, config.min_checkpoints, config.max_cutoffs):
            sub = data.select_max_flops(f)
            cuts.append(_blank_cutoff(sub, f, elbow))
            jobs.append(_Job(data.task, ("cutoff", f), sub, config.fit, truth, simulated))
        if not cuts:
            note = (f"no cutoff keeps --min-checkpoints {config.min_checkpoints} checkpoints "
                    f"(the task has {data.n_checkpoints}): nothing to backtest")
    rows, variants = _plan_ablations(data, elbow, config, note)
    fit0 = replace(config.fit, n_boot=0, profile=False)  # ablations: the point error only
    jobs += [_Job(data.task, ("ablation", name), d, fit0, truth, simulated) for name, d in variants.items()]
    return _TaskPlan(data, truth, cuts, jobs, rows, variants, note)


def _plan_ablations(data: TaskData, elbow: float | None, config: BacktestConfig, note: str):
    if config.ablations is None or note:
        return [], {}
    base = ablation_base(data, elbow, config.ablations)
    if base.n_checkpoints < config.min_checkpoints:
        return [], {}
    rows = ablation_variants(base, config.ablations)
    return rows, {name: apply_variant(base, kind, k) for name, kind, k in rows}


def assemble(plan: _TaskPlan, outputs: list[Outcome], config: BacktestConfig,
             simulated: bool) -> TaskBacktest:
    """Score the fits of one task and compute its multipliers (see module docstring)."""
    truth, elbow = plan.truth, plan.truth.elbow_loss
    cut_out, abl_out = outputs[: len(plan.cuts)], outputs[len(plan.cuts):]
    cutoffs = []
    for cut, out in zip(plan.cuts, cut_out):
        if isinstance(out, FitFailure) and out.stop:  # the data no longer allow a fit: the list ends here
            break
        cutoffs.append(_failed_cutoff(cut, out.message, elbow) if isinstance(out, FitFailure)
                       else score_cutoff(cut, out, elbow, config.tolerance))
    name, flops = post_emergence(plan.data, truth)
    ablations = [_score_ablation(row, plan.ablation_data[row[0]], out, elbow, config.tolerance)
                 for row, out in zip(plan.ablation_rows, abl_out)]
    note = plan.note or ("" if truth.emerged else f"never emerged: {truth.reason}")
    return TaskBacktest(plan.data.task, truth, config.tolerance, config.fit.method, cutoffs,
                        name, flops, ablations, simulated, note, config.fit.law_name)


def _take_profile(cut: CutoffResult, prof) -> None:
    """Copy a fitting.uncertainty.ProfileInterval (None when the method gives none)."""
    if prof is None or not (np.isfinite(prof.low) and np.isfinite(prof.high)):
        return
    cut.profile_low, cut.profile_high = float(prof.low), float(prof.high)
    cut.profile_open = [side for side, is_open in (("low", prof.open_low), ("high", prof.open_high)) if is_open]


def _failed_cutoff(cut: CutoffResult, message: str, truth: float | None) -> CutoffResult:
    cut.note, cut.success = message, None if truth is None else False
    return cut


def _score_ablation(row, data: TaskData, out: Outcome, truth: float | None, tolerance: float) -> AblationResult:
    name, kind, k = row
    res = AblationResult(name, kind, k, data.n_checkpoints, data.data_levels)
    if isinstance(out, FitFailure):
        res.note, res.success = out.message, None if truth is None else False
        return res
    res.converged, res.emergence_loss = bool(out.converged), out.emergence_loss
    res.pinned = getattr(out, "pinned", None)
    res.note = "" if res.converged else (out.note or out.message)
    if truth is not None and res.converged and res.emergence_loss is not None:
        res.error = res.emergence_loss - truth
        res.success = abs(res.error) <= tolerance
    elif truth is not None:
        res.success = False
    return res


# --------------------------------------------------------------------------- entry points


def backtest(folder: ResultsFolder, config: BacktestConfig = BacktestConfig(),
             tasks: Iterable[str] | None = None, progress: bool = False,
             cache: "BacktestCache | None" = None) -> list[TaskBacktest]:
    """Backtest every task (or ``tasks``) of a results folder; progress bar on stderr.

    ``cache`` (a :class:`fitting.backtest_cache.BacktestCache`): ground truths and fits found
    there are reused, the others run and are stored; with ``progress`` a line on stderr says how many were reused."""
    tasks = folder.tasks if tasks is None else list(tasks)
    datas = [TaskData.from_folder(folder, t, config.fit.metric) for t in tasks]  # validate names first
    simulated = is_simulated(folder)
    for d in datas:  # configuration errors before any work
        check_task(d, config.fit)
    plans = [plan_task(d, config, simulated, cache) for d in datas]
    jobs = [job for plan in plans for job in plan.jobs]
    outputs: list[Outcome | None] = [None] * len(jobs)
    if cache is not None:
        outputs = [cache.get(job) for job in jobs]
    todo = [i for i, out in enumerate(outputs) if out is None]
    with CountBar("backtest", len(todo), progress) as tick:
        computed = run_jobs([jobs[i] for i in todo], config.workers, tick)
    for i, out in zip(todo, computed):
        outputs[i] = out
        if cache is not None:
            cache.put(jobs[i], out)
    if cache is not None and progress:
        import sys

        reused = len(jobs) - len(todo)
        print(f"backtest cache: reused {reused} of {len(jobs)} fits, computed {len(todo)} ({cache.root})",
              file=sys.stderr)
    results, start = [], 0
    for plan in plans:
        r = assemble(plan, outputs[start:start + len(plan.jobs)], config, simulated)
        main = r.main_cutoff
        pred = main.prediction if main is not None else None
        r.cost = task_cost(folder, r.task, None if pred is None else pred.emergence_flops)
        results.append(r)
        start += len(plan.jobs)
    return results


def backtests_json(results: Sequence[TaskBacktest]) -> list[dict[str, Any]]:
    return [r.to_json() for r in results]


@dataclass(frozen=True)
class AblationTable:
    """Rows = ablation variants, columns = tasks; cells are AblationResult or None (not run)."""

    rows: list[str]
    tasks: list[str]
    cells: dict[tuple[str, str], AblationResult]
    tolerance: float

    def cell_text(self, row: str, task: str) -> str:
        """|error| in nats, with ✗ for a failure and "(pinned)" for a prediction on an edge
        (``CutoffResult.pinned``); 'fit failed', 'n/a', or the prediction when there is no ground
        truth."""
        res = self.cells.get((row, task))
        if res is None:
            return "n/a"
        if res.error is None and res.converged and res.emergence_loss is not None:
            return f"pred. {res.emergence_loss:.3f} (no truth)"
        if res.error is None:
            return "fit failed ✗" if not res.converged else "— (no truth)"
        return f"{abs(res.error):.3f}" + ("" if res.success else " ✗") + (" (pinned)" if res.pinned else "")


def ablation_table(results: Sequence[TaskBacktest]) -> AblationTable | None:
    """The paper's Table 2 from the ablation rows of every task (None when none were run)."""
    rows: list[str] = []
    cells = {}
    for r in results:
        for a in r.ablations:
            if a.name not in rows:
                rows.append(a.name)
            cells[(a.name, r.task)] = a
    if not cells:
        return None
    tol = results[0].tolerance
    return AblationTable(rows, [r.task for r in results], cells, tol)
