"""The sweep driver: plan a sweep, run its base units and cells on an executor (local, Ray or
a shard; locally in one process or in worker processes, one per GPU), merge shards, compact the
tables and write the run log and manifest. Also ``harvest eval`` with worker processes
(:func:`run_eval`).

The cells themselves (what one (checkpoint, task, n_train, subset_seed) cell computes) are the
cell library :mod:`harvest.sweep`; the executors (:mod:`harvest.executors`) run them. This
module sits above both: ``driver -> executors -> sweep``, never back.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from emergence.errors import CheckpointError, SpecError
from harvest.spec import HarvestSpec
from harvest.store import Store, claim_results_dir
from harvest.sweep import (
    ADAPTERS_DIR, FINETUNE_KIND, Cell, SweepError, SweepPlan, base_spec, base_units, compact_sweep,
    held_out_hash, missing_units, parse_sweep, plan_sweep,
)

@dataclass
class SweepReport:
    """What a sweep (or shard, or merge) did and wrote."""

    n_cells: int  # cells of this run (a shard's share)
    computed: int
    skipped: int  # already done (resumed)
    failed: list[dict[str, Any]]
    missing: list[str]  # units of the whole sweep not in the results folder yet
    phase_seconds: dict[str, float]
    wall_seconds: float
    tables: Any = None  # fitting.schema.ResultsFolder once compacted
    loads: dict[str, dict[str, int]] = field(default_factory=dict)  # checkpoint -> {"train": n, "score": n}
    workers: list[dict[str, Any]] = field(default_factory=list)  # local with --gpus/--workers: each one's share


def run_sweep(spec: HarvestSpec | str | Path, out_dir: str | Path, *, executor: str = "local",
              address: str | None = None, shard: tuple[int, int] | None = None,
              keep_adapters: bool = False, show_progress: bool = True, keep_going: bool = False,
              workers: int = 1, gpus: int | None = None) -> SweepReport:
    """Run the sweep of ``spec`` into ``out_dir`` (resumable); compact when the base is complete.

    ``keep_going`` (local and shards): record a failed cell or checkpoint and go on, as the Ray
    executor always does; the cells of a checkpoint whose base units failed are not attempted.
    ``gpus`` (local and shards): one worker process per GPU, each on its own; ``workers``: that
    many worker processes without choosing their GPU (on a CPU: processes standing in for GPUs).
    """
    from harvest.executors import plan_shares, run_fsdp, run_ray, run_share, run_sweep_workers
    from harvest.progress import harvest_progress

    if executor not in ("local", "ray"):
        raise SpecError(f"--executor: must be 'local' or 'ray', got {executor!r}")
    start = time.perf_counter()
    plan = _plan_from(spec, out_dir, keep_adapters)
    devices = _worker_devices(plan.spec, executor, workers, gpus)
    if executor == "ray" and plan.config.recipe.sharding == "fsdp":
        raise SpecError('[sweep.recipe] sharding = "fsdp" goes with the local executor and --gpus N '
                        "(one cell trained by the node's GPUs together); Ray places one cell per GPU")
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    plan_seconds = time.perf_counter() - start
    cells, base = list(plan.cells), [c.name for c in plan.spec.checkpoints]
    if shard is not None:  # the spec alone decides the shares: every shard computes the same ones
        share = plan_shares(plan, cells, base, shard[1])[shard[0]]
        cells, base = list(share.cells), list(share.base)
    else:  # the only writer: clear what a killed run left (never for shards: they may share it)
        _remove_leftovers(plan.out_dir)
    docs_hash = held_out_hash(plan.spec)
    base = _base_pending(plan.spec, plan.out_dir, base, docs_hash)
    worker_logs: list[dict[str, Any]] = []
    with harvest_progress(show_progress) as progress:
        bar = progress.add_task(f"finetune sweep ({executor})", total=len(cells))
        advance = lambda cell: progress.advance(bar)  # noqa: E731
        todo = _pending(plan, cells)
        progress.advance(bar, len(cells) - len(todo))
        if executor == "ray":
            outcome = run_ray(plan, cells, base, address, advance)
        elif len(devices) > 1 and plan.config.recipe.sharding == "fsdp":  # every device trains each cell
            outcome = run_fsdp(plan, todo, base, devices, keep_going, advance)
            outcome.skipped = len(cells) - len(todo)
        elif len(devices) > 1:
            shares = plan_shares(plan, todo, base, len(devices))  # balanced over what is left to do
            busy = [(s, d) for s, d in zip(shares, devices) if s.cells or s.base]
            outcome, each = run_sweep_workers(plan, [s for s, _ in busy], [d for _, d in busy], keep_going, advance)
            outcome.skipped = len(cells) - len(todo)
            worker_logs = [_worker_log(i, s, d, o) for i, ((s, d), o) in enumerate(zip(busy, each))]
        else:
            outcome = run_share(plan, cells, base, show_progress, keep_going, advance)
    outcome.add_phases({"plan": plan_seconds})
    return _finish(plan, docs_hash, len(cells), outcome, start, _run_name(executor, shard), worker_logs)


def run_eval(spec: HarvestSpec | str | Path, out_dir: str | Path, *, workers: int = 1, gpus: int | None = None,
             show_progress: bool = True, keep_going: bool = False) -> dict[str, Any]:
    """``harvest eval``: :func:`harvest.evaluate.run_harvest` in this process; with ``workers`` or
    ``gpus`` (as for the sweep) the checkpoints with units left are first split into balanced
    shares (the dry run's cost estimates) measured by worker processes, and run_harvest then finds
    every part (loading no model) and writes the tables. Returns the manifest."""
    from harvest.balance import balance
    from harvest.dryrun import base_costs
    from harvest.evaluate import run_harvest
    from harvest.executors import measure_job
    from harvest.workers import run_workers
    from harvest.progress import harvest_progress
    from harvest.spec import load_spec

    spec = spec if isinstance(spec, HarvestSpec) else load_spec(spec)
    devices = _worker_devices(spec, "local", workers, gpus)
    if len(devices) > 1:
        out = claim_results_dir(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(out)
        names = _base_pending(spec, out, [c.name for c in spec.checkpoints], held_out_hash(spec))
        busy = [(s, d) for s, d in zip(balance([], names, {}, base_costs(spec), len(devices)), devices) if s.base]
        with harvest_progress(show_progress) as progress:
            bar = progress.add_task(f"checkpoints ({len(busy)} workers)", total=len(names))
            failed = sum(run_workers([(measure_job, (spec, out, list(s.base), keep_going)) for s, _ in busy],
                                     [d for _, d in busy], lambda name: progress.advance(bar)), [])
        if failed:
            raise CheckpointError(f"{len(failed)} of {len(spec.checkpoints)} checkpoint(s) failed (first: {failed[0]}); "
                                  f"the others are measured in {out_dir}; fix and rerun to finish")
    return run_harvest(spec, out_dir, show_progress=show_progress, keep_going=keep_going)


def _worker_devices(spec: HarvestSpec, executor: str, workers: int, gpus: int | None) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` of each worker process (None: left as it is); one entry: no workers."""
    from harvest.workers import gpu_devices

    if workers < 1 or (gpus is not None and gpus < 1):
        raise SpecError("--workers and --gpus: need at least 1")
    if gpus is not None and workers > 1:
        raise SpecError("--gpus and --workers: give one of them (--gpus chooses each worker's GPU)")
    if (gpus or workers) > 1 and executor != "local":
        raise SpecError("--gpus and --workers go with the local executor (Ray places its tasks itself)")
    if gpus is None:
        return [None] * workers
    setting = str(spec.engine.options.get("device", "auto"))
    if setting.startswith("cuda:") or spec.engine.device == "cpu":
        raise SpecError(f"{spec.source}: engine.device: --gpus gives each worker one GPU, so the device must be "
                        f'"auto" or "cuda", got {setting!r} (resolved to {spec.engine.device!r})')
    return list(gpu_devices(gpus))


def _worker_log(index: int, share, device: str | None, outcome) -> dict[str, Any]:
    return {"worker": index, "device": f"CUDA_VISIBLE_DEVICES={device}" if device is not None else "CUDA_VISIBLE_DEVICES inherited",
            "checkpoints": share.checkpoints, "base": list(share.base), "cells": len(share.cells),
            "estimated_flops": share.cost, "computed": outcome.computed, "failed": len(outcome.failed),
            "loads": outcome.loads}


def merge_sweep(spec: HarvestSpec | str | Path, out_dir: str | Path, sources: list[str | Path]) -> SweepReport:
    """Copy the parts of shard folders into ``out_dir`` and compact them."""
    from harvest.executors import Outcome, copy_parts

    plan = _plan_from(spec, out_dir, False)
    start = time.perf_counter()
    for source in sources:
        if not (Path(source) / "parts").is_dir():
            raise SpecError(f"{source}: no parts folder (is it a sweep's --out folder?)")
        copy_parts(Path(source), plan.out_dir)
    present = len(plan.cells) - len(_pending(plan, plan.cells))
    return _finish(plan, held_out_hash(plan.spec), len(plan.cells), Outcome(skipped=present), start, "merge")


def _remove_leftovers(out_dir: Path) -> None:
    """Temp files and base-unit scratch folders of a killed run (never a finished part)."""
    Store(out_dir).remove_stale_temps()
    for scratch in out_dir.glob(".base-*"):
        shutil.rmtree(scratch, ignore_errors=True)
    for tmp in (out_dir / ADAPTERS_DIR).glob(".*"):  # half-saved adapters (save_finetuned's temp)
        shutil.rmtree(tmp, ignore_errors=True)


def _plan_from(spec, out_dir, keep_adapters: bool) -> SweepPlan:
    from harvest.spec import load_spec

    spec = spec if isinstance(spec, HarvestSpec) else load_spec(spec)
    config = parse_sweep(spec)
    if keep_adapters:
        config = replace(config, keep_adapters=True)
    return plan_sweep(spec, claim_results_dir(out_dir), config)


def _pending(plan: SweepPlan, cells) -> list[Cell]:
    store = Store(plan.out_dir)
    return [c for c in cells if not store.has(FINETUNE_KIND, c.key)]


def _base_pending(spec: HarvestSpec, out_dir: Path, names: list[str], docs_hash: str) -> list[str]:
    """Checkpoints among ``names`` whose loss or few-shot parts are missing."""
    store = Store(out_dir)
    return [n for n in names
            if not all(store.has(k, key) for k, key, _ in base_units(base_spec(spec, [n]), docs_hash))]


def _run_name(executor: str, shard: tuple[int, int] | None) -> str:
    return executor if shard is None else f"shard-{shard[0]}-of-{shard[1]}"


def _finish(plan: SweepPlan, docs_hash: str, n_cells: int, outcome, start: float, run: str,
            workers: list[dict[str, Any]] | None = None) -> SweepReport:
    compacting = time.perf_counter()
    base_missing, cells_missing = missing_units(plan, docs_hash)
    missing = base_missing + cells_missing
    tables = None if base_missing else compact_sweep(plan, docs_hash)
    report = SweepReport(n_cells, outcome.computed, outcome.skipped, outcome.failed, missing,
                         outcome.phase_seconds, 0.0, tables, outcome.loads, workers or [])
    if tables is not None:
        _write_manifest(plan, report, run, start)
    outcome.add_phases({"compact": time.perf_counter() - compacting})
    report.wall_seconds = time.perf_counter() - start
    _write_run_log(plan, report, run)
    return report


def _write_manifest(plan: SweepPlan, report: SweepReport, run: str, start: float) -> None:
    """Harvest I's ``manifest.json`` (versions, spec hash, table sizes), this run appended."""
    from harvest.evaluate import RunLog, plan_tasks
    from harvest.manifest import write_manifest

    log = RunLog(units=[{"kind": f"sweep-{run}", "cells": report.n_cells, "computed": report.computed,
                         "failed": len(report.failed), "phase_seconds": report.phase_seconds}],
                 started=time.time() - (time.perf_counter() - start))
    write_manifest(plan.out_dir, plan.spec, plan_tasks(plan.spec), log, report.tables)


def _write_run_log(plan: SweepPlan, report: SweepReport, run: str) -> None:
    """Append this run to ``sweep-<run>.json`` (one file per executor/shard: no write races)."""
    import json

    from emergence.atomic import write_json
    from harvest.manifest import library_versions

    path = plan.out_dir / f"sweep-{run}.json"
    try:
        runs = json.loads(path.read_text())["runs"]
    except (OSError, ValueError, KeyError):
        runs = []
    runs.append({"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cells": report.n_cells,
                 "computed": report.computed, "skipped": report.skipped, "failed": report.failed,
                 "missing": len(report.missing), "phase_seconds": report.phase_seconds,
                 "wall_seconds": round(report.wall_seconds, 3), "loads": report.loads,
                 **({"workers": report.workers} if report.workers else {})})
    doc = {"spec": plan.spec.source, "spec_hash": plan.spec.spec_hash, "versions": library_versions(),
           "sweep": {"recipe": plan.config.recipe.to_dict(), "nested": plan.config.nested,
                     "eval_shots": plan.config.eval_shots, "subset_seeds": list(plan.config.subset_seeds),
                     "n_cells": len(plan.cells)}, "runs": runs}
    write_json(path, doc)


def summarize(report: SweepReport, out_dir: str | Path) -> str:
    """One or two lines for the terminal."""
    line = (f"sweep: {report.n_cells} cells ({report.computed} computed, {report.skipped} already done, "
            f"{len(report.failed)} failed) in {report.wall_seconds:.1f} s")
    for w in report.workers:
        line += (f"\n  worker {w['worker']} ({w['device']}): {w['cells']} cells of {len(w['checkpoints'])} "
                 f"checkpoint(s), {w['computed']} computed, {w['failed']} failed")
    if report.tables is not None:
        t = report.tables
        items = 0 if t.items is None else t.items.height
        line += f"\nwrote {out_dir}: {t.checkpoints.height} checkpoints, {t.results.height} results, {items} items"
    if report.missing:
        line += (f"\n{len(report.missing)} units of the sweep are not in {out_dir} yet (e.g. {report.missing[0]}): "
                 "rerun to compute them (shards: run the others, then 'emergence harvest merge')")
    return line


def check_report(report: SweepReport, out_dir: str | Path) -> None:
    """Raise (exit non-zero) when cells failed after their retries."""
    if report.failed:
        first = report.failed[0]
        raise SweepError(f"{len(report.failed)} cell(s) failed after retries (first: {first['what']}: "
                         f"{first['error']}); errors are recorded in {out_dir}/sweep-*.json; rerun to retry")
