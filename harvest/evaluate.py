"""The harvest loop: for each checkpoint, load the engine once, measure pretraining loss and
every task few-shot, one resumable unit at a time; then compact the parts into the tables.

    spec ──▶ plan_tasks (items and prompts, built once) ──▶ for each checkpoint:
        pending units? ─ no ─▶ skip (resumed)
                      └ yes ─▶ load engine ─▶ loss unit ─▶ task units ─▶ close
    ──▶ compact (checkpoints / results / items .parquet) ──▶ manifest.json

The finetuning sweep reuses :func:`evaluate_task`, :func:`eval_unit_key`, :class:`TaskPlan`
and :func:`checkpoint_table` with ``setting="finetune"`` and an ``adapter``, and
:func:`evaluate_adapters` for all adapters of a checkpoint at once.

Size: one cohesive thing, a unit from its plan to its rows (planning, scoring, the run loop
that writes the units); the engines, the store and the tasks are modules of their own.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import polars as pl

from emergence.errors import CheckpointError, EmergenceError, SpecError
from fitting.schema import FEW_SHOT
from harvest.engines import engine_version, load_engine
from harvest.engines.base import ChoiceRequest, Engine, GenerateRequest
from harvest.manifest import write_manifest
from harvest.progress import harvest_progress
from harvest.spec import CheckpointSpec, EngineSpec, HarvestSpec, TaskSpec
from harvest.store import Store, claim_results_dir, compact, unit_key
from harvest.tasks import Task, TaskData, get_task
from harvest.tasks.fewshot import EvalItem, build_items, prompts_hash
from harvest.tasks.metrics import accuracy_metric, encode_metrics, item_columns

EVAL_KIND, LOSS_KIND = "eval", "loss"
CHUNK = 64  # requests per engine call for an engine that does not size its calls (requests_per_call)


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class TaskPlan:
    """A task spec made concrete: the task, its scored items and their prompts' hash."""

    spec: TaskSpec
    task: Task
    shots: int
    items: tuple[EvalItem, ...]
    prompt_hash: str

    def identity(self) -> dict[str, Any]:
        """What determines this task's numbers (besides checkpoint and engine)."""
        s = self.spec
        return {**self.task.describe(), "name": s.name, "shots": self.shots, "split": s.split,
                "fewshot_split": s.fewshot_split, "limit": s.limit, "seed": s.seed,
                "item_seed": s.item_seed, "options": s.options, "prompt_hash": self.prompt_hash}


def plan_task(ts: TaskSpec) -> TaskPlan:
    """Load rows and build every prompt (deterministic given the spec's seeds)."""
    task = get_task(ts.task, TaskData(ts.data, ts.dataset, ts.config), **ts.options)
    split, pool_split = ts.split or task.eval_split, ts.fewshot_split or task.fewshot_split
    rows = [(task.doc_id(d, split, i), d) for i, d in enumerate(task.docs(split))]
    if ts.item_seed is not None:
        random.Random(ts.item_seed).shuffle(rows)
    rows = rows[: ts.limit] if ts.limit else rows
    if not rows:
        raise SpecError(f"task {ts.name!r}: split {split!r} has no items")
    shots = task.default_shots if ts.shots is None else ts.shots
    pool = task.docs(pool_split) if shots else []
    items = build_items(task, rows, pool, shots, ts.seed, same_split=pool_split == split)
    return TaskPlan(ts, task, shots, tuple(items), prompts_hash(items))


def plan_tasks(spec: HarvestSpec) -> list[TaskPlan]:
    return [plan_task(ts) for ts in spec.tasks]


def few_shot_units(spec: HarvestSpec, plans: list[TaskPlan]) -> list[tuple[str, str]]:
    """(kind, key) of every few-shot evaluation the spec asks for: what :func:`compact` reads."""
    return [(EVAL_KIND, eval_unit_key(c, p, spec.engine)) for c in spec.checkpoints for p in plans]


def checkpoint_identity(c: CheckpointSpec) -> dict[str, Any]:
    return {"name": c.name, "path": c.ref.path, "revision": c.ref.revision, "dtype": c.ref.dtype}


def eval_unit_key(ckpt: CheckpointSpec, plan: TaskPlan, engine: EngineSpec, *, setting: str = FEW_SHOT,
                  n_train: int = 0, subset_seed: int = 0, adapter: Any = None) -> str:
    """``adapter`` is anything identifying the finetuned weights (a recipe hash, not a temp path)."""
    return unit_key(kind=EVAL_KIND, checkpoint=checkpoint_identity(ckpt), task=plan.identity(),
                    engine=engine_version(engine.name), setting=setting, n_train=n_train,
                    subset_seed=subset_seed, adapter=adapter)


def loss_unit_key(ckpt: CheckpointSpec, spec: HarvestSpec, docs_hash: str) -> str:
    from harvest.loss import LOSS_DEFINITION

    held = spec.held_out
    return unit_key(kind=LOSS_KIND, checkpoint=checkpoint_identity(ckpt), text=docs_hash,
                    window=held.window, definition=LOSS_DEFINITION, engine=engine_version(spec.engine.name))


# --------------------------------------------------------------------------- one unit


def evaluate_task(engine: Engine, plan: TaskPlan, checkpoint: str, *, setting: str = FEW_SHOT,
                  n_train: int = 0, subset_seed: int = 0, adapter: str | None = None,
                  advance: Callable[[int], None] = lambda n: None) -> pl.DataFrame:
    """Item rows (the items columns plus ``gold``, ``metric``, ``chance``, ``shots``, ``prompt_hash``)."""
    items = plan.items
    metrics = task_metrics(plan.task)
    primary = metrics[0]
    extra: dict[str, list] = {}
    if plan.task.kind == "multiple_choice":
        predictions, correct, logprobs = _score_choices(engine, items, adapter, advance)
    else:
        predictions, correct, logprobs, extra = _score_generations(engine, plan.task, items, adapter, advance)
    n = len(items)
    rows = {
        "checkpoint": [checkpoint] * n, "task": [plan.spec.name] * n, "setting": [setting] * n,
        "n_train": [n_train] * n, "subset_seed": [subset_seed] * n,
        "item_id": [it.item_id for it in items], "prediction": predictions, "correct": correct,
        "choice_logprobs": logprobs, "gold": [plan.task.gold_label(it.doc) for it in items],
        "metric": [primary.name] * n, "chance": [float(primary.chance)] * n, "shots": [plan.shots] * n,
        "prompt_hash": [plan.prompt_hash] * n, "task_version": [plan.task.version] * n,
    }
    if metrics != (accuracy_metric(plan.task.chance),):  # several metrics, or not plain accuracy
        rows["metrics"] = [encode_metrics(metrics)] * n
        rows.update(extra)
    return pl.DataFrame(rows, schema_overrides={"choice_logprobs": pl.List(pl.Float64), "n_train": pl.Int64,
                                                "subset_seed": pl.Int64, "shots": pl.Int64, "gold": pl.String})


@dataclass(frozen=True)
class AdapterRun:
    """One finetuned adapter to score: its folder and the cell it came from."""

    adapter: str
    n_train: int
    subset_seed: int


def evaluate_adapters(engine: Engine, plan: TaskPlan, checkpoint: str, runs: list[AdapterRun], *,
                      setting: str) -> list[pl.DataFrame]:
    """:func:`evaluate_task` for several adapters of one checkpoint: the rows of each, in order.

    An engine that scores many adapters in one call (``score_choices_adapters`` /
    ``generate_adapters``: vLLM, one ``generate`` with a ``LoRARequest`` per prompt) gets every
    adapter's requests at once; its answers are then turned into rows by :func:`evaluate_task`
    itself (replayed through :class:`_Replay`), so both ways give the same rows. Otherwise one
    :func:`evaluate_task` per adapter."""
    mc = plan.task.kind == "multiple_choice"
    batched = getattr(engine, "score_choices_adapters" if mc else "generate_adapters", None)
    adapters = [r.adapter for r in runs]
    if batched is not None and len(runs) > 1:
        if mc:
            requests = [ChoiceRequest(it.context, it.continuations) for it in plan.items]
        else:
            requests = [GenerateRequest(it.context, plan.task.max_new_tokens, plan.task.stop) for it in plan.items]
        engine = _Replay(requests, dict(zip(adapters, batched(requests, adapters))))
    return [evaluate_task(engine, plan, checkpoint, setting=setting, n_train=r.n_train, subset_seed=r.subset_seed,
                          adapter=r.adapter) for r in runs]


class _Replay:
    """Stands in for an engine: answers each adapter's requests with what one batched call gave."""

    requests_per_call = None  # all of a unit's requests in one call, as they were asked

    def __init__(self, requests: list, answers: dict[str, list]):
        self.requests, self.answers = requests, answers

    def _answer(self, requests, adapter):
        if list(requests) != self.requests:
            raise RuntimeError("evaluate_adapters: the replayed requests differ from the batched ones")
        return self.answers[adapter]

    def score_choices(self, requests, adapter=None):
        return self._answer(requests, adapter)

    def generate(self, requests, adapter=None):
        return self._answer(requests, adapter)


def task_metrics(task) -> tuple:
    """The task's metrics, primary first (a task object without ``metrics()``: accuracy)."""
    metrics = getattr(task, "metrics", None)
    return metrics() if metrics is not None else (accuracy_metric(task.chance),)


def requests_per_call(engine: Engine, n: int) -> int:
    """How many of a unit's ``n`` requests go to the engine in one call: the engine's own
    ``requests_per_call`` (None: all ``n`` at once, as vLLM wants them: it schedules its own
    batches), :data:`CHUNK` for an engine that does not say. The HF engine keeps 64 (progress
    granularity; each call runs in ``batch_size`` batches)."""
    size = getattr(engine, "requests_per_call", CHUNK)
    return max(1, n if size is None else min(n, int(size)))


def _score_choices(engine, items, adapter, advance):
    predictions, correct, logprobs = [], [], []
    size = requests_per_call(engine, len(items))
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        scores = engine.score_choices([ChoiceRequest(it.context, it.continuations) for it in chunk], adapter=adapter)
        for it, score in zip(chunk, scores):
            best = max(range(len(score.logprobs)), key=lambda i: (score.logprobs[i], -i))  # first on ties
            predictions.append(str(best))
            correct.append(best == it.gold)
            logprobs.append([float(x) for x in score.logprobs])
        advance(len(chunk))
    return predictions, correct, logprobs


def _score_generations(engine, task: Task, items, adapter, advance):
    """Primary metric's (prediction, correct) per item, and the other metrics' as the item
    columns of :func:`harvest.tasks.metrics.item_columns` (GSM8K: both answer filters)."""
    metrics = task_metrics(task)
    predictions, correct = [], []
    extra: dict[str, list] = {c: [] for m in metrics[1:] for c in item_columns(m.name, metrics[0].name)}
    size = requests_per_call(engine, len(items))
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        reqs = [GenerateRequest(it.context, task.max_new_tokens, task.stop) for it in chunk]
        for it, text in zip(chunk, engine.generate(reqs, adapter=adapter)):
            pred, ok = task.check_generation(it.doc, text)
            predictions.append(pred)
            correct.append(ok)
            if len(metrics) > 1:
                scored = task.score_generation(it.doc, text)
                for m in metrics[1:]:
                    pred_col, ok_col = item_columns(m.name, metrics[0].name)
                    extra[pred_col].append(scored[m.name][0])
                    extra[ok_col].append(bool(scored[m.name][1]))
        advance(len(chunk))
    return predictions, correct, [None] * len(items), extra


# --------------------------------------------------------------------------- the run


@dataclass
class RunLog:
    """What happened in this run, for the manifest."""

    units: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time)


def run_harvest(spec: HarvestSpec, out_dir: str | Path, *, show_progress: bool = True,
                keep_going: bool = False) -> dict[str, Any]:
    """Measure every checkpoint of ``spec`` into ``out_dir``; returns the manifest.

    A checkpoint that fails (one that will not load) stops the run, everything finished before
    it kept; with ``keep_going`` the others are measured first, then a :class:`CheckpointError`
    names every failure and no tables are written (a rerun measures only what is missing).
    """
    store, log = Store(claim_results_dir(out_dir)), RunLog()
    store.remove_stale_temps()
    plans = plan_tasks(spec)
    docs, docs_hash = held_out_documents(spec)
    failed: list[str] = []
    with harvest_progress(show_progress) as progress:
        for ckpt in spec.checkpoints:
            try:
                _harvest_checkpoint(spec, ckpt, plans, docs, docs_hash, store, log, progress)
            except Exception as err:  # with keep_going: any failure of one checkpoint (e.g. out of memory)
                if not keep_going:
                    raise
                message = str(err) if isinstance(err, EmergenceError) else f"{type(err).__name__}: {err}"
                failed.append(f"{ckpt.name}: {(message.splitlines() or [''])[0][:300]}")
                progress.console.log(f"failed, going on: {failed[-1]}")
    if failed:
        raise CheckpointError(f"{len(failed)} of {len(spec.checkpoints)} checkpoint(s) failed (first: {failed[0]}); "
                              f"the others are measured in {out_dir}; fix and rerun to finish")
    table = checkpoint_table(spec, store, docs_hash)
    folder = compact(store, table, few_shot_units(spec, plans), table_metadata(spec, plans))
    return write_manifest(store.root, spec, plans, log, folder)


def held_out_documents(spec: HarvestSpec) -> tuple[list[str], str]:
    """The held-out documents and their content hash (empty when the spec gives all losses)."""
    from harvest.loss import documents_hash, read_documents

    if spec.held_out is None:
        return [], ""
    docs = read_documents(spec.held_out)
    return docs, documents_hash(docs)


def _pending(spec, ckpt, plans, docs_hash, store) -> list[tuple[str, str, TaskPlan | None]]:
    todo: list[tuple[str, str, TaskPlan | None]] = []
    if ckpt.pretrain_loss is None:
        key = loss_unit_key(ckpt, spec, docs_hash)
        if not store.has(LOSS_KIND, key):
            todo.append((LOSS_KIND, key, None))
    for plan in plans:
        key = eval_unit_key(ckpt, plan, spec.engine)
        if not store.has(EVAL_KIND, key):
            todo.append((EVAL_KIND, key, plan))
    return todo


def _harvest_checkpoint(spec, ckpt, plans, docs, docs_hash, store, log, progress) -> None:
    todo = _pending(spec, ckpt, plans, docs_hash, store)
    if not todo:
        progress.console.log(f"{ckpt.name}: all units done, skipped")
        return
    t0 = time.perf_counter()
    progress.console.log(f"loading {ckpt.location}")
    engine = load_engine(spec.engine.name, ckpt.ref, spec.engine.options)
    log.units.append({"kind": "load", "checkpoint": ckpt.name, "seconds": round(time.perf_counter() - t0, 3)})
    try:
        for kind, key, plan in todo:
            if kind == LOSS_KIND:
                _loss_unit(engine, spec, ckpt, docs, key, store, log, progress)
            else:
                _eval_unit(engine, ckpt, plan, key, store, log, progress)
    finally:
        engine.close()


def _loss_unit(engine, spec, ckpt, docs, key, store, log, progress) -> None:
    from harvest.loss import LOSS_DEFINITION, measure_loss

    bar = progress.add_task(f"{ckpt.name} · pretraining loss", total=None)
    t0 = time.perf_counter()
    m = measure_loss(engine, docs, spec.held_out.window)
    seconds = time.perf_counter() - t0
    progress.update(bar, total=1, completed=1)
    row = pl.DataFrame({"checkpoint": [ckpt.name], "pretrain_loss": [m.pretrain_loss],
                        "bits_per_byte": [m.bits_per_byte], "loss_tokens": [m.n_tokens],
                        "loss_bytes": [m.n_bytes], "loss_documents": [m.n_documents],
                        "loss_window": [spec.held_out.window]})
    store.write(LOSS_KIND, key, row, {"seconds": seconds, "definition": LOSS_DEFINITION})
    log.units.append({"kind": LOSS_KIND, "key": key, "checkpoint": ckpt.name, "seconds": round(seconds, 3),
                      "tokens": m.n_tokens, "tokens_per_s": round(m.n_tokens / max(seconds, 1e-9), 1)})


def _eval_unit(engine, ckpt, plan, key, store, log, progress) -> None:
    bar = progress.add_task(f"{ckpt.name} · {plan.spec.name} ({plan.shots}-shot)", total=len(plan.items))
    t0, cpu0 = time.perf_counter(), time.process_time()
    rows = evaluate_task(engine, plan, ckpt.name, advance=lambda n: progress.advance(bar, n))
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    store.write(EVAL_KIND, key, rows, {"seconds": seconds, "task": plan.identity()})
    log.units.append({"kind": EVAL_KIND, "key": key, "checkpoint": ckpt.name, "task": plan.spec.name,
                      "items": rows.height, "seconds": round(seconds, 3),
                      "cpu_seconds": round(cpu_seconds, 3),  # this process's CPU time: robust to load
                      "items_per_s": round(rows.height / max(seconds, 1e-9), 2),
                      "accuracy": float(rows["correct"].mean())})


# --------------------------------------------------------------------------- tables


def checkpoint_table(spec: HarvestSpec, store: Store, docs_hash: str) -> pl.DataFrame:
    """checkpoints.parquet rows: the spec's facts joined with each measured loss."""
    rows = []
    for c in spec.checkpoints:
        row: dict[str, Any] = {"checkpoint": c.name, "family": c.family, "params": c.params, "tokens": c.tokens,
                               "pretrain_loss": c.pretrain_loss, "flops": None, "path": c.ref.path,
                               "revision": c.ref.revision, "step": c.step}
        if c.pretrain_loss is None:
            loss = store.read(LOSS_KIND, [loss_unit_key(c, spec, docs_hash)]).row(0, named=True)
            row.update({k: v for k, v in loss.items() if k != "checkpoint"})
        rows.append(row)
    return pl.DataFrame(rows, schema_overrides={"flops": pl.Float64, "revision": pl.String, "step": pl.Int64},
                        infer_schema_length=None)


def table_metadata(spec: HarvestSpec, plans: list[TaskPlan]) -> dict[str, Any]:
    return {"spec_hash": spec.spec_hash, "engine": engine_version(spec.engine.name),
            "tasks": {p.spec.name: p.identity() for p in plans}}
