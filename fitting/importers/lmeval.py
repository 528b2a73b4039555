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
    metric         <- "accuracy" (a proportion of items), or "mcc" for lm-eval's Matthews
                      correlation (``--metric mcc``, CoLA): value in [-1, 1], chance 0, each
                      item's (gold, prediction) pair checked against the reported value
    num_fewshot    <- n-shot[task]
    items          <- doc_id, chosen choice (argmax log-likelihood) or generated text, the
                      metric's per-item 0/1, and every choice's log-likelihood (resps[i][0][0])
    setting        <- "few_shot", or "finetune" for a model the --finetunes table names (below)

Finetuned models (``--finetunes FILE``, :func:`fitting.importers.tables.read_finetune_table`):
a results file is one *model*: the PEFT adapter when ``model_args`` has ``peft=<path>`` (then
its base checkpoint is the ``pretrained``/``revision`` name above), else the checkpoint name. A
model the table names gives finetune rows of its base checkpoint (the table's ``checkpoint``, or
the adapter's base) at the table's ``n_train`` and ``subset_seed``; with ``task`` only that
task's results are kept (the model was finetuned on it), the others are left out with a note.
An adapter the table does not name is refused: its results are not the base's few-shot results.

Size: one cohesive thing, lm-evaluation-harness's results format (few-shot and finetuned
adapters); the other importers are their own modules.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from emergence.errors import SourceError
from fitting.importers.base import Imported, ImportOptions
from fitting.importers.sources import as_count, as_proportion, get_key, iter_jsonl, read_json
from fitting.importers.tables import read_finetune_table
from fitting.importers.tasks import TaskInfo, known_chance
from fitting.schema import FEW_SHOT, FINETUNE

DEFAULT_METRICS = ("acc", "exact_match")
MCC = "mcc"  # lm-eval's Matthews correlation: a score on [-1, 1] over (gold, prediction) pairs
MCC_CHANCE = TaskInfo(None, 0.0, "Matthews correlation: 0 for a model without skill (GLUE's and lm-eval's CoLA metric)")
MULTIPLE_CHOICE = "multiple_choice"
GENERATION = "generate_until"


@dataclass(frozen=True)
class Setting:
    """What a results file measured: a checkpoint few-shot, or a finetuned one (its cell)."""

    checkpoint: str
    setting: str = FEW_SHOT
    n_train: int = 0
    subset_seed: int = 0
    task: str | None = None  # finetuned on this task only (None: every task of the file)
    model: str | None = None  # the --finetunes key that named it


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
    setting: Setting | None = None  # None: few-shot of ``checkpoint``
    metric: str = "accuracy"  # the contract's metric name ("mcc" for lm-eval's mcc)


def read(path: Path, options: ImportOptions) -> Imported:
    files = _results_files(path)
    user = options.user_tasks()
    finetunes = read_finetune_table(options.finetunes) if options.finetunes else {}
    ckpt_rows, task_results, notes, models = {}, {}, [], []
    for file in _progress(files):
        doc = read_json(file)
        name, params = _checkpoint(doc, file)
        setting = _setting(doc, file, name, finetunes, options.finetunes, models)
        _add_checkpoint(ckpt_rows, setting.checkpoint, None if _adapter(doc) else params)
        for result in _task_results(doc, file, name, options, user, notes, setting):
            key = (setting.checkpoint, result.task, setting.setting, setting.n_train, setting.subset_seed)
            if key in task_results:
                what = "" if setting.setting == FEW_SHOT else f" finetuned on {setting.n_train} (subset {setting.subset_seed})"
                raise SourceError(f"{file}: task {result.task!r} of checkpoint {setting.checkpoint!r}{what} is also in "
                                  f"{task_results[key].file}; import one of them")
            task_results[key] = result
    _check_finetunes_used(finetunes, options.finetunes, models)
    return _assemble(files, ckpt_rows, list(task_results.values()), notes)


def _add_checkpoint(rows: dict, name: str, params: int | None) -> None:
    """One checkpoint row per name; params from the first file that records them (an adapter's
    own count includes the adapter, so its base takes params from elsewhere)."""
    row = rows.setdefault(name, {"checkpoint": name, "params": None})
    if row["params"] is None:
        row["params"] = params


def _adapter(doc: dict) -> str | None:
    """The PEFT adapter lm-eval applied (``model_args`` ``peft=``), or None."""
    return _model_args((doc.get("config") or {}).get("model_args")).get("peft") or None


def _setting(doc: dict, file: Path, name: str, finetunes: dict, table: Path | None, models: list) -> Setting:
    """Few-shot of ``name``, or the finetune cell the --finetunes table gives this file's model."""
    adapter = _adapter(doc)
    model = adapter or name
    models.append(model)
    row = finetunes.get(model)
    if row is None:
        if adapter is not None:
            raise SourceError(f"{file}: evaluates the PEFT adapter {adapter!r} on {name!r}, so its results are "
                              f"finetune results; give --finetunes FILE with a row for model {adapter!r} "
                              f"(columns model, n_train[, subset_seed, checkpoint, task])")
        return Setting(name)
    base = row["checkpoint"] or (name if adapter is not None else None)
    if base is None:
        raise SourceError(f"{table}: model {model!r} is not a PEFT adapter (its model_args have no peft=), so its "
                          f"row needs the base checkpoint it was finetuned from in column 'checkpoint'")
    return Setting(base, FINETUNE, row["n_train"], row["subset_seed"], row["task"], model)


def _check_finetunes_used(finetunes: dict, table: Path | None, models: list[str]) -> None:
    """Every --finetunes row names a model of this import (a typo would silently import nothing)."""
    for model in finetunes:
        if model not in models:
            near = difflib.get_close_matches(model, models, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; models here look like {models[0]!r}"
            raise SourceError(f"{table}: model {model!r} is in no results file of this import{hint}")


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


def _task_results(doc, file, name, options, user, notes, setting: Setting) -> list[TaskResult]:
    results = get_key(doc, "results", file, "top level", dict)
    groups = {g for g, subtasks in (doc.get("group_subtasks") or {}).items() if subtasks}
    if setting.task is not None and setting.task not in results:
        raise SourceError(f"{options.finetunes}: model {setting.model!r} was finetuned on task {setting.task!r}, "
                          f"which {file.name} does not report (it has: {', '.join(results)})")
    out = []
    for task in results:
        entry = get_key(results, task, file, "results", dict)
        key = _metric_key(entry, options.metric)
        if setting.task is not None and task != setting.task:
            notes.append(f"{file.name}: task {task!r} of {setting.model!r} left out (finetuned on {setting.task!r})")
        elif task in groups:
            notes.append(f"{file.name}: group {task!r} left out (its subtasks are imported)")
        elif key is None:
            have = ", ".join(sorted({k.split(",", 1)[0] for k in _metric_keys(entry)}))
            notes.append(f"{file.name}: task {task!r} left out: no {options.metric or 'acc or exact_match'} (has: {have})")
        else:
            out.append(_task_result(doc, file, setting.checkpoint, task, key, user, setting))
    if not out:
        raise SourceError(f"{file}: no task with metric {options.metric or 'acc or exact_match'} "
                          f"(choose one with --metric)")
    return out


def _task_result(doc, file, name, task, key, user, setting: Setting | None = None) -> TaskResult:
    entry = doc["results"][task]
    mcc = key.split(",", 1)[0] == MCC
    value = (_as_mcc if mcc else as_proportion)(entry[key], file, f"results[{task!r}][{key!r}]")
    output_type = ((doc.get("configs") or {}).get(task) or {}).get("output_type")
    items = _read_items(file, task, key, output_type)
    n_items = _n_items(doc, file, task, items, user)
    if items is not None:
        _check_items_agree(items, value, n_items, file, task, key)
    shots = (doc.get("n-shot") or {}).get(task)
    if isinstance(shots, int):
        as_count(shots, file, f"n-shot[{task!r}]")
    chance = MCC_CHANCE if mcc and task not in user else _chance(output_type, file, task, items, user)
    return TaskResult(name, task, key, value, n_items, chance, shots if isinstance(shots, int) else None, items,
                      file, setting, MCC if mcc else "accuracy")


def _as_mcc(value, file: Path, where: str) -> float:
    """A Matthews correlation in [-1, 1] from a JSON value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
        raise SourceError(f"{file}: {where}: Matthews correlation {value!r} outside [-1, 1]")
    return float(value)


def matthews(pairs: list[tuple[str, str]]) -> float:
    """Matthews correlation of (gold, prediction) labels, as scikit-learn (lm-eval's mcc) computes
    it: cov(y, ŷ) / sqrt(cov(y, y) · cov(ŷ, ŷ)) over the confusion matrix, 0 when a variance is 0."""
    n = len(pairs)
    golds, preds = Counter(g for g, _ in pairs), Counter(p for _, p in pairs)
    hits = sum(g == p for g, p in pairs)
    cov_yy_hat = hits * n - sum(golds[k] * preds[k] for k in golds)
    cov_yy, cov_hat = n * n - sum(c * c for c in golds.values()), n * n - sum(c * c for c in preds.values())
    return 0.0 if cov_yy * cov_hat == 0 else cov_yy_hat / math.sqrt(cov_yy * cov_hat)


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
    pair = None
    if metric == MCC:  # lm-eval stores each item's (gold, prediction) for the corpus-level mcc
        pair = get_key(record, metric, path, where, list)
        if len(pair) != 2:
            raise SourceError(f"{path}: {where}, key 'mcc' is {pair!r}, expected [gold, prediction]")
        pair = (str(pair[0]), str(pair[1]))
        correct = float(pair[0] == pair[1])
    else:
        correct = as_proportion(get_key(record, metric, path, where), path, f"{where}, key {metric!r}")
    resps = get_key(record, "resps", path, where, list)
    logprobs = _choice_logprobs(resps, path, where)
    if logprobs is not None:  # a loglikelihood task keeps its one log-likelihood, without a "choice"
        prediction = str(int(np.argmax(logprobs))) if multiple_choice else None  # first index on ties, as lm-eval
    else:
        filtered = record.get("filtered_resps")
        prediction = str(filtered[0]) if isinstance(filtered, list) and filtered else None
    return {"item_id": str(doc_id), "prediction": prediction, "correct": correct == 1.0,
            "choice_logprobs": logprobs, "_score": correct, "_pair": pair}


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
    if key.split(",", 1)[0] == MCC:
        mean, what = matthews([it["_pair"] for it in items]), "Matthews correlation"
    else:
        mean, what = float(np.mean([it["_score"] for it in items])), f"mean {key.split(',')[0]}"
    if abs(mean - value) > 1e-6:
        raise SourceError(f"{path}: the samples' {what} is {mean:.6f}, but {file.name} reports {value:.6f}")


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
        [{"checkpoint": r.checkpoint, "task": r.task, **_cell(r), "value": r.value, "n_items": r.n_items,
          "chance": r.chance.chance, "num_fewshot": r.num_fewshot, "source_metric": r.metric_key,
          "source_model": r.setting.model if r.setting else None, "metric": r.metric} for r in results],
        schema={"checkpoint": pl.String, "task": pl.String, "setting": pl.String, "n_train": pl.Int64,
                "subset_seed": pl.Int64, "value": pl.Float64, "n_items": pl.Int64, "chance": pl.Float64,
                "num_fewshot": pl.Int64, "source_metric": pl.String, "source_model": pl.String, "metric": pl.String},
    )
    finetuned = table["setting"].eq(FINETUNE).sum()
    if not finetuned:
        table = table.drop("source_model")
    items = _items_table(results)
    tasks = {r.task: {"chance": r.chance.chance, "chance_source": r.chance.source, "metric": r.metric_key,
                      "n_items_source": "n-samples (effective)", "num_fewshot": r.num_fewshot} for r in results}
    metadata = {"files": [str(f) for f in files], "loss_in_source": "none (lm-eval records no pretraining loss)",
                "tasks": tasks, "notes": notes}
    if finetuned:
        metadata.update(few_shot_only=False, note=f"{finetuned} finetune results from finetuned models named by "
                                                  "--finetunes (source_model column)")
    return Imported(checkpoints, table, items, metadata)


def _cell(r: TaskResult) -> dict:
    s = r.setting or Setting(r.checkpoint)
    return {"setting": s.setting, "n_train": s.n_train, "subset_seed": s.subset_seed}


def _items_table(results: list[TaskResult]) -> pl.DataFrame | None:
    rows = [{"checkpoint": r.checkpoint, "task": r.task, **_cell(r),
             **{k: v for k, v in it.items() if not k.startswith("_")}}
            for r in results if r.items for it in r.items]
    if not rows:
        return None
    return pl.DataFrame(rows, schema={
        "checkpoint": pl.String, "task": pl.String, "setting": pl.String, "n_train": pl.Int64,
        "subset_seed": pl.Int64, "item_id": pl.String, "prediction": pl.String, "correct": pl.Boolean,
        "choice_logprobs": pl.List(pl.Float64)})
