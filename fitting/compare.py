"""Law comparison: each law form's leave-one-checkpoint-out held-out log-likelihood and its
elbow extrapolation (leave one curve out)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from emergence.errors import FitError
from fitting import law as law_
from fitting.data import TaskData
from fitting.fit import EmergenceLawFit, pinned_edge
from fitting.ground_truth import _hinge_fit, curve_elbow, few_shot_shape, fit_ground_truth
from fitting.likelihood import LIKELIHOODS, Likelihood, binomial_loglik
from fitting.schema import ResultsFolder


@dataclass(frozen=True)
class LawComparison:
    """One law form's held-out log-likelihood (leave-one-checkpoint-out, summed over folds) and
    its elbow extrapolation (leave one curve out, :func:`elbow_extrapolation`)."""

    form: str
    heldout_loglik: float
    n_folds: int
    n_failed: int  # folds whose fit did not converge (scored anyway at their final parameters)
    delta: float = 0.0  # heldout_loglik minus the best form's (0 for the winner)
    # left-out curve (n_train; 0 = few-shot) -> predicted minus that curve's own elbow, nats;
    # None when the fit without it does not locate it (pinned: "no rise" or "search bound")
    elbow_errors: dict[int, float | None] = field(default_factory=dict)
    # few-shot-only data (:func:`compare_few_shot_shapes`): the elbow this shape, fitted to the
    # whole few-shot curve, puts where accuracy leaves chance; the onset rule's, for comparison
    few_shot_elbow: float | None = None
    onset_elbow: float | None = None

    @property
    def elbow_rmse(self) -> float | None:
        """Root mean square of the located finetuned curves' elbow errors (None when none is)."""
        errors = [e for level, e in self.elbow_errors.items() if level != 0 and e is not None]
        return float(np.sqrt(np.mean(np.square(errors)))) if errors else None

    @property
    def elbow_unlocated(self) -> list[int]:
        """Left-out curves whose elbow the fit to the others did not locate."""
        return [level for level, e in self.elbow_errors.items() if e is None]

    @property
    def few_shot_error(self) -> float | None:
        """The few-shot elbow predicted from the finetuned rows alone, minus the ground truth."""
        return self.elbow_errors.get(0)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "elbow_errors": {str(k): v for k, v in self.elbow_errors.items()},
                "elbow_rmse": self.elbow_rmse, "few_shot_error": self.few_shot_error,
                "elbow_unlocated": self.elbow_unlocated}


def elbow_extrapolation(data: TaskData, spec: law_.LawSpec, truths: dict[int, float | None],
                        likelihood: Likelihood = "binomial", n_starts: int = 12,
                        seed: int = 0) -> dict[int, float | None]:
    """Leave one curve out: refit without a curve's rows and predict its elbow from the others.

    Held-out likelihood is dominated by the plateau, which says nothing about where a curve
    leaves chance; this scores what the method extrapolates: the elbow at a data level the fit
    did not see. The few-shot curve (level 0) left out is the method's own question, the
    few-shot elbow predicted from finetuning alone. ``truths``: each curve's own elbow
    (:func:`curve_elbow`); curves without one, and folds whose fit fails, are skipped. A fold
    whose fit is pinned on an edge (:func:`pinned_edge`: "no rise", "search bound") gives None:
    the data left do not locate that elbow. Finetuning alone often cannot locate the few-shot
    one: under the log power law a small α makes E(D) a step at D₀, and C trades off with k.
    """
    errors = {}
    for level, truth in truths.items():
        if truth is None:
            continue
        rest = data.select_rows(~data.few_shot) if level == 0 else data.drop_levels([level])
        try:
            model = EmergenceLawFit(spec, likelihood, n_starts=n_starts, seed=seed).fit(rest)
        except FitError:  # too little left to fit (e.g. one data level)
            continue
        if not model.converged_:
            continue
        if pinned_edge(spec, rest, likelihood, model.theta_) in ("no rise", "search bound"):
            errors[level] = None
            continue
        p = spec.unpack(model.theta_)
        d = spec.d0 if level == 0 else level
        errors[level] = float(law_.elbow(d, p["k"], p["alpha"], p["C"], spec.elbow, spec.d0)) - truth
    return errors


def compare_laws(data: TaskData, forms: dict[str, law_.LawSpec] | None = None,
                 likelihood: Likelihood = "binomial", n_starts: int = 12, seed: int = 0) -> list[LawComparison]:
    """Each law form's held-out log-likelihood and elbow extrapolation, best likelihood first.

    Likelihood: each fold refits the law without one checkpoint's rows (checkpoints are the
    correlated unit) and scores those rows; the sum over folds is comparable across forms.
    Elbows: :func:`elbow_extrapolation` (finetune rows only: a task without them has none).
    """
    forms = law_.LAW_FORMS if forms is None else forms
    if not data.has_finetune:
        return compare_few_shot_shapes(data, forms, likelihood)
    levels = [0, *data.data_levels] if data.has_finetune else []
    truths = {level: curve_elbow(data, level, likelihood) for level in levels}
    out = []
    for name, spec in forms.items():
        total, failed = 0.0, 0
        for k in range(data.n_checkpoints):
            held = data.ckpt == k
            model = EmergenceLawFit(spec, likelihood, n_starts=n_starts, seed=seed).fit(data.select_rows(~held))
            failed += not model.converged_
            total += model.loglik(data.select_rows(held))
        elbows = elbow_extrapolation(data, spec, truths, likelihood, n_starts, seed)
        out.append(LawComparison(name, total, data.n_checkpoints, failed, elbow_errors=elbows))
    best = max(c.heldout_loglik for c in out)
    return sorted((replace(c, delta=c.heldout_loglik - best) for c in out), key=lambda c: -c.heldout_loglik)


def compare_few_shot_shapes(data: TaskData, forms: dict[str, law_.LawSpec],
                            likelihood: Likelihood = "binomial") -> list[LawComparison]:
    """Few-shot-only data: which shape of the few-shot curve in loss do the data support, and
    where does each put the elbow? Each form's few-shot curve (the law with k = 0:
    :func:`fitting.ground_truth.few_shot_shape`; forms with the same curve, e.g. ``power`` and
    ``no_delta`` beside ``log_power``, are compared once) is scored by leave-one-checkpoint-out
    held-out log-likelihood, and fitted to the whole curve for its elbow; ``onset_elbow`` is the
    ground truth's (the onset rule), the same for every row. Best likelihood first."""
    few = data.few_shot_only()
    if few.n_checkpoints < 4:
        raise FitError(f"task {data.task!r}: {few.n_checkpoints} checkpoints with few-shot rows; "
                       "comparing shapes leaves one out and needs >= 4")
    if likelihood == "binomial" and not few.proportion:
        raise FitError(f"task {data.task!r}: metric {few.metric!r} is not a proportion of items; "
                       "use --likelihood gaussian")
    onset = fit_ground_truth(data, likelihood).elbow_loss
    seen, out = set(), []
    for name, spec in forms.items():
        shape = few_shot_shape(spec, terms=True)
        if shape in seen:
            continue
        seen.add(shape)
        total = 0.0
        for k in np.unique(few.ckpt):
            held = few.ckpt == k
            train = few.select_rows(~held)
            _, theta = _hinge_fit(train, likelihood, spec, terms=True)
            total += _heldout_loglik(shape, theta, train, few.select_rows(held), likelihood)
        _, theta = _hinge_fit(few, likelihood, spec, terms=True)
        out.append(LawComparison(name, total, int(len(np.unique(few.ckpt))), 0,
                                 few_shot_elbow=float(theta[shape.param_names.index("C")]), onset_elbow=onset))
    best = max(c.heldout_loglik for c in out)
    return sorted((replace(c, delta=c.heldout_loglik - best) for c in out), key=lambda c: -c.heldout_loglik)


def _heldout_loglik(shape: law_.LawSpec, theta: np.ndarray, train: TaskData, held: TaskData, likelihood: str) -> float:
    p = law_.performance(shape, theta, held.loss, held.n_train, held.few_shot)
    if likelihood == "binomial":
        return float(binomial_loglik(p, held.successes.astype(float), held.n_items.astype(float)).sum())
    fitted = law_.performance(shape, theta, train.loss, train.n_train, train.few_shot)
    sigma2 = max(float(np.mean((fitted - train.value) ** 2)), 1e-12)  # the training fit's
    return float(np.sum(-0.5 * (np.log(2 * np.pi * sigma2) + (p - held.value) ** 2 / sigma2)))


def compare_laws_folder(folder: ResultsFolder, tasks: Sequence[str] | None = None,
                        forms: Sequence[str] | None = None, likelihood: Likelihood = "binomial",
                        ) -> dict[str, list[LawComparison]]:
    """``compare_laws`` for each task of a folder, with forms named from ``LAW_FORMS``."""
    names = list(law_.LAW_FORMS) if forms is None else list(forms)
    unknown = [f for f in names if f not in law_.LAW_FORMS]
    if unknown:
        raise FitError(f"unknown law form {unknown[0]!r}; choose from {', '.join(law_.LAW_FORMS)}")
    if likelihood not in LIKELIHOODS:
        raise FitError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    datas = [TaskData.from_folder(folder, t) for t in (tasks or folder.tasks)]
    return {d.task: compare_laws(d, {f: law_.LAW_FORMS[f] for f in names}, likelihood) for d in datas}
