"""lm-evaluation-harness output (0.4.x, ``--output_path`` with ``--log_samples``) -> the contract.

PATH is one ``results_<timestamp>.json`` or a folder searched recursively for them. Each
results file is one checkpoint; its ``samples_<task>_<timestamp>.jsonl`` files (same folder,
same timestamp), when present, become ``items.parquet``.

Mapping:

    checkpoint     <- config.model_args "pretrained" (or model_name), plus "@<revision>" when a
                      revision other than main is given: "EleutherAI/pythia-160m@step3000"
    params         <- config.model_num_parameters (when lm-eval recorded it)
    family, tokens, pretrain_loss
                   <- not in lm-eval output: a --checkpoints table keyed by the name above, or,
                      for a single checkpoint, --family / --tokens / --pretrain-loss
    results        <- per task in "results": the metric chosen by --metric (default acc, else
                      exact_match), "<metric>,<filter>" key, filter "none" preferred;
                      groups (group_subtasks) are left out, their subtasks are imported
    n_items        <- n-samples[task].effective (checked against the samples file)
    chance         <- multiple choice with samples: mean over items of 1 / number of choices;
                      generate_until: 0; otherwise the built-in or --tasks table
    num_fewshot    <- n-shot[task]
    items          <- doc_id, chosen choice (argmax log-likelihood) or generated text, the
                      metric's per-item 0/1, and every choice's log-likelihood (resps[i][0][0])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from emergence.errors import SourceError
from fitting.importers.base import Imported, ImportOptions
from fitting.importers.sources import as_count, as_proportion, get_key, iter_jsonl, read_json
from fitting.importers.tasks import TaskInfo, known_chance

DEFAULT_METRICS = ("acc", "exact_match")
MULTIPLE_CHOICE = "multiple_choice"
GENERATION = "generate_until"


@dataclass(frozen=True)
class TaskResult:
    """One task of one results file, with its items when a samples file exists."""

    checkpoint: str
    task: str
    metric_key: str
    value: float
    n_items: int
    chance: TaskInfo
    num_fewshot: int | None
    items: list[dict] | None
    file: Path


def read(path: Path, options: ImportOptions) -> Imported:
    files = _results_files(path)
    user = options.user_tasks()
    ckpt_rows, task_results, notes = {}, {}, []
    for file in _progress(files):
        doc = read_json(file)
        name, params = _checkpoint(doc, file)
        ckpt_rows.setdefault(name, {"checkpoint": name, "params": params})
        for result in _task_results(doc, file, name, options, user, notes):
            key = (name, result.task)
            if key in task_results:
                raise SourceError(f"{file}: task {result.task!r} of checkpoint {name!r} is also in "
                                  f"{task_results[key].file}; import one of them")
            task_results[key] = result
    return _assemble(files, ckpt_rows, list(task_results.values()), notes)


def _progress(files: list[Path]):
    """Iterate with a progress bar on stderr (samples files of big runs take a while to parse)."""
    from rich.console import Console
    from rich.progress import track

    return track(files, description="reading lm-eval results", console=Console(stderr=True),
                 transient=True, disable=len(files) < 2)


def _results_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.rglob("results_*.json"))
    if not files:
        raise SourceError(f"{path}: no results_*.json found (lm-eval --output_path folder)")
    return files


def _checkpoint(doc: dict, file: Path) -> tuple[str, int | None]:
    config = get_key(doc, "config", file, "top level", dict)
    args = _model_args(config.get("model_args"))
    pretrained = args.get("pretrained") or doc.get("model_name")
    if not pretrained:
        raise SourceError(f"{file}: config.model_args names no pretrained model and there is no model_name")
    revision = args.get("revision") or config.get("model_revision")
    name = f"{pretrained}@{revision}" if revision and revision != "main" else str(pretrained)
    params = config.get("model_num_parameters")
    if not (isinstance(params, int) and not isinstance(params, bool) and params > 0):
        return name, None
    return name, as_count(params, file, "config['model_num_parameters']")


def _model_args(raw) -> dict[str, str]:
    """'pretrained=x,revision=y' (or a dict, as the Python API may record it) -> dict."""
    if isinstance(raw, dict):
        return {k: str(v) for k, v in raw.items()}
    pairs = (part.split("=", 1) for part in str(raw or "").split(",") if "=" in part)
    return {k.strip(): v.strip() for k, v in pairs}


def _task_results(doc, file, name, options, user, notes) -> list[TaskResult]:
    results = get_key(doc, "results", file, "top level", dict)
    groups = {g for g, subtasks in (doc.get("group_subtasks") or {}).items() if subtasks}
    out = []
    for task in results:
        entry = get_key(results, task, file, "results", dict)
        key = _metric_key(entry, options.metric)
        if task in groups:
            notes.append(f"{file.name}: group {task!r} left out (its subtasks are imported)")
        elif key is None:
            have = ", ".join(sorted({k.split(",", 1)[0] for k in _metric_keys(entry)}))
            notes.append(f"{file.name}: task {task!r} left out: no {options.metric or 'acc or exact_match'} (has: {have})")
        else:
            out.append(_task_result(doc, file, name, task, key, user))
    if not out:
        raise SourceError(f"{file}: no task with metric {options.metric or 'acc or exact_match'} "
                          f"(choose one with --metric)")
    return out


def _task_result(doc, file, name, task, key, user) -> TaskResult:
    entry = doc["results"][task]
    value = as_proportion(entry[key], file, f"results[{task!r}][{key!r}]")
    output_type = ((doc.get("configs") or {}).get(task) or {}).get("output_type")
    items = _read_items(file, task, key, output_type)
    n_items = _n_items(doc, file, task, items, user)
    if items is not None:
        _check_items_agree(items, value, n_items, file, task, key)
    shots = (doc.get("n-shot") or {}).get(task)
    if isinstance(shots, int):
        as_count(shots, file, f"n-shot[{task!r}]")
    return TaskResult(name, task, key, value, n_items, _chance(output_type, file, task, items, user),
                      shots if isinstance(shots, int) else None, items, file)


def _metric_keys(entry: dict) -> list[str]:
    return [k for k in entry if "," in k and "_stderr," not in k]


def _metric_key(entry: dict, metric: str | None) -> str | None:
    """The '<metric>,<filter>' key to import (filter 'none' first, then file order), or None."""
    keys = _metric_keys(entry)
    for name in [metric] if metric else DEFAULT_METRICS:
        if name in keys:
            return name
        matches = [k for k in keys if k.split(",", 1)[0] == name]
        if matches:
            return next((k for k in matches if k.endswith(",none")), matches[0])
    return None


# --------------------------------------------------------------------------- items


def _samples_file(results_file: Path, task: str) -> Path:
    stamp = results_file.stem.removeprefix("results_")
    return results_file.parent / f"samples_{task}_{stamp}.jsonl"


def _read_items(results_file: Path, task: str, key: str, output_type: str | None) -> list[dict] | None:
    path = _samples_file(results_file, task)
    if not path.is_file():
        return None
    metric, filt = key.split(",", 1)
    items = []
    for lineno, record in iter_jsonl(path):
        if record.get("filter", filt) != filt:
            continue
        items.append(_item(record, path, lineno, metric, output_type == MULTIPLE_CHOICE))
    return items


def _item(record: dict, path: Path, lineno: int, metric: str, multiple_choice: bool) -> dict:
    where = f"line {lineno}"
    doc_id = get_key(record, "doc_id", path, where, int)
    correct = as_proportion(get_key(record, metric, path, where), path, f"{where}, key {metric!r}")
    resps = get_key(record, "resps", path, where, list)
    logprobs = _choice_logprobs(resps, path, where)
    if logprobs is not None:  # a loglikelihood task keeps its one log-likelihood, without a "choice"
        prediction = str(int(np.argmax(logprobs))) if multiple_choice else None  # first index on ties, as lm-eval
    else:
        filtered = record.get("filtered_resps")
        prediction = str(filtered[0]) if isinstance(filtered, list) and filtered else None
    return {"item_id": str(doc_id), "prediction": prediction, "correct": correct == 1.0,
            "choice_logprobs": logprobs, "_score": correct}


def _choice_logprobs(resps: list, path: Path, where: str) -> list[float] | None:
    """resps[i][0] = [log-likelihood as text, is_greedy] for multiple choice; None for generation."""
    if not resps or not all(isinstance(r, list) and r and isinstance(r[0], list) for r in resps):
        return None
    try:
        return [float(r[0][0]) for r in resps]
    except (TypeError, ValueError, IndexError):
        raise SourceError(f"{path}, {where}: resps is not a list of [log-likelihood, is_greedy] pairs") from None


def _check_items_agree(items: list[dict], value: float, n_items: int, file: Path, task: str, key: str) -> None:
    path = _samples_file(file, task)
    if len(items) != n_items:
        raise SourceError(f"{path}: {len(items)} samples for filter {key.split(',', 1)[1]!r}, "
                          f"but {file.name} says n-samples = {n_items}")
    mean = float(np.mean([it["_score"] for it in items]))
    if abs(mean - value) > 1e-6:
        raise SourceError(f"{path}: the samples' mean {key.split(',')[0]} is {mean:.6f}, "
                          f"but {file.name} reports {value:.6f}")


# --------------------------------------------------------------------------- task facts


def _n_items(doc: dict, file: Path, task: str, items, user: dict[str, TaskInfo]) -> int:
    counts = (doc.get("n-samples") or {}).get(task)
    if isinstance(counts, dict) and isinstance(counts.get("effective"), int) and counts["effective"] > 0:
        return as_count(counts["effective"], file, f"n-samples[{task!r}]['effective']")
    if items:
        return len(items)
    info = user.get(task) or known_chance(task)
    if info is not None and info.n_items:
        return info.n_items
    raise SourceError(f"{file}: task {task!r} has no n-samples entry and no samples file; give --tasks FILE "
                      f"with columns task,n_items,chance")


def _chance(output_type: str | None, file: Path, task: str, items, user: dict[str, TaskInfo]) -> TaskInfo:
    if task in user:
        return user[task]
    if output_type == MULTIPLE_CHOICE and items and all(it["choice_logprobs"] for it in items):
        chance = float(np.mean([1.0 / len(it["choice_logprobs"]) for it in items]))
        return TaskInfo(None, chance, "samples file: mean over items of 1 / number of choices")
    if output_type == GENERATION:
        return TaskInfo(None, 0.0, "generate_until task: a free-text answer has chance ~0")
    known = known_chance(task)
    if known is not None:
        return known
    raise SourceError(f"{file}: no chance level for task {task!r} (no samples file to count choices); "
                      f"give --tasks FILE with columns task,n_items,chance")


# --------------------------------------------------------------------------- tables


def _assemble(files: list[Path], ckpt_rows: dict, results: list[TaskResult], notes: list[str]) -> Imported:
    checkpoints = pl.DataFrame(list(ckpt_rows.values()), schema={"checkpoint": pl.String, "params": pl.Int64})
    table = pl.DataFrame(
        [{"checkpoint": r.checkpoint, "task": r.task, "value": r.value, "n_items": r.n_items,
          "chance": r.chance.chance, "num_fewshot": r.num_fewshot, "source_metric": r.metric_key} for r in results],
        schema={"checkpoint": pl.String, "task": pl.String, "value": pl.Float64, "n_items": pl.Int64,
                "chance": pl.Float64, "num_fewshot": pl.Int64, "source_metric": pl.String},
    ).with_columns(setting=pl.lit("few_shot"), n_train=pl.lit(0, pl.Int64), subset_seed=pl.lit(0, pl.Int64),
                   metric=pl.lit("accuracy"))
    items = _items_table(results)
    tasks = {r.task: {"chance": r.chance.chance, "chance_source": r.chance.source, "metric": r.metric_key,
                      "n_items_source": "n-samples (effective)", "num_fewshot": r.num_fewshot} for r in results}
    metadata = {"files": [str(f) for f in files], "loss_in_source": "none (lm-eval records no pretraining loss)",
                "tasks": tasks, "notes": notes}
    return Imported(checkpoints, table, items, metadata)


def _items_table(results: list[TaskResult]) -> pl.DataFrame | None:
    rows = [{"checkpoint": r.checkpoint, "task": r.task, "setting": "few_shot", "n_train": 0, "subset_seed": 0,
             **{k: v for k, v in it.items() if not k.startswith("_")}}
            for r in results if r.items for it in r.items]
    if not rows:
        return None
    return pl.DataFrame(rows, schema={
        "checkpoint": pl.String, "task": pl.String, "setting": pl.String, "n_train": pl.Int64,
        "subset_seed": pl.Int64, "item_id": pl.String, "prediction": pl.String, "correct": pl.Boolean,
        "choice_logprobs": pl.List(pl.Float64)})
