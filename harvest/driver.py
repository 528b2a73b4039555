"""The sweep driver: plan a sweep, run its base units and cells on an executor (local, Ray or
a shard), merge shards, compact the tables and write the run log and manifest.

The cells themselves (what one (checkpoint, task, n_train, subset_seed) cell computes) are the
cell library :mod:`harvest.sweep`; the executors (:mod:`harvest.executors`) run them. This
module sits above both: ``driver -> executors -> sweep``, never back.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from emergence.errors import SpecError
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


def run_sweep(spec: HarvestSpec | str | Path, out_dir: str | Path, *, executor: str = "local",
              address: str | None = None, shard: tuple[int, int] | None = None,
              keep_adapters: bool = False, show_progress: bool = True, keep_going: bool = False) -> SweepReport:
    """Run the sweep of ``spec`` into ``out_dir`` (resumable); compact when the base is complete.

    ``keep_going`` (local and shards): record a failed cell or checkpoint and go on, as the Ray
    executor always does; the cells of a checkpoint whose base units failed are not attempted.
    """
    from harvest.executors import Outcome, run_base_local, run_local, run_ray, shard_cells, shard_checkpoints
    from harvest.progress import harvest_progress

    if executor not in ("local", "ray"):
        raise SpecError(f"--executor: must be 'local' or 'ray', got {executor!r}")
    start = time.perf_counter()
    plan = _plan_from(spec, out_dir, keep_adapters)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    plan_seconds = time.perf_counter() - start
    cells, base = list(plan.cells), [c.name for c in plan.spec.checkpoints]
    if shard is not None:
        cells, base = shard_cells(cells, *shard), shard_checkpoints(base, *shard)
    else:  # the only writer: clear what a killed run left (never for shards: they may share it)
        _remove_leftovers(plan.out_dir)
    docs_hash = held_out_hash(plan.spec)
    base = _base_pending(plan, base, docs_hash)
    with harvest_progress(show_progress) as progress:
        bar = progress.add_task(f"finetune sweep ({executor})", total=len(cells))
        advance = lambda cell: progress.advance(bar)  # noqa: E731
        progress.advance(bar, len(cells) - len(_pending(plan, cells)))
        if executor == "ray":
            outcome = run_ray(plan, cells, base, address, advance)
        else:
            base_outcome = Outcome()
            broken = set(run_base_local(plan, base, show_progress, keep_going, base_outcome))
            outcome = run_local(plan, [c for c in cells if c.checkpoint not in broken], advance, keep_going)
            outcome.failed[:0] = base_outcome.failed
            outcome.add_phases(base_outcome.phase_seconds)
    outcome.add_phases({"plan": plan_seconds})
    return _finish(plan, docs_hash, len(cells), outcome, start, _run_name(executor, shard))


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


def _base_pending(plan: SweepPlan, names: list[str], docs_hash: str) -> list[str]:
    """Checkpoints among ``names`` whose loss or few-shot parts are missing."""
    store = Store(plan.out_dir)
    return [n for n in names
            if not all(store.has(k, key) for k, key, _ in base_units(base_spec(plan.spec, [n]), docs_hash))]


def _run_name(executor: str, shard: tuple[int, int] | None) -> str:
    return executor if shard is None else f"shard-{shard[0]}-of-{shard[1]}"


def _finish(plan: SweepPlan, docs_hash: str, n_cells: int, outcome, start: float, run: str) -> SweepReport:
    compacting = time.perf_counter()
    base_missing, cells_missing = missing_units(plan, docs_hash)
    missing = base_missing + cells_missing
    tables = None if base_missing else compact_sweep(plan, docs_hash)
    report = SweepReport(n_cells, outcome.computed, outcome.skipped, outcome.failed, missing,
                         outcome.phase_seconds, 0.0, tables)
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
                 "wall_seconds": round(report.wall_seconds, 3)})
    doc = {"spec": plan.spec.source, "spec_hash": plan.spec.spec_hash, "versions": library_versions(),
           "sweep": {"recipe": plan.config.recipe.to_dict(), "nested": plan.config.nested,
                     "eval_shots": plan.config.eval_shots, "subset_seeds": list(plan.config.subset_seeds),
                     "n_cells": len(plan.cells)}, "runs": runs}
    write_json(path, doc)


def summarize(report: SweepReport, out_dir: str | Path) -> str:
    """One or two lines for the terminal."""
    line = (f"sweep: {report.n_cells} cells ({report.computed} computed, {report.skipped} already done, "
            f"{len(report.failed)} failed) in {report.wall_seconds:.1f} s")
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
