"""The ``fitting.predict`` hook of ``method="bayes"`` (``METHOD_HOOKS``): one pooled fit, one
``TaskPrediction`` per task with posterior percentiles in place of bootstrap ones."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from emergence.errors import FitError
from fitting import law as law_
from fitting.bayes.config import BAYES_FORMS, TASK_VARS, BayesConfig, SamplerConfig
from fitting.bayes.data import BayesData
from fitting.bayes.diagnostics import enforce_gate
from fitting.bayes.estimator import HierarchicalEmergenceLaw
from fitting.schema import ResultsFolder
from fitting.uncertainty import PERCENTILES


def config_from(fit_config) -> BayesConfig:
    """The BayesConfig of a ``fitting.predict.FitConfig`` (its ``bayes`` field, law and seed)."""
    base = fit_config.bayes if fit_config.bayes is not None else BayesConfig(
        sampler=SamplerConfig(seed=fit_config.seed))
    if not isinstance(base, BayesConfig):
        raise FitError(f"FitConfig.bayes must be a fitting.bayes.BayesConfig, got {type(base).__name__}")
    if fit_config.likelihood != "binomial":
        raise FitError("the Bayesian fit uses the binomial likelihood only; drop --likelihood gaussian")
    spec = fit_config.spec
    if fit_config.law_name not in BAYES_FORMS and not all(t.bayes for t in spec.terms):
        raise FitError(f"law {fit_config.law_name!r} is not supported by the Bayesian fit "
                       f"(choose from {', '.join(BAYES_FORMS)})")
    priors = base.priors if base.law == spec else None
    return dataclasses.replace(base, law=spec, priors=priors)


def quiet_stdout(progress: bool):
    """Sampler progress bars go to stderr so that ``--json`` on stdout stays parseable."""
    import contextlib
    import sys

    return contextlib.redirect_stdout(sys.stderr) if progress else contextlib.nullcontext()


def fit_tasks(task_data: Sequence, config: BayesConfig, progress: bool = False) -> HierarchicalEmergenceLaw:
    """One pooled fit of several tasks' ``TaskData``; saves the posterior when configured."""
    cfg = dataclasses.replace(config, sampler=dataclasses.replace(config.sampler, progressbar=progress))
    with quiet_stdout(progress):
        fit = HierarchicalEmergenceLaw(cfg).fit(BayesData.from_tasks(task_data, config.law.d0))
    if config.save_posterior:
        fit.save(config.save_posterior)
    return fit


def _task_failures(fit: HierarchicalEmergenceLaw, task: str) -> list[str]:
    """Gate lines that concern ``task``: its own, the population's and the joint model's."""
    mine = (f"task {task}:", "task population:", "all tasks")
    return [f for f in fit.failures_ if f.startswith(mine)]


def _record(td, fit: HierarchicalEmergenceLaw, fit_config, ground_truth, simulated: bool):
    from fitting import predict

    record = predict.empty_record(td, fit_config, ground_truth, simulated)
    draws = fit.emergence_draws()[td.task]
    pct = np.percentile(draws, PERCENTILES)
    failures = _task_failures(fit, td.task)
    record.emergence_loss = float(np.median(draws))  # posterior median (no MLE in this method)
    record.emergence_loss_pct = {q: float(v) for q, v in zip(PERCENTILES, pct)}
    record.samples = draws
    record.converged = not failures
    record.message = "; ".join(failures) if failures else "MCMC diagnostics passed"
    post = fit.idata_.posterior
    record.params = {n: float(post[n].sel(task=td.task).median()) for n in TASK_VARS if n in post}
    record.note = f"posterior median and percentiles ({fit.config.sampler.chains} chains x {fit.config.sampler.draws} draws)"
    draws_by_name = {n: post[n].sel(task=td.task).values.ravel() for n in fit.config.law.param_names}
    if posterior_rise(fit.config.law, td, draws_by_name) < fit_config.gt_min_rise:
        record.pinned = "no rise"
        record.note += "; " + predict.PINNED_NOTES["no rise"]
    return predict.with_flops(record, td, fit_config)


def posterior_rise(spec: law_.LawSpec, data, draws: dict[str, np.ndarray], max_draws: int = 2000) -> float:
    """Posterior median of the largest rise above base the law puts on any row of ``data``
    (``draws``: one array of posterior draws per parameter of ``spec``). Below the ground
    truth's minimal rise the data locate no elbow: the prediction is marked "no rise", as the
    MLE's is (``fitting.fit.pinned_edge``; the MLE's edge marks have no posterior analogue)."""
    from fitting.fit import fitted_rise

    theta = np.stack([np.asarray(draws[n], float) for n in spec.param_names], axis=-1)  # (S, P)
    theta = theta[:: max(1, len(theta) // max_draws)]  # thinned: a median needs no more
    return float(np.median(fitted_rise(spec, data, theta)))


def predict_data(data, config, *, ground_truth=None, progress=None, simulated: bool = False):
    """The ``fitting.predict`` hook for one task (no pooling partner: the backtest's refits)."""
    return _predict([data], config, {data.task: ground_truth}, bool(progress), simulated)[0]


def predict_all(folder: ResultsFolder, config, tasks: Sequence[str] | None = None, progress: bool = False):
    """The ``fitting.predict`` hook: one hierarchical fit pooling every task that has finetune data."""
    from fitting.data import TaskData
    from fitting.predict import is_simulated

    names = list(tasks) if tasks else folder.tasks
    data = [TaskData.from_folder(folder, t, config.metric) for t in names]
    return _predict(data, config, {}, progress, is_simulated(folder))


def _predict(task_data: Sequence, fit_config, truths: dict, progress: bool, simulated: bool) -> list:
    from fitting import predict

    config = config_from(fit_config)
    truths = {td.task: truths.get(td.task) or fit_config.ground_truth(td) for td in task_data}
    pooled = [td for td in task_data if td.has_finetune]
    fit = fit_tasks(pooled, config, progress) if pooled else None
    if fit is not None:
        enforce_gate(fit.failures_, config.allow_bad_diagnostics)
    out = []
    for td in task_data:
        if td.has_finetune:
            out.append(_record(td, fit, fit_config, truths[td.task], simulated))
        else:  # the MLE path explains few-shot-only tasks (ground truth and FLOPs only)
            out.append(predict.predict_data(td, dataclasses.replace(fit_config, method="mle", n_boot=0),
                                            ground_truth=truths[td.task], simulated=simulated))
            out[-1].method = "bayes"
    return out
