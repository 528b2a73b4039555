"""``--dry-run``: what a harvest or sweep would do and cost, from the spec alone (no model loaded).

Counts: checkpoints, tasks, evaluation units (pretraining loss and few-shot, one per checkpoint
and task), finetune cells (sweep) and model loads (the local executor's: one per checkpoint for
its base units; a sweep adds one training load per checkpoint and, for scoring, one engine per
checkpoint with LoRA or per cell with full finetuning; Ray loads twice per cell).

Estimates, each stated as such: tokens are characters / ``CHARS_PER_TOKEN`` (no tokenizer is
loaded), from task data that is cheap to read (a local ``data`` path, or a task that needs no
download: synthetic and micro-ladder tasks); a task whose rows are on the hub is "unknown" and
counted as zero in the totals. Evaluation tokens per item: its context plus every choice (what
the HF engine runs), or the prompt plus ``max_new_tokens`` for generation; pretraining loss: the
held-out text (a local file). Training tokens per cell: steps x batch x the mean example length
of the train split. Parameters: counted on a ``meta``-device skeleton built from the
checkpoint's ``config.json`` when it is local, else the spec's ``params``. FLOPs:
``2 * params * tokens`` to evaluate, ``6 * params * tokens`` to train; GPU-hours = FLOPs /
(``tflops`` x 1e12) / 3600, at the stated effective throughput.

Training memory per GPU (sweep): :func:`harvest.memory.training_memory` for the checkpoint
with the most parameters (its shape from ``config.json`` when local, else from ``params``), at
one micro-batch (``micro_batch_size``, else the batch of the largest data level) of the longest
training example (characters / 4, at most ``max_length``), in the engine's dtype as resolved
here (bfloat16: mixed precision), with and without gradient checkpointing; the verdict is
against ``gpu_memory_gb`` and says whether ``gradient_checkpointing = "auto"`` would switch on.

The same estimates size the work of the local executor's workers and of ``--shard``
(:func:`sweep_costs`): estimated FLOPs per cell and per checkpoint's base units.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harvest.spec import CheckpointSpec, HarvestSpec, TaskSpec

CHARS_PER_TOKEN = 4.0
DEFAULT_TFLOPS = 200.0
DEFAULT_GPU_MEMORY_GB = 80.0


def checkpoint_params(c: CheckpointSpec) -> tuple[int, str]:
    """(parameters, where the number came from): a meta skeleton of a local config.json, else the spec."""
    params, source, _ = _checkpoint_config(c)
    return params, source


def _checkpoint_config(c: CheckpointSpec) -> tuple[int, str, Any]:
    """(parameters, where from, the transformers config or None); see :func:`checkpoint_params`."""
    config = Path(c.ref.path) / "config.json"
    if config.is_file():
        try:
            import torch
            from transformers import AutoConfig, AutoModelForCausalLM

            cfg = AutoConfig.from_pretrained(str(config.parent), trust_remote_code=c.ref.trust_remote_code)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=c.ref.trust_remote_code)
            return sum(p.numel() for p in model.parameters()), "config.json", cfg
        except Exception:  # noqa: BLE001 - fall back on the spec's number
            pass
    return c.params, "spec", None


def _cheap(ts: TaskSpec) -> bool:
    """Whether the task's rows can be read without a download."""
    from harvest.tasks import task_class

    return ts.data is not None or (ts.dataset is None and task_class(ts.task).hub_dataset is None)


def _task_plan(ts: TaskSpec):
    """The task's plan (items built, as the run builds them) when its data is cheap, else None."""
    from harvest.evaluate import plan_task

    if not _cheap(ts):
        return None
    try:
        return plan_task(ts)
    except Exception:  # noqa: BLE001 - unreadable here: unknown
        return None


def item_tokens(plan) -> int:
    """Estimated tokens one evaluation of ``plan`` runs (see the module docstring)."""
    chars = 0
    for item in plan.items:
        if item.continuations is None:
            chars += len(item.context) + CHARS_PER_TOKEN * getattr(plan.task, "max_new_tokens", 256)
        else:
            chars += len(item.context) + sum(len(c) for c in item.continuations)
    return round(chars / CHARS_PER_TOKEN)


def held_out_tokens(spec: HarvestSpec) -> int | None:
    if spec.held_out is None or spec.held_out.path is None:
        return None
    from harvest.loss import read_documents

    try:
        return round(sum(len(d) for d in read_documents(spec.held_out)) / CHARS_PER_TOKEN)
    except Exception:  # noqa: BLE001
        return None


def train_tokens(recipe, n_train: int, mean_tokens: float) -> float:
    """Estimated tokens one cell trains on: steps x batch x the mean example length."""
    from harvest.finetune import batch_size_for, steps_for

    return steps_for(recipe, n_train) * batch_size_for(recipe, n_train) * mean_tokens


def mean_example_tokens(pool: list[tuple[str, str]]) -> float:
    return sum(len(p) + len(t) for p, t in pool) / len(pool) / CHARS_PER_TOKEN if pool else 0.0


def sweep_costs(plan) -> tuple[dict[str, float], dict[str, float]]:
    """Estimated FLOPs of each cell of a :class:`harvest.sweep.SweepPlan` (by cell key: training
    plus scoring) and of each checkpoint's base units (by name: few-shot plus pretraining loss),
    from the plan alone (no model loaded). Deterministic: every shard computes the same numbers."""
    spec = plan.spec
    params = {c.name: checkpoint_params(c)[0] for c in spec.checkpoints}
    mean = {task: mean_example_tokens(pool) for task, pool in plan.pools.items()}
    scored = {task: item_tokens(p) for task, p in plan.eval_plans.items()}
    cells = {c.key: params[c.checkpoint] * (6.0 * train_tokens(plan.config.recipe, c.n_train, mean[c.task])
                                            + 2.0 * scored[c.task]) for c in plan.cells}
    return cells, base_costs(spec, params)


def base_costs(spec: HarvestSpec, params: dict[str, int] | None = None) -> dict[str, float]:
    """Estimated FLOPs of each checkpoint's pretraining loss and few-shot units (by name); task
    data that is not cheap to read counts as zero tokens (as in the dry run's totals)."""
    if params is None:
        params = {c.name: checkpoint_params(c)[0] for c in spec.checkpoints}
    plans = [_task_plan(ts) for ts in spec.tasks]
    few_shot = sum(item_tokens(p) for p in plans if p is not None)
    loss = held_out_tokens(spec) or 0
    return {c.name: 2.0 * params[c.name] * (few_shot + (loss if c.pretrain_loss is None else 0))
            for c in spec.checkpoints}


def dry_run(spec: HarvestSpec, *, sweep: bool = False, tflops: float = DEFAULT_TFLOPS,
            gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB, devices: int = 1) -> dict[str, Any]:
    """The plan and cost estimate of ``emergence harvest eval`` (or ``sweep``) for ``spec``;
    ``devices``: the run's ``--gpus``/``--workers`` (with ``sharding = "fsdp"``, the ranks that
    train each cell together)."""
    configs = {c.name: _checkpoint_config(c) for c in spec.checkpoints}
    params = {name: (n, src) for name, (n, src, _) in configs.items()}
    plans = {ts.name: _task_plan(ts) for ts in spec.tasks}
    task_tokens = {name: (item_tokens(p) if p is not None else None) for name, p in plans.items()}
    loss_tokens = held_out_tokens(spec)
    loss_ckpts = [c for c in spec.checkpoints if c.pretrain_loss is None]
    eval_flops = 0.0
    for c in spec.checkpoints:
        n = params[c.name][0]
        eval_flops += sum(2.0 * n * (t or 0) for t in task_tokens.values())
        if c.pretrain_loss is None:
            eval_flops += 2.0 * n * (loss_tokens or 0)
    unknown = [name for name, t in task_tokens.items() if t is None]
    if loss_ckpts and loss_tokens is None:
        unknown.append("held_out")
    out: dict[str, Any] = {
        "spec": spec.source,
        "command": "sweep" if sweep else "eval",
        "engine": {"name": spec.engine.name, "device": spec.engine.device, "dtype": spec.engine.dtype,
                   "dtype_setting": spec.engine.dtype_setting},
        "checkpoints": len(spec.checkpoints),
        "tasks": len(spec.tasks),
        "evaluation_units": {"few_shot": len(spec.checkpoints) * len(spec.tasks), "pretraining_loss": len(loss_ckpts),
                             "total": len(spec.checkpoints) * len(spec.tasks) + len(loss_ckpts)},
        "model_loads": len(spec.checkpoints),
        "params": {name: {"params": n, "from": src} for name, (n, src) in params.items()},
        "eval_tokens_per_checkpoint": {**{name: (t if t is not None else "unknown") for name, t in task_tokens.items()},
                                       "held_out": loss_tokens if loss_tokens is not None else
                                       ("unknown" if loss_ckpts else 0)},
        "items": {name: (len(p.items) if p is not None else "unknown") for name, p in plans.items()},
        "unknown": unknown,
        "eval_flops": eval_flops,
    }
    train_flops = 0.0
    if sweep:
        from harvest.sweep import parse_sweep

        ranks = devices if parse_sweep(spec).recipe.sharding == "fsdp" else 1
        out.update(_sweep_estimate(spec, params, task_tokens, ranks))
        out["training_memory"] = training_memory_estimate(spec, configs, out["finetune"], gpu_memory_gb, ranks)
        train_flops = out["finetune"]["train_flops"]
        eval_flops += out["finetune"]["eval_flops"]
        out["eval_flops"] = eval_flops
    total = eval_flops + train_flops
    out["total_flops"] = total
    out["assumptions"] = {"tflops_effective": tflops, "chars_per_token": CHARS_PER_TOKEN,
                          "flops": "2*params*tokens (eval), 6*params*tokens (train)"}
    out["gpu_hours"] = total / (tflops * 1e12) / 3600.0
    return out


def _sweep_estimate(spec: HarvestSpec, params, task_tokens, ranks: int = 1) -> dict[str, Any]:
    from harvest.sweep import _eval_task_spec, parse_sweep

    config = parse_sweep(spec)
    tasks = [t for t in spec.tasks if config.tasks is None or t.name in config.tasks]
    ckpts = [c for c in spec.checkpoints if config.checkpoints is None or c.name in config.checkpoints]
    cells = 0
    train_flops = eval_flops = 0.0
    per_task: dict[str, Any] = {}
    unknown: list[str] = []
    longest = largest = 0  # the longest training example (estimated tokens), the largest data level
    for ts in tasks:
        plan = _task_plan(_eval_task_spec(ts, config))
        pool = None
        if plan is not None:
            try:
                pool = plan.task.train_examples(plan.spec.train_split or config.train_split)
            except Exception:  # noqa: BLE001
                pool = None
        if pool is None:
            levels = list(config.levels) if config.levels is not None else None
            unknown.append(ts.name)
        else:
            levels = config.levels_for(len(pool), ts.name)
        n_cells = None if levels is None else len(levels) * len(config.subset_seeds)
        mean_tokens = mean_example_tokens(pool) if pool else None
        if pool:
            longest = max(longest, round(max(len(p) + len(t) for p, t in pool) / CHARS_PER_TOKEN))
        largest = max([largest, *(levels or [])])
        eval_tok = item_tokens(plan) if plan is not None else None
        train_tok = None
        if levels is not None and mean_tokens is not None:
            train_tok = sum(train_tokens(config.recipe, n, mean_tokens) for n in levels) * len(config.subset_seeds)
        per_task[ts.name] = {"levels": levels if levels is not None else "unknown",
                             "cells_per_checkpoint": n_cells if n_cells is not None else "unknown",
                             "train_tokens_per_checkpoint": round(train_tok) if train_tok is not None else "unknown",
                             "eval_tokens_per_cell": eval_tok if eval_tok is not None else "unknown"}
        for c in ckpts:
            n = params[c.name][0]
            cells += n_cells or 0
            train_flops += 6.0 * n * (train_tok or 0)
            eval_flops += 2.0 * n * (eval_tok or 0) * (n_cells or 0)
    lora = config.recipe.method == "lora"
    # training base per checkpoint (sharded: each cell loads it on every rank) + scoring engines
    loads = (cells * ranks if ranks > 1 else len(ckpts)) + (len(ckpts) if lora else cells)
    return {"finetune": {"cells": cells, "method": config.recipe.method, "target_modules": config.recipe.target_modules,
                         "tasks": per_task, "train_flops": train_flops, "eval_flops": eval_flops,
                         "unknown": unknown, "longest_example_tokens": longest or None,
                         "largest_level": largest or None, "ranks_per_cell": ranks},
            "model_loads": len(spec.checkpoints) + loads,
            # Ray runs each checkpoint's cells as one task (executors.ray_pieces) like the local
            # executor; a checkpoint cut into k pieces for more GPUs than checkpoints adds k - 1
            # training loads and k - 1 engines
            "model_loads_ray": len(spec.checkpoints) + loads}


def training_memory_estimate(spec: HarvestSpec, configs, finetune: dict[str, Any],
                             gpu_memory_gb: float, ranks: int = 1) -> dict[str, Any]:
    """Per-GPU training memory of one cell of the largest checkpoint (module docstring)."""
    from harvest.finetune import MIXED_DTYPES, batch_size_for
    from harvest.memory import GB, shape_of, training_memory, use_checkpointing
    from harvest.sweep import parse_sweep

    config = parse_sweep(spec)
    names = [c.name for c in spec.checkpoints if config.checkpoints is None or c.name in config.checkpoints]
    name = max(names, key=lambda n: configs[n][0])
    params, _, cfg = configs[name]
    shape = shape_of(cfg, params)
    recipe = config.recipe
    mixed = spec.engine.dtype in MIXED_DTYPES
    batch = batch_size_for(recipe, finetune["largest_level"] or recipe.batch_size)
    micro = min(recipe.micro_batch_size or batch, -(-batch // ranks))  # as finetune() splits the largest level's batch
    seq_len = min(recipe.max_length, finetune["longest_example_tokens"] or recipe.max_length)
    size = dict(micro_batch=micro, seq_len=seq_len, mixed=mixed, base_bytes=2 if mixed else 4,
                lora_rank=recipe.lora_rank, ranks=ranks)
    without = training_memory(shape, recipe.method, checkpointing=False, **size)["total"]
    with_ = training_memory(shape, recipe.method, checkpointing=True, **size)["total"]
    device_memory = gpu_memory_gb * GB
    on = use_checkpointing(recipe.gradient_checkpointing, recipe.method, params, without, device_memory)
    need = with_ if on else without
    return {"checkpoint": name, "params": params, "shape_from": shape.source, "method": recipe.method,
            "micro_batch": micro, "seq_len": seq_len, "mixed_precision": mixed, "ranks": ranks,
            "without_checkpointing_gb": without / GB, "with_checkpointing_gb": with_ / GB,
            "gradient_checkpointing": recipe.gradient_checkpointing, "checkpointing_on": on,
            "gpu_memory_gb": gpu_memory_gb, "needed_gb": need / GB, "fits": need <= device_memory}


def _memory_lines(m: dict[str, Any]) -> list[str]:
    precision = "bfloat16 mixed precision" if m["mixed_precision"] else "float32"
    setting = m["gradient_checkpointing"]
    setting = f'"{setting}"' if isinstance(setting, str) else str(setting).lower()
    on = "on" if m["checkpointing_on"] else "off"
    verdict = (f"fits one {m['gpu_memory_gb']:g} GB GPU ({m['needed_gb']:.1f} GB with checkpointing {on})"
               if m["fits"] else
               f"does not fit one {m['gpu_memory_gb']:g} GB GPU ({m['needed_gb']:.1f} GB with checkpointing {on}): "
               "lower micro_batch_size or max_length" + ("" if m["checkpointing_on"] else
                                                          ", or set gradient_checkpointing = true"))
    sharded = f", FSDP over {m['ranks']} GPUs" if m.get("ranks", 1) > 1 else ""
    return [f"  training memory per GPU ({m['checkpoint']}, {m['method']}{sharded}, micro-batch {m['micro_batch']} x "
            f"{m['seq_len']} tokens, {precision}): {m['without_checkpointing_gb']:.1f} GB without gradient "
            f"checkpointing, {m['with_checkpointing_gb']:.1f} GB with; gradient_checkpointing = {setting}: {on}",
            f"  verdict: {verdict}"]


def format_dry_run(d: dict[str, Any]) -> str:
    """The dry run as a few lines for the terminal."""
    lines = [f"dry run of 'emergence harvest {d['command']}' for {d['spec']} (no model loaded)",
             f"  engine: {d['engine']['name']} on {d['engine']['device']}, dtype {d['engine']['dtype']} "
             f"(setting {d['engine']['dtype_setting']})",
             f"  checkpoints: {d['checkpoints']}   tasks: {d['tasks']}",
             f"  evaluation units: {d['evaluation_units']['total']} ({d['evaluation_units']['few_shot']} few-shot, "
             f"{d['evaluation_units']['pretraining_loss']} pretraining loss)"]
    if "finetune" in d:
        f = d["finetune"]
        lines.append(f"  finetune cells: {f['cells']} ({f['method']}, targets {f['target_modules']})"
                     + (f"; unknown for {', '.join(f['unknown'])}" if f["unknown"] else ""))
        lines.append(f"  model loads: {d['model_loads']} (local executor; ray: {d['model_loads_ray']}, plus 2 for "
                     "each extra piece when a checkpoint is split across more GPUs than there are checkpoints)")
        lines.extend(_memory_lines(d["training_memory"]))
    else:
        lines.append(f"  model loads: {d['model_loads']}")
    for name, p in d["params"].items():
        lines.append(f"  params {name}: {p['params']:,} (from {p['from']})")
    toks = ", ".join(f"{k} {v if isinstance(v, str) else f'{v:,}'}" for k, v in d["eval_tokens_per_checkpoint"].items())
    lines.append(f"  estimated evaluation tokens per checkpoint: {toks}")
    if d["unknown"]:
        lines.append(f"  unknown (data not local, counted as 0): {', '.join(d['unknown'])}")
    a = d["assumptions"]
    lines.append(f"  estimated FLOPs: {d['total_flops']:.3g} (eval {d['eval_flops']:.3g}"
                 + (f", train {d['finetune']['train_flops']:.3g}" if "finetune" in d else "") + ")")
    lines.append(f"  estimated GPU-hours: {d['gpu_hours']:.3g} at an assumed {a['tflops_effective']:g} TFLOP/s effective "
                 f"({a['flops']}; {a['chars_per_token']:g} characters per token)")
    return "\n".join(lines)


def dry_run_text(spec: HarvestSpec, *, sweep: bool, tflops: float, as_json: bool,
                 gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB, devices: int = 1) -> str:
    d = dry_run(spec, sweep=sweep, tflops=tflops, gpu_memory_gb=gpu_memory_gb, devices=devices)
    return json.dumps(d, indent=2, default=list) if as_json else format_dry_run(d)
