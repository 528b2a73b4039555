"""The command line's side of ``--method bayes``: options to a ``BayesConfig``, the PSIS-LOO table
of ``compare-laws`` and the paper's Table 3 layout of ``fit --side-by-side`` (``fitting.bayes``
holds the model)."""

from __future__ import annotations

import importlib
import json
import os
from typing import Any, Sequence

from emergence.errors import MissingExtraError
from fitting.bayes.compare import compare_laws
from fitting.bayes.config import BayesConfig, SamplerConfig
from fitting.bayes.data import bayes_data
from fitting.bayes.hook import quiet_stdout
from fitting.schema import ResultsFolder
from fitting.uncertainty import PERCENTILES


def config_from_cli(*, chains: int, draws: int, tune: int, sampler: str, seed: int, centered: bool = True,
                    subset_effect: bool = False, allow_bad_diagnostics: bool = False,
                    save_posterior=None) -> BayesConfig:
    """The BayesConfig of ``emergence fit --method bayes`` options (cores: min(chains, 2));
    ``sampler="auto"``: nutpie when installed, else PyMC's NUTS."""
    if sampler == "nutpie":
        try:
            importlib.import_module("nutpie")
        except ImportError:
            raise MissingExtraError("nutpie", "nutpie") from None
    samp = SamplerConfig(sampler=sampler, chains=chains, draws=draws, tune=tune,
                         cores=max(1, min(chains, os.cpu_count() or 1, 2)), seed=seed)
    return BayesConfig(sampler=samp, centered=centered, subset_effect=subset_effect,
                       allow_bad_diagnostics=allow_bad_diagnostics,
                       save_posterior=str(save_posterior) if save_posterior else None)


def compare_laws_command_bayes(folder: ResultsFolder, tasks, forms, *, draws: int, tune: int, sampler: str,
                               seed: int, as_json: bool) -> None:
    """``emergence compare-laws --method bayes``: PSIS-LOO of the pooled fit, one row per form."""
    import sys

    base = BayesConfig(sampler=SamplerConfig(sampler=sampler, draws=draws, tune=tune, seed=seed,
                                             progressbar=False))
    with quiet_stdout(True):
        rows = compare_laws(bayes_data(folder, tasks), forms or ("log_power", "power", "no_delta"), base)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        _print_loo(rows)


def _print_loo(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="PSIS-LOO by law form (pooled Bayesian fit; higher elpd is better)")
    for name in ("law", "elpd_loo", "se", "elpd_diff", "dse", "weight", "p_loo", "k>0.7", "gate"):
        table.add_column(name, justify="left" if name == "law" else "right")
    for r in rows:
        table.add_row(r["law"], f"{r['elpd_loo']:.1f}", f"{r['se']:.1f}", f"{r['elpd_diff']:.1f}",
                      f"{r['dse']:.1f}", f"{r['weight']:.2f}", f"{r['p_loo']:.1f}",
                      str(r["pareto_k_over_0.7"]), "ok" if r["diagnostics_ok"] else "[red]failed[/]")
    Console().print(table)


def table3_rows(bayes_preds: Sequence, mle_preds: Sequence) -> list[dict[str, Any]]:
    """The paper's Table 3 layout: per task, ground truth, MLE, posterior and bootstrap percentiles."""
    mle = {p.task: p for p in mle_preds}
    rows = []
    for b in bayes_preds:
        m = mle.get(b.task)
        row = {"task": b.task, "ground_truth_loss": b.ground_truth_loss,
               "mle": None if m is None else m.emergence_loss}
        row.update({f"mcmc_p{q:02d}": b.emergence_loss_pct.get(q) for q in PERCENTILES})
        row.update({f"bootstrap_p{q:02d}": None if m is None else m.emergence_loss_pct.get(q)
                    for q in PERCENTILES})
        row.update({f"mcmc_flops_multiple_p{q:02d}": b.flops_multiple_pct.get(q) for q in (5, 50, 95)})
        row["mcmc_converged"] = b.converged
        rows.append(row)
    return rows


def print_table3(rows: list[dict[str, Any]], simulated: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    f = lambda x, spec=".3f": "-" if x is None else format(x, spec)  # noqa: E731
    title = "Emergence loss (nats): MCMC posterior vs bootstrap percentiles (paper's Table 3 layout)"
    table = Table(title=title + (" — SIMULATED data" if simulated else ""))
    for name in ("task", "truth", "MLE", "MCMC p5/p50/p95", "bootstrap p5/p50/p95", "FLOPs x max p5/p50/p95", "gate"):
        table.add_column(name, justify="left" if name == "task" else "right", no_wrap=True)
    for r in rows:
        mc = " / ".join(f(r[f"mcmc_p{q:02d}"]) for q in (5, 50, 95))
        bs = " / ".join(f(r[f"bootstrap_p{q:02d}"]) for q in (5, 50, 95))
        fl = " / ".join(f(r[f"mcmc_flops_multiple_p{q:02d}"], ".2f") for q in (5, 50, 95))
        table.add_row(r["task"], f(r["ground_truth_loss"]), f(r["mle"]), mc, bs, fl,
                      "ok" if r["mcmc_converged"] else "[red]failed[/]")
    Console().print(table)
