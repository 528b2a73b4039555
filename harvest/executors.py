"""Where a sweep's cells run: in this process (local), in worker processes (local, one per
GPU), as Ray tasks, or as one shard of n; and ``harvest eval``'s worker processes.

- **local** (default): cells in order, grouped by checkpoint: every pending cell of a
  checkpoint is finetuned first (adapters saved with their stats), then one engine is loaded
  for that checkpoint and scores every adapter (one vLLM engine per base checkpoint when the
  spec's engine is vLLM). Full finetuning goes one cell at a time (train, score, delete). A kill loses at most the cell in flight: finished parts and saved
  adapters are reused on restart. Errors stop the run (fix, rerun: it resumes); with
  ``keep_going`` a failed cell, or a checkpoint whose base units fail, is recorded as Ray's are
  and the run goes on to the rest (an overnight sweep does not stop at one bad checkpoint).
- **local, n workers** (``--gpus n`` or ``--workers n``): the pending work split into ``n``
  balanced shares (:mod:`harvest.balance`: whole checkpoints, by estimated cost), each run as
  above in its own process; with ``--gpus`` worker ``i`` sees only the ``i``-th visible GPU
  (``CUDA_VISIBLE_DEVICES``, set before the worker imports torch). Workers are spawned (never
  forked), write disjoint parts, and die with the driver (``PR_SET_PDEATHSIG`` on Linux), so a
  killed sweep leaves no worker behind and resumes like a local one. ``harvest eval`` uses the
  same workers for whole checkpoints (:func:`measure_job`).
- **ray**: one Ray task per piece of a checkpoint's cells (:func:`ray_pieces`: a checkpoint's
  cells together, cut only where one checkpoint is more than a slot's fair share, so every GPU
  gets work), run as the local executor runs a checkpoint (the base loaded once for training,
  one engine scoring every adapter), each task asking for ``num_cpus`` CPUs and ``num_gpus``
  GPUs (1 when the cluster has GPUs); plus one task per checkpoint for its base units
  (pretraining loss, few-shot). A failed piece's unfinished cells are retried up to
  ``retries`` times, then each one's error is recorded and the sweep goes on. The driver compacts the parts at the end. The
  results folder must be shared by the workers (one machine, or a shared filesystem).
- **shard** ``i/n``: share ``i`` of ``n`` balanced shares of the whole sweep (the same
  assignment in every shard: it depends on the spec alone), run locally; disjoint across
  shards, and their parts merge by copying (``emergence harvest merge``).

Base units run through :func:`harvest.evaluate.run_harvest` in a private scratch folder whose
parts are then copied into the results folder, so concurrent writers never touch each other's
temporary files or compacted tables.

Size: one cohesive thing, the three ways of running cells (local workers, shards, Ray) behind
one interface; the balancing is ``harvest.balance``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from emergence.atomic import atomic_path
from emergence.errors import SpecError
from harvest.balance import Share, balance
from harvest.store import PARTS_DIR, Store
from harvest.workers import error_line, run_workers
from harvest.sweep import (
    FINETUNE_KIND, BaseModels, Cell, Phases, SweepPlan, evaluate_adapter_cells, evaluate_cell,
    load_tokenizer, open_engine, train_cell, write_cell,
)


@dataclass
class Outcome:
    """What an executor did: cells computed, skipped (already done), failed; seconds per phase."""

    computed: int = 0
    skipped: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    loads: dict[str, dict[str, int]] = field(default_factory=dict)  # checkpoint -> {"train": n, "score": n}

    def add_phases(self, seconds: dict[str, float]) -> None:
        for name, value in seconds.items():
            self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + value

    def count_loads(self, checkpoint: str, what: str, n: int = 1) -> None:
        if n:
            counts = self.loads.setdefault(checkpoint, {})
            counts[what] = counts.get(what, 0) + n

    def add(self, other: Outcome) -> None:
        """Fold another worker's outcome into this one."""
        self.computed += other.computed
        self.skipped += other.skipped
        self.failed += other.failed
        self.add_phases(other.phase_seconds)
        for checkpoint, counts in other.loads.items():
            for what, n in counts.items():
                self.count_loads(checkpoint, what, n)


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
    return measure_isolated(plan.spec, plan.out_dir, checkpoints, show_progress)


def measure_isolated(spec, out_dir: Path, checkpoints: list[str], show_progress: bool) -> float:
    """:func:`harvest.sweep.run_base` in a scratch folder under ``out_dir``, its parts copied in
    (those finished before an error too); seconds."""
    from harvest.evaluate import EVAL_KIND, LOSS_KIND
    from harvest.sweep import run_base

    if not checkpoints:
        return 0.0
    scratch = Path(tempfile.mkdtemp(prefix=".base-", dir=out_dir))
    try:
        copy_parts(out_dir, scratch, (EVAL_KIND, LOSS_KIND))  # resume what exists
        try:
            return run_base(spec, scratch, checkpoints, show_progress)
        finally:
            copy_parts(scratch, out_dir, (EVAL_KIND, LOSS_KIND))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------- local


def run_local(plan: SweepPlan, cells, advance: Callable[[Cell], None] = lambda c: None,
              keep_going: bool = False, ranks: list[str | None] | None = None) -> Outcome:
    """Cells in order, one checkpoint at a time: finetune the pending ones, then score them.

    ``keep_going``: a cell that raises is recorded in ``Outcome.failed`` and skipped; otherwise
    the first error propagates (everything finished before it is kept). ``ranks``: each cell is
    trained sharded over these devices (:func:`harvest.sharding.finetune_sharded`), then scored here.
    """
    outcome = Outcome()
    todo = pending_cells(plan, cells)
    outcome.skipped = len(cells) - len(todo)
    for checkpoint in dict.fromkeys(c.checkpoint for c in todo):
        group = [c for c in todo if c.checkpoint == checkpoint]
        _local_checkpoint(plan, group, outcome, advance, keep_going, ranks)
    return outcome


def run_fsdp(plan: SweepPlan, cells, base: list[str], devices: list[str | None], keep_going: bool,
             advance: Callable[[Cell], None] = lambda c: None) -> Outcome:
    """``sharding = "fsdp"`` over several devices: the base units in one worker per device
    (balanced shares), then each cell trained by all devices together and scored here."""
    outcome = Outcome()
    shares = [s for s in plan_shares(plan, [], base, len(devices)) if s.base]
    if shares:
        outcome.add(run_sweep_workers(plan, shares, devices[:len(shares)], keep_going)[0])
    broken = {f["what"] for f in outcome.failed if f["kind"] == "base"}
    todo = [c for c in cells if f"base units of {c.checkpoint}" not in broken]
    outcome.add(run_local(plan, todo, advance, keep_going, ranks=devices))
    return outcome


def run_share(plan: SweepPlan, cells, base: list[str], show_progress: bool, keep_going: bool,
              advance: Callable[[Cell], None] = lambda c: None) -> Outcome:
    """The local executor's whole job: the base units of ``base``, then ``cells`` (minus those of
    a checkpoint whose base units failed)."""
    outcome = Outcome()
    broken = set(run_base_local(plan, base, show_progress, keep_going, outcome))
    outcome.add(run_local(plan, [c for c in cells if c.checkpoint not in broken], advance, keep_going))
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


def _local_checkpoint(plan: SweepPlan, group: list[Cell], outcome: Outcome, advance, keep_going: bool,
                      ranks: list[str | None] | None = None) -> None:
    """LoRA: train every cell, then score them all in one engine. Full finetuning: one cell at a
    time (train, score, delete), so at most one full copy of the weights is on disk."""
    bases = BaseModels()
    batches = [group] if plan.config.recipe.method == "lora" else [[c] for c in group]
    try:
        for batch in batches:
            _local_batch(plan, batch, bases, outcome, advance, keep_going, ranks)
    finally:
        bases.release()
        outcome.count_loads(group[0].checkpoint, "train", bases.loads)


def _local_batch(plan: SweepPlan, group: list[Cell], bases: BaseModels, outcome: Outcome, advance,
                 keep_going: bool, ranks: list[str | None] | None = None) -> None:
    phases = Phases()
    guard = _Guard(outcome, keep_going)
    stats = {}
    for cell in group:
        with guard(cell):
            stats[cell.key] = train_cell(plan, cell, phases, bases, ranks)
            if ranks:
                outcome.count_loads(cell.checkpoint, "train", len(ranks))  # one load per rank
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
        adapters = [c for c in group if stats[c.key]["method"] == "lora"]
        if adapters:
            with guard(*adapters), phases("eval_load"):
                shared = open_engine(plan, adapters[0], stats[adapters[0].key])
            if shared is not None:
                outcome.count_loads(adapters[0].checkpoint, "score")
        scored = _score_adapters(plan, adapters, shared, stats, tokenizer, phases) if shared is not None else {}
        for cell in group:
            lora = stats[cell.key]["method"] == "lora"
            if lora and shared is None:
                continue  # its engine would not open: recorded above
            with guard(cell):
                rows = scored.get(cell.key)
                if rows is None:
                    engine = shared if lora else _timed(phases, "eval_load", open_engine, plan, cell, stats[cell.key])
                    if not lora:
                        outcome.count_loads(cell.checkpoint, "score")
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


def _score_adapters(plan: SweepPlan, cells: list[Cell], engine, stats, tokenizer, phases: Phases) -> dict[str, Any]:
    """Each task's LoRA cells scored together (:func:`harvest.sweep.evaluate_adapter_cells`: one
    engine call for all adapters where the engine can). A task whose batched scoring fails is
    left out, so its cells are scored one by one and each records its own error."""
    if getattr(engine, "score_choices_adapters", None) is None:
        return {}
    scored = {}
    for task in dict.fromkeys(c.task for c in cells):
        same = [c for c in cells if c.task == task]
        if len(same) < 2:
            continue
        try:
            scored.update(zip([c.key for c in same], evaluate_adapter_cells(plan, same, engine, stats, tokenizer, phases)))
        except Exception:  # noqa: BLE001 - retried cell by cell below, where each error is its own
            continue
    return scored


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
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise SpecError(f"--shard: expected i/n such as 0/4, got {text!r}") from None
    if not 0 <= i < n:
        raise SpecError(f"--shard: need 0 <= i < n, got {text!r}")
    return i, n


def plan_shares(plan: SweepPlan, cells, base: list[str], n: int) -> list[Share]:
    """``n`` balanced shares of ``cells`` and of the base units of ``base`` (:mod:`harvest.balance`,
    by the dry run's cost estimates: deterministic given the spec)."""
    from harvest.dryrun import sweep_costs

    cell_cost, base_cost = sweep_costs(plan)
    return balance(list(cells), list(base), cell_cost, base_cost, n)


# --------------------------------------------------------------------------- worker processes


def run_sweep_workers(plan: SweepPlan, shares: list[Share], devices: list[str | None], keep_going: bool,
                      advance: Callable[[Cell], None] = lambda c: None) -> tuple[Outcome, list[Outcome]]:
    """Each share of a sweep run by :func:`run_share` in a worker process; the summed outcome
    and each worker's."""
    cells = {c.key: c for share in shares for c in share.cells}
    each = run_workers([(_sweep_job, (plan, share, keep_going)) for share in shares], devices,
                       lambda key: advance(cells[key]))
    total = Outcome()
    for outcome in each:
        total.add(outcome)
    return total, each


def _sweep_job(plan: SweepPlan, share: Share, keep_going: bool, done: Callable[[str], None]) -> Outcome:
    return run_share(plan, list(share.cells), list(share.base), False, keep_going, lambda cell: done(cell.key))


def measure_job(spec, out_dir: Path, checkpoints: list[str], keep_going: bool, done: Callable[[str], None]) -> list[str]:
    """``harvest eval``'s share in a worker: pretraining loss and few-shot of ``checkpoints`` into
    ``out_dir`` (one scratch folder at a time); with ``keep_going`` one checkpoint at a time,
    returning ``"name: error"`` of each that failed, else the first error is raised."""
    failed = []
    for batch in [[name] for name in checkpoints] if keep_going else [checkpoints]:
        try:
            measure_isolated(spec, out_dir, batch, show_progress=False)
        except Exception as err:  # recorded, not raised: the driver names every failure
            if not keep_going:
                raise
            failed.append(f"{batch[0]}: {error_line(err)}")
        for name in batch:
            done(name)
    return failed


# --------------------------------------------------------------------------- ray


def _ray_piece(plan: SweepPlan, cells: list[Cell], threads: int) -> Outcome:
    """One Ray task: cells of one checkpoint, run as the local executor runs a checkpoint (LoRA:
    the base loaded once for training, one engine scoring every adapter). Errors propagate
    (the driver retries the piece's pending cells)."""
    import torch

    torch.set_num_threads(threads)
    outcome = Outcome()
    _local_checkpoint(plan, cells, outcome, lambda c: None, keep_going=False)
    return outcome


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


def ray_pieces(plan: SweepPlan, cells: list[Cell], slots: int) -> list[list[Cell]]:
    """The Ray tasks of ``cells``: each checkpoint's cells together (one model load and one
    engine per task), cut further only where a checkpoint costs more than a slot's fair share
    of the work (:mod:`harvest.balance`), so that ``slots`` GPUs (or CPU slots) all get work."""
    pieces = []
    for share in plan_shares(plan, cells, [], max(1, slots)):
        for name in dict.fromkeys(c.checkpoint for c in share.cells):
            pieces.append([c for c in share.cells if c.checkpoint == name])
    return pieces


def _ray_slots(ray, options: dict[str, float]) -> int:
    """How many tasks with ``options`` the cluster runs at once."""
    have = ray.cluster_resources()
    if options["num_gpus"] > 0:
        return max(1, int(have.get("GPU", 0) // options["num_gpus"]))
    return max(1, int(have.get("CPU", 1) // max(options["num_cpus"], 1e-9)))


def _ray_submit_all(ray, plan, cells, base_checkpoints, advance) -> Outcome:
    outcome = Outcome()
    todo = pending_cells(plan, cells)
    outcome.skipped = len(cells) - len(todo)
    options = _ray_resources(ray, plan)
    threads = max(1, int(plan.config.num_cpus))
    plan_ref = ray.put(plan)
    piece_task = ray.remote(_ray_piece).options(**options)
    base_task = ray.remote(_ray_base).options(**options)
    jobs: dict[Any, tuple[str, Any, int]] = {}  # object ref -> (kind, cells or checkpoint, attempt)

    def submit(kind: str, what, attempt: int) -> None:
        fn = base_task if kind == "base" else piece_task
        jobs[fn.remote(plan_ref, what, threads)] = (kind, what, attempt)

    for name in base_checkpoints:
        submit("base", name, 1)
    for piece in ray_pieces(plan, todo, _ray_slots(ray, options)):
        submit("cells", piece, 1)
    while jobs:
        (ready,), _ = ray.wait(list(jobs), num_returns=1)
        kind, what, attempt = jobs.pop(ready)
        try:
            result = ray.get(ready)
        except ray.exceptions.RayError as err:
            if kind == "base":
                if attempt <= plan.config.retries:
                    submit(kind, what, attempt + 1)
                else:
                    outcome.failed.append(_failure(kind, what, attempt, err))
                continue
            left = pending_cells(plan, what)  # cells the piece finished before the error are kept
            done = [c for c in what if c not in left]
            outcome.computed += len(done)
            for cell in done:
                advance(cell)
            if left and attempt <= plan.config.retries:
                submit(kind, left, attempt + 1)
            else:
                outcome.failed += [_failure("cell", cell, attempt, err) for cell in left]
            continue
        if kind == "base":
            outcome.add_phases(result)
            continue
        outcome.add(result)
        for cell in what:
            advance(cell)
    return outcome


def _failure(kind: str, what, attempts: int, err: Exception) -> dict[str, Any]:
    cause = getattr(err, "cause", None) or err
    message = (str(cause).strip().splitlines() or [type(cause).__name__])[-1][:500]
    label = what.label if isinstance(what, Cell) else f"base units of {what}"
    key = what.key if isinstance(what, Cell) else None
    return {"kind": kind, "what": label, "key": key, "attempts": attempts,
            "error": f"{type(cause).__name__}: {message}", "time": time.time()}
