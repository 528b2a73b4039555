"""Simulation-based calibration: fit datasets drawn from the model's own prior and check that the
true values' ranks among the posterior draws are uniform (benchmarks/sbc_bayes.py)."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from fitting.bayes.config import BayesConfig
from fitting.bayes.data import BayesData, with_counts
from fitting.bayes.estimator import HierarchicalEmergenceLaw
from fitting.bayes.sampling import prior_predictive


def prior_datasets(data: BayesData, config: BayesConfig, n: int, seed: int) -> list[tuple[dict, np.ndarray]]:
    """``n`` (true parameters, simulated counts) pairs drawn from the model's own prior."""
    prior = prior_predictive(data, dataclasses.replace(config, sampler=dataclasses.replace(config.sampler, seed=seed)), n)
    counts = prior.prior_predictive["correct"].values[0]  # (n, N)
    params = {name: prior.prior[name].values[0] for name in sbc_parameters(prior.prior)}
    return [({k: v[i] for k, v in params.items()}, counts[i]) for i in range(n)]


def sbc_parameters(dataset) -> list[str]:
    """Scalar and per-task quantities whose ranks SBC checks (not elbow/subset shifts)."""
    return [v for v in dataset.data_vars if v != "elbow" and not v.startswith(("z_", "subset"))
            and set(dataset[v].dims) <= {"chain", "draw", "task"}]


def sbc_ranks(idata, truth: dict[str, np.ndarray], tasks: Sequence[str], n_keep: int = 99) -> dict[str, int]:
    """Rank (0..n_keep) of each true value among ``n_keep`` thinned posterior draws."""
    post = idata.posterior.stack(s=("chain", "draw"))
    keep = np.linspace(0, post.sizes["s"] - 1, n_keep).astype(int)
    ranks = {}
    for name, true in truth.items():
        draws = post[name].values  # (s,) or (task, s)
        if draws.ndim == 1:
            ranks[name] = int((draws[keep] < true).sum())
        else:
            for t, task in enumerate(tasks):
                ranks[f"{name}[{task}]"] = int((draws[t, keep] < true[t]).sum())
    return ranks


def rank_uniformity(ranks: np.ndarray, n_keep: int = 99, bins: int = 5) -> tuple[float, float]:
    """p-values of a chi-square (``bins`` equal bins) and a KS test that ranks are uniform."""
    from scipy import stats

    ranks = np.asarray(ranks)
    counts = np.bincount(ranks * bins // (n_keep + 1), minlength=bins)
    chi2 = stats.chisquare(counts).pvalue
    u = (ranks + np.random.default_rng(0).uniform(size=len(ranks))) / (n_keep + 1)
    return float(chi2), float(stats.kstest(u, "uniform").pvalue)


def run_sbc(data: BayesData, config: BayesConfig, n_datasets: int, seed: int = 0,
            progress=None) -> list[dict[str, Any]]:
    """Fit each prior dataset; per dataset the ranks, 90% coverage of the emergence loss, gate.

    Every dataset has ``data``'s design: the model is built (and, for nutpie, compiled) once.
    """
    import time

    out = []
    for i, (truth, counts) in enumerate(prior_datasets(data, config, n_datasets, seed)):
        cfg = dataclasses.replace(config, sampler=dataclasses.replace(config.sampler, seed=seed + 1 + i))
        t0 = time.perf_counter()
        fit = HierarchicalEmergenceLaw(cfg, log_likelihood=False).fit(with_counts(data, counts))
        draws = fit.idata_.posterior["emergence_loss"].values.reshape(-1, len(data.tasks))
        lo, hi = np.percentile(draws, [5, 95], axis=0)
        true_e = truth["emergence_loss"]
        checks = sorted({f.split(": ", 1)[1].split(" of ")[0] if " of " in f else "divergences"
                         for f in fit.failures_})
        out.append(dict(ranks=sbc_ranks(fit.idata_, truth, data.tasks), covered=((lo <= true_e) & (true_e <= hi)).tolist(),
                        divergences=int(fit.idata_.sample_stats["diverging"].sum()), gate_ok=not fit.failures_,
                        failed_checks=checks, seconds=round(time.perf_counter() - t0, 2)))
        if progress is not None:
            progress(i + 1, n_datasets, out[-1])
    return out
