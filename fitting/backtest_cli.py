"""The ``backtest``, ``ablate`` and ``report`` commands: parse options, delegate, print.

Progress goes to stderr; ``--json`` output alone goes to stdout.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

RESULTS_HELP = "results folder (checkpoints.parquet, results.parquet)"
Task = Annotated[Optional[list[str]], typer.Option("--task", "-t", help="task (repeatable; default all)")]
Law = Annotated[str, typer.Option(help="emergence law form: log_power (paper), power, no_delta, softplus, ceiling")]
D0 = Annotated[float, typer.Option("--d0", help="D0, the data level that stands for few-shot (the paper: 1)")]
NBoot = Annotated[int, typer.Option("--n-boot", help="bootstrap resamples per fit (0: no intervals)")]
Seed = Annotated[int, typer.Option(help="seed of the multi-start points and the bootstrap")]
Method = Annotated[str, typer.Option(help="mle (maximum likelihood + bootstrap) or bayes")]
Tolerance = Annotated[float, typer.Option(help="success when |prediction − ground truth| <= this (nats)")]
MinCkpt = Annotated[int, typer.Option("--min-checkpoints", help="fewest checkpoints a cutoff may keep")]
MaxCuts = Annotated[Optional[int], typer.Option("--max-cutoffs", min=2, help="at most this many cutoffs per task, "
                                                "evenly spread (default: every checkpoint; the work then grows "
                                                "with the square of the checkpoints, linearly with a cap)")]
Workers = Annotated[int, typer.Option(help="worker processes for the fits")]
Metric = Annotated[Optional[str], typer.Option(help="metric to fit (default accuracy, else exact_match, else the only one)")]
Likelihood = Annotated[str, typer.Option(help="binomial (item counts) or gaussian (least squares; needed for "
                                              "metrics that are not proportions, e.g. mcc)")]
DropSmall = Annotated[list[int], typer.Option("--drop-smallest", help="ablation: drop the k smallest data levels (repeatable)")]
DropLarge = Annotated[list[int], typer.Option("--drop-largest", help="ablation: drop the k largest data levels (repeatable)")]
LastK = Annotated[list[int], typer.Option("--last-k", help="ablation: keep the k checkpoints nearest emergence (repeatable)")]
Base = Annotated[str, typer.Option(help="ablation base: pre_emergence checkpoints (default) or all")]
Chains = Annotated[int, typer.Option(help="bayes: MCMC chains per fit")]
Draws = Annotated[int, typer.Option(help="bayes: posterior draws per chain")]
Tune = Annotated[int, typer.Option(help="bayes: tuning steps per chain")]
Profile = Annotated[bool, typer.Option(help="also the 90% profile-likelihood interval of each fit (mle)")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="recompute every fit: neither read nor write the "
                                       "backtest cache ($EMERGENCE_CACHE_DIR, else ~/.cache/emergence)")]


class StageTimer:
    """One line per stage on stderr: "fit: 3 tasks in 4.1 s (CPU 4.0 s)"; CPU counts worker processes.

    Set ``what`` inside the block to say what the stage did."""

    def __init__(self, stage: str):
        self.stage, self.what = stage, ""

    @staticmethod
    def _cpu() -> float:
        return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                     resource.getrusage(resource.RUSAGE_CHILDREN)))

    def __enter__(self) -> "StageTimer":
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            wall, cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu
            print(f"{self.stage}: {self.what}{' ' if self.what else ''}in {wall:.1f} s (CPU {cpu:.1f} s)",
                  file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command("backtest")(backtest_command)
    app.command("ablate")(ablate_command)
    app.command("report")(report_command)


def _config(*, law="log_power", d0=1.0, n_boot=1000, seed=0, method="mle", metric=None, tolerance=0.1,
            min_checkpoints=3, workers=1, ablations=None, cutoffs=True, chains=4, draws=1000, tune=1000,
            profile=True, likelihood="binomial", max_cutoffs=None):
    from fitting.backtest import BacktestConfig
    from fitting.predict import FitConfig

    bayes = None
    if method == "bayes":
        from fitting.cli_bayes import config_from_cli

        bayes = config_from_cli(chains=chains, draws=draws, tune=tune, sampler="pymc", seed=seed)
    fit = FitConfig(law=law, d0=d0, n_boot=n_boot, seed=seed, method=method, metric=metric, bayes=bayes,
                    profile=profile, likelihood=likelihood)
    return BacktestConfig(fit=fit, tolerance=tolerance, min_checkpoints=min_checkpoints,
                          workers=workers, ablations=ablations, cutoffs=cutoffs, max_cutoffs=max_cutoffs)


def _cache(no_cache: bool):
    """The backtest cache (fitting.backtest_cache), or None with --no-cache."""
    if no_cache:
        return None
    from fitting.backtest_cache import BacktestCache

    return BacktestCache()


def _ablations(drop_smallest, drop_largest, last_k, base):
    from fitting.backtest import AblationSpec

    return AblationSpec(drop_smallest=tuple(drop_smallest), drop_largest=tuple(drop_largest),
                        last_k=tuple(last_k), base=base)


def backtest_command(
    results_dir: Annotated[Path, typer.Argument(help=RESULTS_HELP)],
    task: Task = None, law: Law = "log_power", d0: D0 = 1.0, n_boot: NBoot = 1000, seed: Seed = 0,
    method: Method = "mle", metric: Metric = None, tolerance: Tolerance = 0.1,
    min_checkpoints: MinCkpt = 3, max_cutoffs: MaxCuts = None, workers: Workers = 1,
    ablations: Annotated[bool, typer.Option("--ablations", help="also run the Table-2 ablations")] = False,
    likelihood: Likelihood = "binomial",
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list on stdout")] = False,
    profile: Profile = True, chains: Chains = 4, draws: Draws = 1000, tune: Tune = 1000,
    no_cache: NoCache = False,
) -> None:
    """Hold out the most expensive checkpoints, refit, predict: how far ahead (in FLOPs) does it work?"""
    from fitting.backtest import AblationSpec, backtest, backtests_json
    from fitting.schema import load_results

    config = _config(law=law, d0=d0, n_boot=n_boot, seed=seed, method=method, metric=metric, tolerance=tolerance,
                     min_checkpoints=min_checkpoints, max_cutoffs=max_cutoffs, workers=workers,
                     ablations=AblationSpec() if ablations else None, chains=chains, draws=draws, tune=tune,
                     profile=profile, likelihood=likelihood)
    folder = load_results(results_dir)
    from fitting.pool import tune_allocator

    tune_allocator()  # fewer page faults in the fits (fitting.pool.tune_allocator)
    with StageTimer("backtest") as timer:
        results = backtest(folder, config, tasks=task or None, progress=True, cache=_cache(no_cache))
        timer.what = f"{len(results)} task{'s' * (len(results) != 1)}"
    if as_json:
        typer.echo(json.dumps(backtests_json(results), indent=2))
        return
    _print_backtests(results, folder.metadata.get("simulated", False))
    if ablations:
        _print_ablations(results)


def ablate_command(
    results_dir: Annotated[Path, typer.Argument(help=RESULTS_HELP)],
    task: Task = None, law: Law = "log_power", d0: D0 = 1.0, seed: Seed = 0, method: Method = "mle",
    metric: Metric = None, tolerance: Tolerance = 0.1, min_checkpoints: MinCkpt = 3, workers: Workers = 1,
    drop_smallest: DropSmall = [1], drop_largest: DropLarge = [1], last_k: LastK = [6, 4],
    base: Base = "pre_emergence", likelihood: Likelihood = "binomial",
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list on stdout")] = False,
) -> None:
    """The paper's Table 2: MLE error (nats) when data levels, subsets or checkpoints are removed."""
    from fitting.backtest import backtest
    from fitting.schema import load_results

    config = _config(law=law, d0=d0, n_boot=0, seed=seed, method=method, metric=metric, tolerance=tolerance,
                     min_checkpoints=min_checkpoints, workers=workers, cutoffs=False, likelihood=likelihood,
                     ablations=_ablations(drop_smallest, drop_largest, last_k, base))
    results = backtest(load_results(results_dir), config, tasks=task or None, progress=True)
    if as_json:
        typer.echo(json.dumps([dict(task=r.task, ground_truth_loss=r.ground_truth_loss,
                                    ablations=[a.to_json() for a in r.ablations]) for r in results], indent=2))
    else:
        _print_ablations(results)


def report_command(
    results_dir: Annotated[Path, typer.Argument(help=RESULTS_HELP)],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for index.html, report.md and the PNGs")],
    task: Task = None, law: Law = "log_power", d0: D0 = 1.0, n_boot: NBoot = 1000, seed: Seed = 0,
    method: Method = "mle", metric: Metric = None, tolerance: Tolerance = 0.1,
    min_checkpoints: MinCkpt = 3, max_cutoffs: MaxCuts = None, workers: Workers = 1,
    ablations: Annotated[bool, typer.Option(help="include the Table-2 ablations")] = True,
    likelihood: Likelihood = "binomial", profile: Profile = True, chains: Chains = 4, draws: Draws = 1000, tune: Tune = 1000,
    no_cache: NoCache = False,
) -> None:
    """Write an HTML page and a Markdown file with the fits, the backtest and the ablations."""
    from fitting.backtest import AblationSpec
    from fitting.report import write_report

    config = _config(law=law, d0=d0, n_boot=n_boot, seed=seed, method=method, metric=metric, tolerance=tolerance,
                     min_checkpoints=min_checkpoints, max_cutoffs=max_cutoffs, workers=workers,
                     ablations=AblationSpec() if ablations else None, chains=chains, draws=draws, tune=tune,
                     profile=profile, likelihood=likelihood)
    from fitting.pool import tune_allocator

    tune_allocator()  # fewer page faults in the fits (fitting.pool.tune_allocator)
    with StageTimer("report") as timer:
        paths = write_report(results_dir, out, config, tasks=task or None, progress=True,
                             cache=_cache(no_cache))
        timer.what = f"{len(paths.figures)} figures"
    typer.echo(f"wrote {paths.html} and {paths.markdown} ({len(paths.figures)} figures)")


# --------------------------------------------------------------------------- printing


def fmt(x, spec: str = ".3f") -> str:
    """A number for a table cell ("-" for None)."""
    return "-" if x is None else format(x, spec)


def _mark(flag) -> str:
    return "-" if flag is None else ("yes" if flag else "[red]no[/]")


def _console():
    """stdout console; when piped (no terminal to measure) wide enough for the cutoff tables."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=140)


def _print_backtests(results, simulated: bool) -> None:
    from rich.table import Table

    console = _console()
    summary = Table(title="Backtest: how far ahead the prediction works" + (" — SIMULATED data" if simulated else ""))
    for name in ("task", "truth (nats)", "first post-emergence", "FLOP x", "FLOP x (strict)",
                 "FLOP x (unpinned)", "coverage", "coverage (profile)"):
        summary.add_column(name, justify="left" if name in ("task", "first post-emergence") else "right")
    for r in results:
        (cov, n), (pcov, pn) = r.coverage, r.coverage_profile
        summary.add_row(r.task, r.truth_label,
                        r.post_emergence_checkpoint or "-", fmt(r.flop_multiplier, ".2f"),
                        fmt(r.flop_multiplier_strict, ".2f"), fmt(r.flop_multiplier_unpinned, ".2f"),
                        f"{cov}/{n}" if n else "-",
                        f"{pcov}/{pn}" if pn else "-")
    console.print(summary)
    for r in results:
        if r.cutoffs:
            console.print(_cutoff_table(r))
        if r.note:
            console.print(f"[dim]{r.task}: {r.note}[/]", highlight=False)
    for r in results:
        if r.cost is not None:
            console.print(f"[dim]{r.task}: {r.cost.text()}[/]", highlight=False)
    console.print(f"[dim]success: |MLE − truth| <= {results[0].tolerance if results else 0.1:g} nats; "
                  "FLOP x = FLOPs(first post-emergence checkpoint) / FLOPs(most capable checkpoint of the "
                  "earliest success); strict: every larger cutoff also succeeds; unpinned: only successes whose "
                  "prediction is not pinned (on the fit's lowest checkpoint loss or the search edge, or from a fit "
                  "in which nothing rises: it cannot be told apart from that bound); coverage: cutoffs whose 5–95% "
                  "bootstrap (profile: 90% profile-likelihood) interval holds the truth; *: the cutoff already "
                  "keeps a post-emergence checkpoint[/]")


def _cutoff_table(r):
    from rich.table import Table

    table = Table(title=f"{r.task}: cutoffs", title_justify="left")
    for name in ("max FLOPs", "ckpts", "most capable", "MLE", "p5", "p95", "error", "success", "covered", "pinned"):
        table.add_column(name, justify="left" if name in ("most capable", "pinned") else "right", no_wrap=True)
    for c in r.cutoffs:
        table.add_row(f"{c.max_flops:.2e}", str(c.n_checkpoints), c.most_capable + ("" if c.pre_emergence is not False else " *"),
                      fmt(c.emergence_loss), fmt(c.p05), fmt(c.p95), fmt(c.error, "+.3f"),
                      _mark(c.success), _mark(c.covered), c.pinned or "")
    return table


def _print_ablations(results) -> None:
    from rich.table import Table

    from fitting.backtest import ablation_table

    tab = ablation_table(results)
    console = _console()
    if tab is None:
        console.print("no ablation could be run (no finetune results or too few pre-emergence checkpoints)")
        return
    table = Table(title=f"Ablations: |MLE error| in nats (✗: > {tab.tolerance:g} or fit failed)")
    table.add_column("variant")
    for t in tab.tasks:
        table.add_column(t, justify="right")
    for row in tab.rows:
        table.add_row(row, *(tab.cell_text(row, t) for t in tab.tasks))
    console.print(table)
    base = {t: tab.cells.get((tab.rows[0], t)) for t in tab.tasks}
    console.print("[dim]base: the pre-emergence checkpoints (all when a task never emerged): "
                  + ", ".join(f"{t} {b.n_checkpoints}" for t, b in base.items() if b is not None) + "[/]")
