"""The finetuning sweep: every (checkpoint, task, n_train, subset_seed) cell finetuned, then
evaluated with the Harvest I engines, one resumable Parquet part per cell. This module is the cell
library (plan, cells, base units, compaction); :mod:`harvest.driver` runs a sweep on an executor.

    spec [sweep] ──▶ SweepPlan (data levels, cells keyed by content hash)
       ──▶ base units (pretraining loss, few-shot: harvest.evaluate, resumable)
       ──▶ executor (local | ray | shard) ──▶ per cell:
              draw subset ─▶ load ─▶ finetune ─▶ save adapter ─▶ evaluate ─▶ write part
       ──▶ compact (base units + cells) ──▶ checkpoints / results / items .parquet, manifest

The ``[sweep]`` table (every key optional except the data levels)::

    [sweep]
    n_train = [8, 32, 128]                # data levels, or a geometric series up to the
    # n_train = { min = 8, count = 5 }    # full train split (``max =`` caps it)
    subset_seeds = [0, 1]                 # random subsets per level
    nested = true                         # smaller subsets inside larger ones (same seed)
    eval_shots = 0                        # shots when scoring finetuned models
    train_split = "train"                 # default: each task's own ([[tasks]] train_split, else the task's)
    tasks = ["synthetic_arithmetic"]      # task names of the spec (default: all)
    checkpoints = ["step1000"]            # checkpoint names (default: all)
    keep_adapters = false                 # keep adapters/weights under RESULTS_DIR/adapters
    retries = 2                           # Ray: extra attempts per failed cell
    num_cpus = 1                          # Ray: resources per cell (num_gpus: 1 when the
    # num_gpus = 1                        # cluster has GPUs, else 0)

    [sweep.recipe]                        # harvest.finetune.Recipe: method, lora_rank, lr, ...
    method = "lora"

Cells are finetuned on the task's train split (``Task.train_examples()``: the zero-shot prompt
and `` " " + answer``) and scored on the task's eval items with ``eval_shots`` shots, so
training and scoring see the same format. Results rows get ``setting = "finetune"`` and the
cost columns ``finetune_flops`` (6 x params x training tokens, see :mod:`harvest.finetune`),
``finetune_tokens``, ``finetune_steps``, ``trainable_params``, ``finetune_method``,
``eval_tokens`` and ``eval_flops`` (2 x params x evaluation tokens: a forward pass over each
item's context once plus every choice's tokens, which is what the HF engine computes).
Timings go to the parts' metadata and the manifest, never into the tables, so equal inputs
give equal tables on any executor.

Size: one cohesive thing, the sweep's cell library (plan, cells, training and scoring a cell);
the driver is ``harvest.driver``, the executors ``harvest.executors``.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from emergence.errors import EmergenceError, SpecError
from fitting.schema import FINETUNE
from harvest.finetune import Recipe, check_targets  # also silences peft's known deprecation noise
from harvest.spec import CheckpointSpec, HarvestSpec, TaskSpec
from harvest.store import Store

FINETUNE_KIND = "finetune"
ADAPTERS_DIR = "adapters"
SWEEP_VERSION = "1"  # bump when the cell procedure changes what a cell computes
SWEEP_KEYS = {"n_train", "subset_seeds", "nested", "eval_shots", "train_split", "tasks", "checkpoints",
              "keep_adapters", "retries", "num_cpus", "num_gpus", "recipe"}


class SweepError(EmergenceError):
    """A sweep that cannot finish (missing units to compact, failed cells)."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SweepConfig:
    """The parsed ``[sweep]`` table."""

    levels: tuple[int, ...] | None = None  # explicit data levels
    geometric: tuple[int, int, int | None] | None = None  # (min, count, max)
    subset_seeds: tuple[int, ...] = (0, 1)
    nested: bool = True
    eval_shots: int | None = 0  # None: the task spec's shots
    train_split: str | None = None  # None: each task's own (its spec's train_split, else Task.train_split)
    tasks: tuple[str, ...] | None = None
    checkpoints: tuple[str, ...] | None = None
    keep_adapters: bool = False
    retries: int = 2
    num_cpus: float = 1.0
    num_gpus: float | None = None  # None: 1 when the Ray cluster has GPUs
    recipe: Recipe = field(default_factory=Recipe)

    def levels_for(self, n_pool: int, task: str) -> list[int]:
        from harvest.subsets import geometric_levels

        if self.geometric is not None:
            return geometric_levels(n_pool, *self.geometric)
        too_big = [n for n in self.levels if n > n_pool]
        if too_big:
            raise SpecError(f"sweep.n_train: {too_big[0]} is larger than task {task!r}'s train split ({n_pool} examples)")
        return list(self.levels)


def parse_sweep(spec: HarvestSpec) -> SweepConfig:
    """Validate ``spec.sweep``; every error names the spec file and the key."""
    raw = spec.sweep
    where = f"{spec.source}: sweep"
    if raw is None:
        raise SpecError(f"{spec.source}: no [sweep] table (see docs/sweep.md)")
    unknown = sorted(set(raw) - SWEEP_KEYS)
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(SWEEP_KEYS))})")
    levels, geometric = _parse_levels(raw.get("n_train"), where)
    config = SweepConfig(
        levels=levels, geometric=geometric,
        subset_seeds=tuple(_int_list(raw.get("subset_seeds", [0, 1]), f"{where}.subset_seeds", minimum=0)),
        nested=_typed(raw, "nested", bool, True, where),
        eval_shots=_typed(raw, "eval_shots", int, 0, where),
        train_split=_typed(raw, "train_split", str, None, where),
        tasks=_names(raw, "tasks", [t.name for t in spec.tasks], where),
        checkpoints=_names(raw, "checkpoints", [c.name for c in spec.checkpoints], where),
        keep_adapters=_typed(raw, "keep_adapters", bool, False, where),
        retries=_typed(raw, "retries", int, 2, where),
        num_cpus=float(_typed(raw, "num_cpus", (int, float), 1, where)),
        num_gpus=_typed(raw, "num_gpus", (int, float), None, where),
        recipe=Recipe.from_dict(_typed(raw, "recipe", dict, {}, where), f"{where}.recipe"),
    )
    if config.retries < 0 or (config.eval_shots is not None and config.eval_shots < 0):
        raise SpecError(f"{where}: retries and eval_shots must be >= 0")
    check_targets(config.recipe, {c.name: c.ref for c in spec.checkpoints
                                  if config.checkpoints is None or c.name in config.checkpoints}, f"{where}.recipe")
    return config


def _typed(raw: dict, key: str, kind, default, where: str):
    value = raw.get(key, default)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if value is not None and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
        raise SpecError(f"{where}.{key}: must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    return value


def _int_list(value, where: str, minimum: int) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise SpecError(f"{where}: must be a non-empty list of integers, got {value!r}")
    if min(value) < minimum or len(set(value)) != len(value):
        raise SpecError(f"{where}: values must be distinct and >= {minimum}, got {value!r}")
    return sorted(value)


def _parse_levels(value, where: str):
    if value is None:
        raise SpecError(f"{where}.n_train: is required (a list like [8, 32, 128] or {{ min = 8, count = 4 }})")
    if isinstance(value, list):
        return tuple(_int_list(value, f"{where}.n_train", minimum=1)), None
    if isinstance(value, dict):
        extra = sorted(set(value) - {"min", "count", "max"})
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in value.values())
        if extra or "min" not in value or "count" not in value or not ints:
            raise SpecError(f"{where}.n_train: a geometric series takes integers min, count and optional max; "
                            f"got {value!r}")
        return None, (value["min"], value["count"], value.get("max"))
    raise SpecError(f"{where}.n_train: must be a list or a table, got {value!r}")


def _names(raw: dict, key: str, known: list[str], where: str) -> tuple[str, ...] | None:
    if key not in raw:
        return None
    names = raw[key]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SpecError(f"{where}.{key}: must be a list of names, got {names!r}")
    for name in names:
        if name not in known:
            raise SpecError(f"{where}.{key}: {name!r} is not in the spec (known: {', '.join(known)})")
    return tuple(names)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Cell:
    """One finetuning run and its evaluation; ``key`` hashes everything that determines it."""

    checkpoint: str
    task: str
    n_train: int
    subset_seed: int
    key: str

    @property
    def label(self) -> str:
        return f"{self.checkpoint} · {self.task} · n={self.n_train} · seed={self.subset_seed}"

    def folder_name(self) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.checkpoint}-{self.task}-n{self.n_train}-s{self.subset_seed}")
        return f"{safe}-{self.key[:12]}"


@dataclass(frozen=True)
class SweepPlan:
    """Everything a worker needs to run any cell (picklable: sent once to Ray workers)."""

    spec: HarvestSpec
    config: SweepConfig
    out_dir: Path
    eval_plans: dict[str, Any]  # task name -> harvest.evaluate.TaskPlan (eval_shots)
    pools: dict[str, list[tuple[str, str]]]  # task name -> train (prompt, target) pairs
    cells: tuple[Cell, ...]

    def checkpoint(self, name: str) -> CheckpointSpec:
        return next(c for c in self.spec.checkpoints if c.name == name)

    def adapter_dir(self, cell: Cell) -> Path:
        return self.out_dir / ADAPTERS_DIR / cell.folder_name()


def plan_sweep(spec: HarvestSpec, out_dir: str | Path, config: SweepConfig | None = None) -> SweepPlan:
    """Data levels per task and every cell, in order (checkpoint, task, n_train, seed)."""
    from harvest.evaluate import plan_task

    config = config or parse_sweep(spec)
    tasks = [t for t in spec.tasks if config.tasks is None or t.name in config.tasks]
    if not tasks:
        raise SpecError(f"{spec.source}: the sweep has no tasks (add [[tasks]])")
    eval_plans = {t.name: plan_task(_eval_task_spec(t, config)) for t in tasks}
    pools = {name: plan.task.train_examples(plan.spec.train_split or config.train_split)  # the task's own first
             for name, plan in eval_plans.items()}
    checkpoints = [c for c in spec.checkpoints if config.checkpoints is None or c.name in config.checkpoints]
    hashes = {name: pool_hash(pool) for name, pool in pools.items()}
    cells = tuple(
        _cell(spec, config, c, eval_plans[t.name], hashes[t.name], n, s)
        for c in checkpoints for t in tasks
        for n in config.levels_for(len(pools[t.name]), t.name) for s in config.subset_seeds
    )
    return SweepPlan(spec, config, Path(out_dir).resolve(), eval_plans, pools, cells)


def _eval_task_spec(ts: TaskSpec, config: SweepConfig) -> TaskSpec:
    return ts if config.eval_shots is None else replace(ts, shots=config.eval_shots)


def pool_hash(pool: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for prompt, target in pool:
        h.update(prompt.encode() + b"\x1f" + target.encode() + b"\x1e")
    return h.hexdigest()


def _cell(spec, config, ckpt, plan, pool_sha: str, n_train, seed) -> Cell:
    from importlib import metadata

    from harvest.evaluate import eval_unit_key

    training = {"recipe": config.recipe.key_dict(), "nested": config.nested, "pool": pool_sha,
                "sweep_version": SWEEP_VERSION, "peft": metadata.version("peft")}
    key = eval_unit_key(ckpt, plan, spec.engine, setting=FINETUNE, n_train=n_train, subset_seed=seed,
                        adapter=training)
    return Cell(ckpt.name, plan.spec.name, n_train, seed, key)


# --------------------------------------------------------------------------- one cell


class Phases:
    """Wall seconds per phase of a cell (load, finetune, save, eval_load, eval, write)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def device_for(plan: SweepPlan) -> str:
    """The engine's device, resolved when the spec was read (``device = "auto"``: CUDA if any)."""
    return plan.spec.engine.device


def training_ref(plan: SweepPlan, checkpoint: str):
    """The checkpoint as training loads it: full finetuning in float32 (its weights are the
    trainable master weights), LoRA in the engine's dtype (a frozen base under float32 adapters)."""
    ref = plan.checkpoint(checkpoint).ref
    return replace(ref, dtype="float32") if plan.config.recipe.method == "full" else ref


class BaseModels:
    """One base checkpoint kept in CPU memory, so each of its cells starts from a copy instead
    of a load from disk (the local executor trains a checkpoint's cells one after another)."""

    def __init__(self):
        self.name: str | None = None
        self.model = self.tokenizer = None
        self.loads = 0  # loads from disk (the executors' run log counts them)

    def copy(self, plan: SweepPlan, checkpoint: str):
        import copy

        from harvest.engines.loading import load_model

        if self.name != checkpoint:
            self.model, self.tokenizer = load_model(training_ref(plan, checkpoint), "cpu")
            self.name = checkpoint
            self.loads += 1
        return copy.deepcopy(self.model).to(device_for(plan)), self.tokenizer

    def release(self) -> None:
        self.name = self.model = self.tokenizer = None


def train_cell(plan: SweepPlan, cell: Cell, phases: Phases, bases: BaseModels | None = None,
               ranks: list[str | None] | None = None) -> dict[str, Any]:
    """Finetune one cell and save its adapter (or weights) with its stats; resumable.
    ``ranks``: sharded over these devices in processes of their own (:mod:`harvest.sharding`)."""
    from harvest.engines.loading import load_model
    from harvest.finetune import finetune, read_stats, save_finetuned
    from harvest.subsets import draw_subset

    folder = plan.adapter_dir(cell)
    stats = read_stats(folder)
    if stats is not None:  # trained before a kill, not yet evaluated
        return stats
    if ranks:
        from harvest.distributed import train_ranks

        examples = draw_subset(plan.pools[cell.task], cell.n_train, cell.subset_seed, plan.config.nested)
        with phases("finetune"):  # loading and saving happen in the rank processes
            train_ranks(training_ref(plan, cell.checkpoint), examples, plan.config.recipe, cell.subset_seed,
                        plan.spec.engine.dtype, device_for(plan), folder, ranks)
        return read_stats(folder)
    examples = draw_subset(plan.pools[cell.task], cell.n_train, cell.subset_seed, plan.config.nested)
    with phases("load"):
        if bases is None:
            model, tok = load_model(training_ref(plan, cell.checkpoint), device_for(plan))
        else:
            model, tok = bases.copy(plan, cell.checkpoint)
    with phases("finetune"):
        result = finetune(model, tok, examples, plan.config.recipe, seed=cell.subset_seed,
                          dtype=plan.spec.engine.dtype)
    with phases("save"):
        save_finetuned(result, tok, folder)
    return read_stats(folder)


_EVAL_TOKENS: dict[tuple, int] = {}  # (checkpoint path, revision, prompt hash) -> tokens


def eval_tokens(plan: SweepPlan, cell: Cell, tokenizer) -> int:
    """:func:`count_eval_tokens`, computed once per checkpoint tokenizer and task prompts."""
    ref = plan.checkpoint(cell.checkpoint).ref
    key = (ref.path, ref.revision, plan.eval_plans[cell.task].prompt_hash)
    if key not in _EVAL_TOKENS:
        _EVAL_TOKENS[key] = count_eval_tokens(plan, cell.task, tokenizer)
    return _EVAL_TOKENS[key]


def count_eval_tokens(plan: SweepPlan, task: str, tokenizer) -> int:
    """Tokens one evaluation runs: each item's context once plus every choice (or the prompt)."""
    from harvest.engines.loading import encode_pair

    total = 0
    for item in plan.eval_plans[task].items:
        if item.continuations is None:  # generation: the prompt (generated tokens not counted)
            total += len(tokenizer.encode(item.context))
            continue
        pairs = [encode_pair(tokenizer, item.context, c) for c in item.continuations]
        total += len(pairs[0][0]) + sum(len(cont) for _, cont in pairs)
    return total


def cost_columns(stats: dict[str, Any], n_eval_tokens: int) -> dict[str, Any]:
    return {
        "finetune_method": stats["method"], "finetune_steps": stats["steps"],
        "finetune_tokens": stats["tokens"], "finetune_flops": float(stats["flops"]),
        "trainable_params": stats["trainable_params"], "eval_tokens": n_eval_tokens,
        "eval_flops": 2.0 * stats["params"] * n_eval_tokens,
    }


def evaluate_cell(plan: SweepPlan, cell: Cell, engine, stats: dict[str, Any], tokenizer,
                  phases: Phases) -> pl.DataFrame:
    """Score the finetuned model and attach the cell's cost columns."""
    from harvest.evaluate import evaluate_task

    adapter = str(plan.adapter_dir(cell)) if stats["method"] == "lora" else None
    with phases("eval"):
        rows = evaluate_task(engine, plan.eval_plans[cell.task], cell.checkpoint, setting=FINETUNE,
                             n_train=cell.n_train, subset_seed=cell.subset_seed, adapter=adapter)
        return with_costs(rows, cost_columns(stats, eval_tokens(plan, cell, tokenizer)))


def evaluate_adapter_cells(plan: SweepPlan, cells: list[Cell], engine, stats: dict[str, dict[str, Any]],
                           tokenizer, phases: Phases) -> list[pl.DataFrame]:
    """The LoRA ``cells`` of one checkpoint and task scored together
    (:func:`harvest.evaluate.evaluate_adapters`: one engine call for every adapter where the
    engine can), each with its cost columns: the rows :func:`evaluate_cell` gives each."""
    from harvest.evaluate import AdapterRun, evaluate_adapters

    runs = [AdapterRun(str(plan.adapter_dir(c)), c.n_train, c.subset_seed) for c in cells]
    with phases("eval"):
        each = evaluate_adapters(engine, plan.eval_plans[cells[0].task], cells[0].checkpoint, runs, setting=FINETUNE)
        return [with_costs(rows, cost_columns(stats[c.key], eval_tokens(plan, c, tokenizer)))
                for c, rows in zip(cells, each)]


def with_costs(rows: pl.DataFrame, costs: dict[str, Any]) -> pl.DataFrame:
    dtypes = {str: pl.String, int: pl.Int64, float: pl.Float64}
    return rows.with_columns(pl.lit(v, dtypes[type(v)]).alias(k) for k, v in costs.items())


def write_cell(plan: SweepPlan, cell: Cell, rows: pl.DataFrame, stats, phases: Phases) -> None:
    with phases("write"):
        meta = {"cell": cell.label, "phases": phases.seconds, "finetune": stats}
        Store(plan.out_dir).write(FINETUNE_KIND, cell.key, rows, meta)
        if not plan.config.keep_adapters:
            # The (possibly empty) parent stays: removing it races with concurrent shards
            # saving their adapters into it.
            shutil.rmtree(plan.adapter_dir(cell), ignore_errors=True)


def open_engine(plan: SweepPlan, cell: Cell, stats: dict[str, Any]):
    """An engine for scoring ``cell``: the base checkpoint (LoRA) or the saved weights (full)."""
    from harvest.engines import load_engine

    ckpt = plan.checkpoint(cell.checkpoint)
    ref = ckpt.ref if stats["method"] == "lora" else replace(ckpt.ref, path=str(plan.adapter_dir(cell)), revision=None)
    return load_engine(plan.spec.engine.name, ref, plan.spec.engine.options)


def load_tokenizer(plan: SweepPlan, checkpoint: str):
    from transformers import AutoTokenizer

    ref = plan.checkpoint(checkpoint).ref
    return AutoTokenizer.from_pretrained(ref.path, revision=ref.revision, trust_remote_code=ref.trust_remote_code)


# --------------------------------------------------------------------------- base units and compaction


def base_spec(spec: HarvestSpec, checkpoints: list[str]) -> HarvestSpec:
    """The spec restricted to some checkpoints (for the base units of a shard or Ray task)."""
    return replace(spec, checkpoints=tuple(c for c in spec.checkpoints if c.name in checkpoints))


def run_base(spec: HarvestSpec, out_dir: Path, checkpoints: list[str], show_progress: bool) -> float:
    """Pretraining loss and few-shot of ``checkpoints`` (harvest.evaluate, resumable); seconds."""
    from harvest.evaluate import run_harvest

    if not checkpoints:
        return 0.0
    start = time.perf_counter()
    run_harvest(base_spec(spec, checkpoints), out_dir, show_progress=show_progress)
    return time.perf_counter() - start


def base_units(spec: HarvestSpec, docs_hash: str) -> list[tuple[str, str, str]]:
    """(kind, key, label) of the loss and few-shot parts the tables need."""
    from harvest.evaluate import EVAL_KIND, LOSS_KIND, eval_unit_key, loss_unit_key, plan_tasks

    plans = plan_tasks(spec)  # once: building every prompt of a task is not free
    units = [(EVAL_KIND, eval_unit_key(c, p, spec.engine), f"few-shot {p.spec.name} of {c.name}")
             for c in spec.checkpoints for p in plans]
    units += [(LOSS_KIND, loss_unit_key(c, spec, docs_hash), f"pretraining loss of {c.name}")
              for c in spec.checkpoints if c.pretrain_loss is None]
    return units


def held_out_hash(spec: HarvestSpec) -> str:
    from harvest.loss import documents_hash, read_documents

    return "" if spec.held_out is None else documents_hash(read_documents(spec.held_out))


def missing_units(plan: SweepPlan, docs_hash: str) -> tuple[list[str], list[str]]:
    """Labels of the base units and of the cells not yet in the store."""
    store = Store(plan.out_dir)
    base = [label for kind, key, label in base_units(plan.spec, docs_hash) if not store.has(kind, key)]
    return base, [c.label for c in plan.cells if not store.has(FINETUNE_KIND, c.key)]


def compact_sweep(plan: SweepPlan, docs_hash: str):
    """Write the contract tables from every base unit and every finished cell of the plan."""
    from harvest.evaluate import EVAL_KIND, checkpoint_table
    from harvest.store import compact

    store = Store(plan.out_dir)
    units = [(kind, key) for kind, key, _ in base_units(plan.spec, docs_hash) if kind == EVAL_KIND]
    units += [(FINETUNE_KIND, c.key) for c in plan.cells if store.has(FINETUNE_KIND, c.key)]
    meta = {"spec_hash": plan.spec.spec_hash, "sweep": {"recipe": plan.config.recipe.to_dict(),
                                                       "nested": plan.config.nested,
                                                       "eval_shots": plan.config.eval_shots}}
    return compact(store, checkpoint_table(plan.spec, store, docs_hash), units, meta)


# --------------------------------------------------------------------------- the run
