"""``emergence harvest ...`` commands. Torch is imported inside the commands, never here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Measure checkpoints: pretraining loss, few-shot and finetuned accuracy.",
                  no_args_is_help=True)

# The dry-run options of `harvest eval` and `harvest sweep`.
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print what would run and its estimated cost (counts, "
                                                        "tokens, FLOPs, GPU-hours) from the spec alone; load no "
                                                        "model, write nothing.")]
AsJson = Annotated[bool, typer.Option("--json", help="With --dry-run: print it as JSON.")]
TFlops = Annotated[float, typer.Option("--tflops", min=1e-9, help="With --dry-run: assumed effective TFLOP/s per "
                                                                 "GPU for GPU-hours.")]
# Worker processes of `harvest eval` and `harvest sweep` (local executor, shards).
Gpus = Annotated[int | None, typer.Option("--gpus", min=1, help="One worker process per GPU (the first N visible), "
                                                               "work balanced by estimated cost.")]
Workers = Annotated[int, typer.Option("--workers", min=1, help="N worker processes that do not choose their GPU "
                                                              "(on a CPU: processes).")]


@app.command("eval")
def eval_command(
    spec: Annotated[Path, typer.Argument(help="Harvest spec (TOML): checkpoints, held-out text, tasks, engine.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Results folder (created; a rerun resumes it).")] = None,
    keep_going: Annotated[bool, typer.Option("--keep-going", "-k", help="Measure the other checkpoints when one "
                                                                       "fails, then exit 2 naming it.")] = False,
    gpus: Gpus = None,
    workers: Workers = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars on stderr.")] = False,
    dry_run: DryRun = False,
    as_json: AsJson = False,
    tflops: TFlops = 200.0,
) -> None:
    """Measure pretraining loss and few-shot accuracy of every checkpoint into RESULTS_DIR."""
    if _dry_run(spec, dry_run, as_json, tflops, sweep=False):
        return
    from harvest.driver import run_eval

    out = _require_out(out)
    manifest = run_eval(spec, out, workers=workers, gpus=gpus, show_progress=not quiet, keep_going=keep_going)
    tables = manifest["tables"]
    typer.echo(f"wrote {out}: {tables['checkpoints']} checkpoints, {tables['results']} results, "
               f"{tables['items']} items")


@app.command("sweep")
def sweep_command(
    spec: Annotated[Path, typer.Argument(help="Harvest spec (TOML) with a sweep table (docs/sweep.md).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Results folder (created; a rerun resumes it).")] = None,
    executor: Annotated[str, typer.Option(help="Where cells run: local (in order) or ray.")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (e.g. auto or host:6379); "
                                                     "none starts a local Ray.")] = None,
    shard: Annotated[str | None, typer.Option(help="Run only shard i/n of the cells (e.g. a SLURM array); "
                                                   "merge the folders with 'harvest merge'.")] = None,
    keep_adapters: Annotated[bool, typer.Option("--keep-adapters", help="Keep finetuned adapters/weights "
                                                                        "under RESULTS_DIR/adapters.")] = False,
    keep_going: Annotated[bool, typer.Option("--keep-going", "-k", help="Local/shards: record a failed cell or "
                                                                       "checkpoint and go on (exit 2 at the end); "
                                                                       "Ray always does.")] = False,
    gpus: Gpus = None,
    workers: Workers = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars on stderr.")] = False,
    dry_run: DryRun = False,
    as_json: AsJson = False,
    tflops: TFlops = 200.0,
    gpu_memory_gb: Annotated[float, typer.Option("--gpu-memory-gb", min=1e-9, help="With --dry-run: memory of one "
                                                                                   "GPU, for the training-memory "
                                                                                   "verdict.")] = 80.0,
) -> None:
    """Finetune every checkpoint on every data level and subset, evaluate, write finetune rows."""
    if _dry_run(spec, dry_run, as_json, tflops, sweep=True, gpu_memory_gb=gpu_memory_gb, devices=gpus or workers):
        return
    out = _require_out(out)
    from harvest.executors import parse_shard
    from harvest.driver import check_report, run_sweep, summarize

    report = run_sweep(spec, out, executor=executor, address=address,
                       shard=parse_shard(shard) if shard else None, keep_adapters=keep_adapters,
                       show_progress=not quiet, keep_going=keep_going, workers=workers, gpus=gpus)
    typer.echo(summarize(report, out))
    check_report(report, out)


def _dry_run(spec: Path, dry_run: bool, as_json: bool, tflops: float, *, sweep: bool,
             gpu_memory_gb: float = 80.0, devices: int = 1) -> bool:
    """Print the dry run when asked (returns whether it did); --json alone is refused."""
    if not dry_run:
        if as_json:
            raise typer.BadParameter("--json goes with --dry-run", param_hint="--json")
        return False
    from harvest.dryrun import dry_run_text
    from harvest.spec import load_spec

    typer.echo(dry_run_text(load_spec(spec), sweep=sweep, tflops=tflops, as_json=as_json,
                            gpu_memory_gb=gpu_memory_gb, devices=devices))
    return True


def _require_out(out: Path | None) -> Path:
    if out is None:
        raise typer.BadParameter("is required (or give --dry-run)", param_hint="--out")
    return out


@app.command("merge")
def merge_command(
    spec: Annotated[Path, typer.Argument(help="The harvest spec the shards ran.")],
    sources: Annotated[list[Path], typer.Argument(help="Shard results folders to merge.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Merged results folder.")],
) -> None:
    """Merge the parts of sweep shards into one results folder and write its tables."""
    from harvest.driver import merge_sweep, summarize

    report = merge_sweep(spec, out, list(sources))
    typer.echo(summarize(report, out))


@app.command("microladder")
def microladder_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: models, spec, results, report, manifest.")],
    quick: Annotated[bool, typer.Option("--quick", help="Tiny sizes and few steps (minutes): the test's run.")] = False,
    ship: Annotated[Path | None, typer.Option(help="Also copy tables, manifest and report here "
                                                   "(e.g. datasets_cache/microladder).")] = None,
    no_analysis: Annotated[bool, typer.Option("--no-analysis", help="Stop after the harvest (no fit/backtest/report).")] = False,
    config: Annotated[Path | None, typer.Option(help="JSON of ladder settings to change (a manifest's 'config', "
                                                     "or any part of it; see harvest/microladder/configs/).")] = None,
) -> None:
    """Pretrain tiny Llamas on CPU, harvest them (few-shot + finetune sweep), fit, backtest, report."""
    from harvest.microladder.cli import run_microladder

    run_microladder(out, quick=quick, ship=ship, analysis=not no_analysis, config=config)
