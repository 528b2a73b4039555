"""Fitting commands of the ``emergence`` CLI (fit, backtest, report, simulate, import)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from emergence.errors import FitError
from fitting.backtest_cli import StageTimer, fmt as _fmt


def register(app: typer.Typer) -> None:
    """Add the fitting commands to the top-level app."""
    app.command("fit")(fit_command)
    app.command("compare-laws")(compare_laws_command)
    app.command("simulate")(simulate_command)
    app.command("import")(import_command)
    from fitting import backtest_cli  # backtest, ablate, report

    backtest_cli.register(app)


# --------------------------------------------------------------------------- fit, compare-laws, simulate

LAW_HELP = "emergence law form: log_power (paper), power, no_delta, softplus, ceiling"
D0_HELP = ("D0, the data level that stands for few-shot: the prediction is the elbow E(D0) "
           "(the paper: 1; it found the choice barely matters below about 10x the shots)")


FIX_HELP = ("hold a law parameter at a value, NAME=VALUE (repeatable), e.g. --fix k=0.05 --fix alpha=1: "
            "the shape of E(D) from elsewhere when one data level cannot identify it")


def parse_fixed(items: list[str] | None) -> tuple[tuple[str, float], ...]:
    """``["k=0.05", "alpha=1"]`` -> ``(("k", 0.05), ("alpha", 1.0))``; a malformed item is a FitError."""
    out = []
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out.append((name.strip(), float(value)))
        except ValueError:
            raise FitError(f"--fix {item!r}: expected NAME=NUMBER, e.g. --fix alpha=1.0") from None
    return tuple(out)


def fit_command(
    results_dir: Annotated[Path, typer.Argument(help="results folder (checkpoints.parquet, results.parquet)")],
    task: Annotated[Optional[list[str]], typer.Option("--task", "-t", help="task to fit (repeatable; default all)")] = None,
    law: Annotated[str, typer.Option(help=LAW_HELP)] = "log_power",
    d0: Annotated[float, typer.Option("--d0", help=D0_HELP)] = 1.0,
    fix: Annotated[Optional[list[str]], typer.Option("--fix", help=FIX_HELP)] = None,
    family: Annotated[Optional[str], typer.Option("--family", help="fit one pretraining run (model family) only")] = None,
    likelihood: Annotated[str, typer.Option(help="binomial (item counts) or gaussian (least squares)")] = "binomial",
    n_boot: Annotated[int, typer.Option("--n-boot", help="bootstrap resamples per task (0: none)")] = 1000,
    seed: Annotated[int, typer.Option(help="seed of the multi-start points and the bootstrap")] = 0,
    method: Annotated[str, typer.Option(help="mle (maximum likelihood + bootstrap) or bayes")] = "mle",
    items: Annotated[str, typer.Option(help="bootstrap item redraw: fitted (default), observed or none")] = "fitted",
    metric: Annotated[Optional[str], typer.Option(help="metric to fit (default accuracy, else exact_match, else the only one)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list on stdout")] = False,
    workers: Annotated[int, typer.Option(help="processes: tasks are fitted in parallel (the results are the same)")] = 1,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="recompute the ground truths: neither read nor write "
                                           "the cache ($EMERGENCE_CACHE_DIR, else ~/.cache/emergence)")] = False,
    chains: Annotated[int, typer.Option(help="bayes: MCMC chains")] = 4,
    draws: Annotated[int, typer.Option(help="bayes: posterior draws per chain")] = 1000,
    tune: Annotated[int, typer.Option(help="bayes: tuning steps per chain")] = 2000,
    sampler: Annotated[str, typer.Option(help="bayes: auto (nutpie when installed, else pymc), pymc (NUTS) or nutpie")] = "auto",
    non_centered: Annotated[bool, typer.Option("--non-centered", help="bayes: non-centred hierarchy")] = False,
    subset_effect: Annotated[bool, typer.Option("--subset-effect", help="bayes: elbow jitter per finetuning subset")] = False,
    allow_bad_diagnostics: Annotated[bool, typer.Option("--allow-bad-diagnostics", help="bayes: warn instead of failing the r_hat/ESS/divergence gate")] = False,
    save_posterior: Annotated[Optional[Path], typer.Option("--save-posterior", help="bayes: write the posterior (ArviZ netCDF) here")] = None,
    side_by_side: Annotated[bool, typer.Option("--side-by-side", help="bayes: also run the bootstrap and show both (Table 3 layout)")] = False,
) -> None:
    """Predict, per task, the pretraining loss (and FLOPs) at which few-shot performance leaves chance."""
    from fitting.backtest_cache import BacktestCache
    from fitting.predict import FitConfig, predict_all
    from fitting.schema import load_results

    if workers < 1:
        raise FitError(f"--workers must be >= 1, got {workers}")
    bayes_config = None
    if method == "bayes":
        from fitting.cli_bayes import config_from_cli

        bayes_config = config_from_cli(chains=chains, draws=draws, tune=tune, sampler=sampler, seed=seed,
                                       centered=not non_centered, subset_effect=subset_effect,
                                       allow_bad_diagnostics=allow_bad_diagnostics, save_posterior=save_posterior)
    config = FitConfig(law=law, d0=d0, likelihood=likelihood, n_boot=n_boot, seed=seed, method=method,
                       items=items, metric=metric, bayes=bayes_config, fixed=parse_fixed(fix))
    folder = load_results(results_dir)
    if family is not None:
        folder = folder.select_family(family)
    from fitting.pool import tune_allocator

    tune_allocator()  # fewer page faults in the fits (fitting.pool.tune_allocator)
    with StageTimer("fit") as timer:
        predictions = predict_all(folder, config, tasks=task or None, progress=True, workers=workers,
                                  cache=None if no_cache else BacktestCache())
        timer.what = f"{len(predictions)} task{'s' * (len(predictions) != 1)}"
    if method == "bayes" and side_by_side:
        from dataclasses import replace

        from fitting.cli_bayes import print_table3, table3_rows

        rows = table3_rows(predictions, predict_all(folder, replace(config, method="mle"), tasks=task or None, progress=True))
        return typer.echo(json.dumps(rows, indent=2)) if as_json else print_table3(rows, folder.metadata.get("simulated", False))
    if as_json:
        typer.echo(json.dumps([p.to_json() for p in predictions], indent=2))
    else:
        _print_predictions(predictions, folder.metadata.get("simulated", False))


def compare_laws_command(
    results_dir: Annotated[Path, typer.Argument(help="results folder")],
    task: Annotated[Optional[list[str]], typer.Option("--task", "-t", help="task (repeatable; default all)")] = None,
    form: Annotated[Optional[list[str]], typer.Option("--form", help="law form to compare (repeatable; default all)")] = None,
    likelihood: Annotated[str, typer.Option(help="binomial or gaussian")] = "binomial",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON on stdout")] = False,
    method: Annotated[str, typer.Option(help="mle (held-out log-likelihood) or bayes (PSIS-LOO of the pooled posterior)")] = "mle",
    draws: Annotated[int, typer.Option(help="bayes: posterior draws per chain")] = 1000,
    tune: Annotated[int, typer.Option(help="bayes: tuning steps per chain")] = 2000,
    sampler: Annotated[str, typer.Option(help="bayes: auto (nutpie when installed, else pymc), pymc (NUTS) or nutpie")] = "auto",
    seed: Annotated[int, typer.Option(help="bayes: sampler seed")] = 0,
) -> None:
    """Which law form does the data support? Leave-one-checkpoint-out held-out log-likelihood."""
    from fitting.compare import compare_laws_folder
    from fitting.schema import load_results

    if method == "bayes":
        from fitting.cli_bayes import compare_laws_command_bayes

        return compare_laws_command_bayes(load_results(results_dir), task or None, form or None,
                                          draws=draws, tune=tune, sampler=sampler, seed=seed, as_json=as_json)
    table = compare_laws_folder(load_results(results_dir), tasks=task or None, forms=form or None,
                                likelihood=likelihood)
    if as_json:
        typer.echo(json.dumps({t: [c.to_json() for c in cs] for t, cs in table.items()}, indent=2))
    else:
        _print_comparison(table)


def simulate_command(
    out_dir: Annotated[Path, typer.Argument(help="folder to write the simulated results into")],
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    n_items: Annotated[int, typer.Option("--n-items", help="evaluation items per result row")] = 1000,
    subset_sd: Annotated[float, typer.Option("--subset-sd", help="elbow jitter between finetuning subsets (nats)")] = 0.01,
    levels: Annotated[Optional[list[int]], typer.Option("--level", help="finetuning data level (repeatable)")] = None,
    subsets: Annotated[int, typer.Option(help="random subsets per data level")] = 2,
    overwrite: Annotated[bool, typer.Option(help="replace an existing results folder")] = False,
) -> None:
    """Write a SIMULATED results folder drawn from a known emergence law (truth in its metadata)."""
    from dataclasses import replace

    from emergence.errors import EmergenceError
    from emergence.paths import check_out_dir, refuse_to_replace
    from fitting.simulate import Design, simulate

    if n_items <= 0 or subsets <= 0 or subset_sd < 0:
        raise EmergenceError("--n-items and --subsets must be positive and --subset-sd >= 0")
    if seed < 0:
        raise EmergenceError(f"--seed must be >= 0, got {seed}")
    if levels and min(levels) < 1:
        raise EmergenceError(f"--level must be >= 1 (finetuning examples), got {min(levels)}")
    check_out_dir(out_dir, option="OUT_DIR")
    if not overwrite:
        refuse_to_replace(out_dir)
    design = replace(Design(), n_items=n_items, subset_sd=subset_sd,
                     subset_seeds=tuple(range(1, subsets + 1)),
                     **({"data_levels": tuple(levels)} if levels else {}))
    folder = simulate(design, seed=seed, out=out_dir)
    truth = ", ".join(f"{t} {v['emergence_loss']:.3f}" for t, v in folder.metadata["truth"].items())
    typer.echo(f"wrote SIMULATED results to {out_dir}: {design.n_checkpoints} checkpoints, "
               f"{len(folder.results)} result rows (true emergence losses: {truth})")


def import_command(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help="lm-eval, pythia, obsscaling or gadre")],
    path: Annotated[Path, typer.Argument(metavar="PATH", help="the source file or folder")],
    out: Annotated[Path, typer.Option("--out", "-o", help="results folder to write")],
    checkpoints: Annotated[Optional[Path], typer.Option(help="CSV/TOML: checkpoint,family,params,tokens,pretrain_loss[,flops]")] = None,
    tasks: Annotated[Optional[Path], typer.Option(help="CSV/TOML: task,n_items,chance (overrides built-in facts)")] = None,
    finetunes: Annotated[Optional[Path], typer.Option(help="lm-eval: CSV/TOML model,n_train[,subset_seed,checkpoint,task]: "
                                                           "these models' results are finetune rows")] = None,
    loss_proxy: Annotated[Optional[str], typer.Option(help="opt-in loss proxy when the source has none: chinchilla, lambada (pythia)")] = None,
    loss_column: Annotated[Optional[str], typer.Option(help="gadre: validation loss to use (default c4_val)")] = None,
    num_fewshot: Annotated[Optional[int], typer.Option(help="pythia: shot count to import (default 5)")] = None,
    metric: Annotated[Optional[str], typer.Option(help="source metric to import (default acc, else exact_match)")] = None,
    task: Annotated[Optional[list[str]], typer.Option("--task", "-t", help="import only this task (repeatable)")] = None,
    keep_subtasks: Annotated[bool, typer.Option(help="pythia: keep the 57 MMLU subjects as tasks")] = False,
    family: Annotated[Optional[str], typer.Option(help="family for checkpoints the source gives none")] = None,
    params: Annotated[Optional[int], typer.Option(help="parameters (single-checkpoint imports)")] = None,
    tokens: Annotated[Optional[int], typer.Option(help="pretraining tokens (single-checkpoint imports)")] = None,
    pretrain_loss: Annotated[Optional[float], typer.Option(help="pretraining loss, nats (single-checkpoint imports)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing results folder")] = False,
) -> None:
    """Import public results (lm-eval, Pythia, ObsScaling, Gadre et al.) as a few-shot results folder."""
    from fitting.importers import ImportOptions, import_results

    options = ImportOptions(checkpoints=checkpoints, tasks=tasks, finetunes=finetunes, loss_proxy=loss_proxy,
                            loss_column=loss_column,
                            num_fewshot=num_fewshot, metric=metric, only_tasks=tuple(task or ()),
                            keep_subtasks=keep_subtasks, family=family, params=params, tokens=tokens,
                            pretrain_loss=pretrain_loss, overwrite=overwrite)
    folder = import_results(fmt, path, out, options)
    finetuned = int((folder.results["setting"] == "finetune").sum())
    kinds = f" ({folder.results.height - finetuned} few-shot, {finetuned} finetune)" if finetuned else " few-shot"
    typer.echo(f"wrote {out}: {folder.checkpoints.height} checkpoints, {folder.results.height}{kinds} results, "
               f"{len(folder.tasks)} tasks" + (f", {folder.items.height} items" if folder.items is not None else ""))
    typer.echo(f"pretrain_loss: {', '.join(f'{n} from {s}' for s, n in folder.metadata['pretrain_loss_sources'].items())}")
    if not finetuned:
        typer.echo("few-shot results only: `emergence fit` gives the ground-truth elbow; predicting emergence "
                   "before it happens needs finetune results (see docs/importers.md)")


def _fmt_profile(prof) -> str:
    if prof is None:
        return "-"
    return f"{'<' if prof.open_low else ''}{prof.low:.2f}-{prof.high:.2f}{'<' if prof.open_high else ''}"


def _truth_cell(gt) -> str:
    if gt is None:
        return "-"
    if gt.elbow_loss is None:
        return "not located" if gt.emerged else "never"
    return gt.interval_text


def _print_family_elbows(console, predictions) -> None:
    """Per task, each pretraining run's own few-shot elbow beside the pooled one, and the spread."""
    from rich.table import Table

    rows = [p for p in predictions if p.family_elbows]
    if not rows:
        return
    families = sorted({f for p in rows for f in p.family_elbows})
    table = Table(title="Few-shot elbow per pretraining run (does emergence happen at one loss?)")
    for name in ("task", "pooled", *families, "spread"):
        table.add_column(name, justify="left" if name == "task" else "right", no_wrap=True)
    for p in rows:
        table.add_row(p.task, _fmt(p.ground_truth_loss), *(_fmt(p.family_elbows.get(f)) for f in families),
                      _fmt(p.family_spread))
    console.print(table)
    console.print("[dim]spread: largest minus smallest located elbow; the paper's tolerance is 0.1 nats. "
                  "`--family NAME` fits one run alone.[/]")


def _print_predictions(predictions, simulated: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    title = "Predicted few-shot emergence (pretraining loss, nats)"
    table = Table(title=title + (" — SIMULATED data" if simulated else ""))
    for name in ("task", "MLE", "p5", "p95", "LR 90%", "truth (5–95%)", "FLOPs", "x max", "conv."):
        table.add_column(name, justify="left" if name == "task" else "right", no_wrap=True)
    for p in predictions:
        pct = p.emergence_loss_pct
        flops = _fmt(p.emergence_flops, ".1e") + ("*" if p.flops_extrapolated else "")
        table.add_row(p.task, _fmt(p.emergence_loss), _fmt(pct.get(5)), _fmt(pct.get(95)),
                      _fmt_profile(p.profile), _truth_cell(p.ground_truth), flops, _fmt(p.flops_multiple, ".3g"),
                      "yes" if p.converged else "[red]no[/]")
    console = Console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = Console(width=120)
    console.print(table)
    console.print("[dim]p5/p95: bootstrap percentiles; LR 90%: profile-likelihood interval (< : open, "
                  "the data do not bound that side); truth: few-shot elbow where accuracy leaves chance, fitted to "
                  "all checkpoints, with its bootstrap interval over checkpoints and items; "
                  "x max: emergence FLOPs / largest checkpoint's; * extrapolated beyond the data[/]")
    _print_family_elbows(console, predictions)
    for p in predictions:
        if p.cost is not None:
            console.print(f"[dim]{p.task}: {p.cost.text()}[/]", highlight=False)
    by_note: dict[str, list[str]] = {}
    for p in predictions:
        if p.note:
            by_note.setdefault(p.note, []).append(p.task)
    for note, tasks in by_note.items():  # one line per distinct note
        console.print(f"[dim]{', '.join(tasks)}: {note}[/]", highlight=False)


def _print_few_shot_shapes(table) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title="Few-shot-only data: the shape of the few-shot curve (held-out log-likelihood, leave one "
                      "checkpoint out; higher is better) and the elbow each shape puts where accuracy leaves chance")
    for name in ("task", "shape (law form)", "held-out log-lik", "vs best", "its elbow", "ground truth (onset)"):
        out.add_column(name, justify="left" if name in ("task", "shape (law form)") else "right")
    for task, rows in table.items():
        for i, c in enumerate(rows):
            out.add_row(task if i == 0 else "", c.form + (" (best)" if i == 0 else ""), f"{c.heldout_loglik:.1f}",
                        f"{c.delta:.1f}", _fmt(c.few_shot_elbow), _fmt(c.onset_elbow))
    Console().print(out)
    Console().print("[dim]forms with the same few-shot curve (power, no_delta beside log_power) appear once; "
                    "a shape whose elbow is far from the onset's reaches back to chance before accuracy left it.[/]")


def _print_comparison(table) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title="Law forms: held-out log-likelihood (leave one checkpoint out; higher is better) and "
                      "elbow extrapolation (leave one curve out; nats, closer to 0 is better)")
    for name in ("task", "law", "held-out log-lik", "vs best", "failed folds", "elbow RMSE",
                 "few-shot elbow error"):
        out.add_column(name, justify="left" if name in ("task", "law") else "right")

    def nats(value, fmt):
        return "–" if value is None else format(value, fmt)

    for task, rows in table.items():
        for i, c in enumerate(rows):
            unlocated = [level for level in c.elbow_unlocated if level != 0]
            out.add_row(task if i == 0 else "", c.form + (" (best)" if i == 0 else ""),
                        f"{c.heldout_loglik:.1f}", f"{c.delta:.1f}", str(c.n_failed),
                        nats(c.elbow_rmse, ".3f") + (f" ({len(unlocated)} unlocated)" if unlocated else ""),
                        "unlocated" if 0 in c.elbow_unlocated else nats(c.few_shot_error, "+.3f"))
    few = {t: rows for t, rows in table.items() if rows and rows[0].few_shot_elbow is not None}
    if few:
        _print_few_shot_shapes(few)
    if len(few) == len(table):
        return
    Console().print(out)
    Console().print("[dim]elbow RMSE: each finetuned curve left out in turn, its elbow predicted by the law fitted "
                    "to the rest, against the curve's own hinge; few-shot elbow error: the few-shot rows left out "
                    "(a fit to finetuning alone), its predicted few-shot elbow minus the ground truth; unlocated: that fit is "
                    "pinned on an edge (no rise, or the search bound). The likelihood is dominated by "
                    "the plateau; the elbow columns speak to where curves leave chance, which is what the method "
                    "extrapolates.[/]")
