"""Where a sweep's cells run: in this process (local), as Ray tasks, or as one shard of n.

- **local** (default): cells in order, grouped by checkpoint: every pending cell of a
  checkpoint is finetuned first (adapters saved with their stats), then one engine is loaded
  for that checkpoint and scores every adapter (one vLLM engine per base checkpoint when the
  spec's engine is vLLM). Full finetuning goes one cell at a time (train, score, delete). A kill loses at most the cell in flight: finished parts and saved
  adapters are reused on restart. Errors stop the run (fix, rerun: it resumes); with
  ``keep_going`` a failed cell, or a checkpoint whose base units fail, is recorded as Ray's are
  and the run goes on to the rest (an overnight sweep does not stop at one bad checkpoint).
- **ray**: one Ray task per cell (train, score, write its part), asking for ``num_cpus`` CPUs
  and ``num_gpus`` GPUs (1 when the cluster has GPUs), plus one task per checkpoint for its base
  units (pretraining loss, few-shot). A failed cell is retried up to ``retries`` times, then
  its error is recorded and the sweep goes on. The driver compacts the parts at the end. The
  results folder must be shared by the workers (one machine, or a shared filesystem).
- **shard** ``i/n``: the cells whose key hash is ``i`` mod ``n`` and the base units of the
  checkpoints whose name hash is ``i`` mod ``n``, run locally; disjoint across shards, and
  their parts merge by copying (``emergence harvest merge``).

Base units run through :func:`harvest.evaluate.run_harvest` in a private scratch folder whose
parts are then copied into the results folder, so concurrent writers never touch each other's
temporary files or compacted tables.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from emergence.atomic import atomic_path
from harvest.store import PARTS_DIR, Store
from harvest.sweep import (
    FINETUNE_KIND, BaseModels, Cell, Phases, SweepPlan, evaluate_cell, load_tokenizer, open_engine, run_cell,
    train_cell, write_cell,
)


@dataclass
class Outcome:
    """What an executor did: cells computed, skipped (already done), failed; seconds per phase."""

    computed: int = 0
    skipped: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def add_phases(self, seconds: dict[str, float]) -> None:
        for name, value in seconds.items():
            self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + value


def pending_cells(plan: SweepPlan, cells) -> list[Cell]:
    store = Store(plan.out_dir)
    return [c for c in cells if not store.has(FINETUNE_KIND, c.key)]


# --------------------------------------------------------------------------- base units


def copy_parts(source: Path, dest: Path, kinds: tuple[str, ...] | None = None) -> int:
    """Copy Parquet parts from ``source``'s parts folder into ``dest``'s (atomic; existing kept)."""
    copied = 0
    root = Path(source) / PARTS_DIR
    for part in sorted(root.rglob("*.parquet")) if root.is_dir() else []:
        kind = part.parent.name
        target = Path(dest) / PARTS_DIR / kind / part.name
        if (kinds is not None and kind not in kinds) or part.name.startswith(".") or target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(part, tmp)
        copied += 1
    return copied


def run_base_isolated(plan: SweepPlan, checkpoints: list[str], show_progress: bool) -> float:
    """Base units of ``checkpoints`` computed in a scratch folder, parts copied in; seconds."""
    from harvest.evaluate import EVAL_KIND, LOSS_KIND
    from harvest.sweep import run_base

    if not checkpoints:
        return 0.0
    scratch = Path(tempfile.mkdtemp(prefix=".base-", dir=plan.out_dir))
    try:
        copy_parts(plan.out_dir, scratch, (EVAL_KIND, LOSS_KIND))  # resume what exists
        seconds = run_base(plan.spec, scratch, checkpoints, show_progress)
        copy_parts(scratch, plan.out_dir, (EVAL_KIND, LOSS_KIND))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return seconds


# --------------------------------------------------------------------------- local


def run_local(plan: SweepPlan, cells, advance: Callable[[Cell], None] = lambda c: None,
              keep_going: bool = False) -> Outcome:
    """Cells in order, one checkpoint at a time: finetune the pending ones, then score them.

    ``keep_going``: a cell that raises is recorded in ``Outcome.failed`` and skipped; otherwise
    the first error propagates (everything finished before it is kept).
    """
    outcome = Outcome()
    todo = pending_cells(plan, cells)
    outcome.skipped = len(cells) - len(todo)
    for checkpoint in dict.fromkeys(c.checkpoint for c in todo):
        group = [c for c in todo if c.checkpoint == checkpoint]
        _local_checkpoint(plan, group, outcome, advance, keep_going)
    return outcome


def run_base_local(plan: SweepPlan, checkpoints: list[str], show_progress: bool,
                   keep_going: bool, outcome: Outcome) -> list[str]:
    """Base units (pretraining loss, few-shot) of ``checkpoints``; the checkpoints whose units
    failed (recorded in ``outcome``; only with ``keep_going``, else the error propagates)."""
    if not keep_going:
        outcome.add_phases({"base": run_base_isolated(plan, checkpoints, show_progress)})
        return []
    failed = []
    for name in checkpoints:  # one at a time, so one bad checkpoint costs only itself
        try:
            outcome.add_phases({"base": run_base_isolated(plan, [name], show_progress)})
        except Exception as err:  # recorded, not raised: the caller reports it and exits non-zero
            outcome.failed.append(_failure("base", name, 1, err))
            failed.append(name)
    return failed


def _local_checkpoint(plan: SweepPlan, group: list[Cell], outcome: Outcome, advance, keep_going: bool) -> None:
    """LoRA: train every cell, then score them all in one engine. Full finetuning: one cell at a
    time (train, score, delete), so at most one full copy of the weights is on disk."""
    bases = BaseModels()
    batches = [group] if plan.config.recipe.method == "lora" else [[c] for c in group]
    try:
        for batch in batches:
            _local_batch(plan, batch, bases, outcome, advance, keep_going)
    finally:
        bases.release()


def _local_batch(plan: SweepPlan, group: list[Cell], bases: BaseModels, outcome: Outcome, advance,
                 keep_going: bool) -> None:
    phases = Phases()
    guard = _Guard(outcome, keep_going)
    stats = {}
    for cell in group:
        with guard(cell):
            stats[cell.key] = train_cell(plan, cell, phases, bases)
    group = [c for c in group if c.key in stats]
    if plan.config.recipe.method == "lora":
        bases.release()  # every cell of the checkpoint is trained: free it before the engine loads
    tokenizer = None
    if group:
        with guard(*group):  # no tokenizer: every trained cell fails (its adapter is kept for a rerun)
            with phases("eval_load"):
                tokenizer = load_tokenizer(plan, group[0].checkpoint)
    if tokenizer is None:
        outcome.add_phases(phases.seconds)
        return
    shared = None  # one engine for every LoRA cell of this checkpoint
    try:
        for cell in group:
            with guard(cell):
                lora = stats[cell.key]["method"] == "lora"
                if lora and shared is None:
                    with phases("eval_load"):
                        shared = open_engine(plan, cell, stats[cell.key])
                engine = shared if lora else _timed(phases, "eval_load", open_engine, plan, cell, stats[cell.key])
                try:
                    rows = evaluate_cell(plan, cell, engine, stats[cell.key], tokenizer, phases)
                finally:
                    if not lora:
                        engine.close()
                write_cell(plan, cell, rows, stats[cell.key], phases)
                outcome.computed += 1
                advance(cell)
    finally:
        if shared is not None:
            shared.close()
    outcome.add_phases(phases.seconds)


class _Guard:
    """``with guard(*cells):`` records an error against ``cells`` and swallows it when keeping
    going; otherwise lets it propagate."""

    def __init__(self, outcome: Outcome, keep_going: bool):
        self.outcome, self.keep_going = outcome, keep_going

    @contextmanager
    def __call__(self, *cells: Cell) -> Iterator[None]:
        try:
            yield
        except Exception as err:
            if not self.keep_going:
                raise
            for cell in cells:
                self.outcome.failed.append(_failure("cell", cell, 1, err))


def _timed(phases: Phases, name: str, fn, *args):
    with phases(name):
        return fn(*args)


# --------------------------------------------------------------------------- shards


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` with 0 <= i < n."""
    from emergence.errors import SpecError

    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise SpecError(f"--shard: expected i/n such as 0/4, got {text!r}") from None
    if not 0 <= i < n:
        raise SpecError(f"--shard: need 0 <= i < n, got {text!r}")
    return i, n


def _bucket(text: str, n: int) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16) % n


def shard_cells(cells, i: int, n: int) -> list[Cell]:
    """The cells of shard ``i`` of ``n``: stable (content hash), disjoint, covering."""
    return [c for c in cells if _bucket(c.key, n) == i]


def shard_checkpoints(names: list[str], i: int, n: int) -> list[str]:
    return [name for name in names if _bucket(name, n) == i]


# --------------------------------------------------------------------------- ray


def _ray_cell(plan: SweepPlan, cell: Cell, threads: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    return run_cell(plan, cell)


def _ray_base(plan: SweepPlan, checkpoint: str, threads: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    return {"base": run_base_isolated(plan, [checkpoint], show_progress=False)}


def run_ray(plan: SweepPlan, cells, base_checkpoints: list[str], address: str | None,
            advance: Callable[[Cell], None] = lambda c: None) -> Outcome:
    """Submit base units and cells as Ray tasks; retry failures; record errors; wait for all."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        return _ray_submit_all(ray, plan, cells, base_checkpoints, advance)
    finally:
        if started:
            ray.shutdown()


def _ray_resources(ray, plan: SweepPlan) -> dict[str, float]:
    gpus = plan.config.num_gpus
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return {"num_cpus": plan.config.num_cpus, "num_gpus": gpus, "max_retries": 0}


def _ray_submit_all(ray, plan, cells, base_checkpoints, advance) -> Outcome:
    outcome = Outcome()
    todo = pending_cells(plan, cells)
    outcome.skipped = len(cells) - len(todo)
    options = _ray_resources(ray, plan)
    threads = max(1, int(plan.config.num_cpus))
    plan_ref = ray.put(plan)
    cell_task = ray.remote(_ray_cell).options(**options)
    base_task = ray.remote(_ray_base).options(**options)
    jobs: dict[Any, tuple[str, Any, int]] = {}  # object ref -> (kind, cell or checkpoint, attempt)

    def submit(kind: str, what, attempt: int) -> None:
        fn = base_task if kind == "base" else cell_task
        jobs[fn.remote(plan_ref, what, threads)] = (kind, what, attempt)

    for name in base_checkpoints:
        submit("base", name, 1)
    for cell in todo:
        submit("cell", cell, 1)
    while jobs:
        (ready,), _ = ray.wait(list(jobs), num_returns=1)
        kind, what, attempt = jobs.pop(ready)
        try:
            outcome.add_phases(ray.get(ready))
        except ray.exceptions.RayError as err:
            if attempt <= plan.config.retries:
                submit(kind, what, attempt + 1)
                continue
            outcome.failed.append(_failure(kind, what, attempt, err))
            continue
        if kind == "cell":
            outcome.computed += 1
            advance(what)
    return outcome


def _failure(kind: str, what, attempts: int, err: Exception) -> dict[str, Any]:
    cause = getattr(err, "cause", None) or err
    message = (str(cause).strip().splitlines() or [type(cause).__name__])[-1][:500]
    label = what.label if isinstance(what, Cell) else f"base units of {what}"
    key = what.key if isinstance(what, Cell) else None
    return {"kind": kind, "what": label, "key": key, "attempts": attempts,
            "error": f"{type(cause).__name__}: {message}", "time": time.time()}
