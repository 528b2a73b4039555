"""Gadre et al. (2024) scaling testbed (github.com/mlfoundations/scaling) -> the data contract.

Reads either the repository's ``exp_data/`` folder (``models/*.json``: open_lm config and
final validation losses; ``evals/evaluation_<name>_heavy.json``: LLM-Foundry few-shot
accuracies; ``eval_metadata.csv``: shots, item counts and random baselines), or a flat CSV
with one row per model (``name, dataset, params, tokens, loss__<set>..., acc__<task>...``).

Mapping (one checkpoint per model; final checkpoints only):

    checkpoint     <- name                      e.g. rpj-open_lm_1b-1.0
    family         <- dataset                   c4_original | rpj | rw_original
    params, tokens <- hyperparameters.params, .tokens   (flops = 6 N D, filled by the schema)
    pretrain_loss  <- the validation loss chosen by --loss-column (default c4_val: one
                      held-out set shared by all three training sets)
    results        <- every few-shot accuracy, setting few_shot; n_items <- #datapoints,
                      chance <- Random baseline / 100, num_fewshot <- #shots (eval_metadata.csv)
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from emergence.errors import SourceError
from fitting.importers.base import Imported, ImportOptions
from fitting.importers.sources import (
    as_count, as_proportion, check_int64, check_proportion, csv_line, get_key, numeric_column, read_csv, read_json,
)
from fitting.importers.tasks import TaskInfo
from fitting.schema import shown_name, task_name_problem

FLAT_CSV = "flat_models_losses_accuracies.csv"
METADATA_CSV = "eval_metadata.csv"
DEFAULT_LOSS = "c4_val"


def read(path: Path, options: ImportOptions) -> Imported:
    wide, exp_dir, files = _read_wide(path)
    loss_column = _loss_column(wide, options.loss_column or DEFAULT_LOSS, path)
    tasks = _task_infos(exp_dir, options)
    checkpoints = wide.select(
        pl.col("name").alias("checkpoint"), pl.col("dataset").alias("family"),
        pl.col("params").cast(pl.Int64), pl.col("tokens").cast(pl.Int64),
        pl.col(loss_column).alias("pretrain_loss"),
    )
    results = _results(wide, tasks, path)
    used = {t: tasks[t] for t in results["task"].unique().sort().to_list()}
    metadata = {
        "files": files,
        "loss_in_source": f"validation loss {loss_column.removeprefix('loss__')!r} of each final checkpoint",
        "tasks": {t: {**info.to_json(), "metric": "LLM-Foundry ICL accuracy (eval_metrics.icl)"} for t, info in used.items()},
    }
    return Imported(checkpoints, results, None, metadata)


# --------------------------------------------------------------------------- sources


def _read_wide(path: Path) -> tuple[pl.DataFrame, Path | None, list[str]]:
    """(one row per model with loss__* and acc__* columns, the exp_data folder or None, files)."""
    if path.is_file():
        return _read_flat(path), _sibling_exp(path.parent), [str(path)]
    for exp in (path / "exp_data", path):
        if (exp / "models").is_dir() and (exp / "evals").is_dir():
            return _read_exp(exp), exp, [str(exp / "models"), str(exp / "evals")]
    if (path / FLAT_CSV).is_file():
        return _read_flat(path / FLAT_CSV), _sibling_exp(path), [str(path / FLAT_CSV)]
    raise SourceError(f"{path}: neither an exp_data folder (models/, evals/) nor {FLAT_CSV}")


def _sibling_exp(folder: Path) -> Path | None:
    for exp in (folder / "exp_data", folder):
        if (exp / METADATA_CSV).is_file():
            return exp
    return None


def _read_flat(path: Path) -> pl.DataFrame:
    df = read_csv(path, ["name", "dataset", "params", "tokens"])
    numbers = [c for c in df.columns if c in ("params", "tokens") or c.startswith(("loss__", "acc__"))]
    df = df.with_columns([numeric_column(df, path, c) for c in numbers])
    for column in ("params", "tokens"):
        check_int64(df[column], path, column)
    for column in (c for c in numbers if c.startswith("acc__")):
        check_proportion(df[column], path, column)
    if "has_eval" in df.columns:
        df = df.filter(pl.col("has_eval") == 1)
    return df


def _read_exp(exp: Path) -> pl.DataFrame:
    rows = []
    for model_file in sorted((exp / "models").glob("*.json")):
        row = _model_row(model_file)
        eval_file = exp / "evals" / f"evaluation_{row['name']}_heavy.json"
        if eval_file.is_file():  # models without evals carry no results: nothing to import
            rows.append({**row, **_eval_row(eval_file)})
    if not rows:
        raise SourceError(f"{exp}: no models/*.json with a matching evals/evaluation_<name>_heavy.json")
    return pl.DataFrame(rows, infer_schema_length=None)


def _model_row(path: Path) -> dict:
    doc = read_json(path)
    hyper = get_key(doc, "hyperparameters", path, "top level", dict)
    row = {"name": get_key(doc, "name", path, "top level", str),
           "dataset": get_key(doc, "dataset_name", path, "top level", str),
           "params": as_count(get_key(hyper, "params", path, "hyperparameters", int), path, "hyperparameters['params']"),
           "tokens": as_count(get_key(hyper, "tokens", path, "hyperparameters", int), path, "hyperparameters['tokens']")}
    for i, result in enumerate(get_key(doc, "results", path, "top level", list)):
        where = f"results[{i}]"
        val_data = get_key(result, "val_data", path, where, list)
        row[f"loss__{_loss_set(val_data, path, where)}"] = float(get_key(result, "loss", path, where, (int, float)))
    return row


def _loss_set(val_data: list, path: Path, where: str) -> str:
    """'training/eval_data/val_tok_mult/paloma_ptb/x.tar' -> 'paloma_ptb'; '.../eval_data/c4_val/...' -> 'c4_val'."""
    first = str(val_data[0]) if val_data else ""
    for marker in ("val_tok_mult/", "eval_data/"):
        if marker in first:
            return first.split(marker, 1)[1].split("/", 1)[0]
    raise SourceError(f"{path}: {where}['val_data'] = {val_data!r} names no known validation set")


def _eval_row(path: Path) -> dict:
    doc = read_json(path)
    icl = get_key(get_key(doc, "eval_metrics", path, "top level", dict), "icl", path, "eval_metrics", dict)
    return {f"acc__{task}": as_proportion(value, path, f"eval_metrics.icl[{task!r}]") for task, value in icl.items()}


# --------------------------------------------------------------------------- mapping


def _loss_column(wide: pl.DataFrame, name: str, path: Path) -> str:
    column = f"loss__{name}"
    if column not in wide.columns:
        sets = sorted(c.removeprefix("loss__") for c in wide.columns if c.startswith("loss__"))
        raise SourceError(f"{path}: no validation loss {name!r} (--loss-column; available: {', '.join(sets)})")
    missing = wide[column].is_null().arg_true()
    if len(missing):
        raise SourceError(f"{path}: model {wide['name'][int(missing[0])]!r} has no {name!r} loss")
    return column


def _task_infos(exp_dir: Path | None, options: ImportOptions) -> dict[str, TaskInfo]:
    infos = _metadata_infos(exp_dir / METADATA_CSV) if exp_dir else {}
    return {**infos, **options.user_tasks()}


def _metadata_infos(path: Path) -> dict[str, TaskInfo]:
    df = read_csv(path, ["Eval Task", "#shots", "#datapoints", "Random baseline"])
    n_items = numeric_column(df, path, "#datapoints")
    chance = numeric_column(df, path, "Random baseline") / 100.0
    shots = numeric_column(df, path, "#shots")
    check_int64(n_items, path, "#datapoints")
    check_int64(shots, path, "#shots")
    infos = {}
    for row, task in enumerate(df["Eval Task"].to_list()):
        if task is None:  # a blank line
            continue
        if (problem := task_name_problem(task)) is not None:
            raise SourceError(f"{path}, {csv_line(row)}, column 'Eval Task': task name {shown_name(task)} {problem}")
        if not (n_items[row] and n_items[row] > 0 and chance[row] is not None and 0 <= chance[row] < 1):
            raise SourceError(f"{path}, {csv_line(row)}: task {task!r} needs a positive #datapoints and a Random baseline in [0, 100)")
        infos[task] = TaskInfo(int(n_items[row]), float(chance[row]), f"{path.name} (#datapoints, Random baseline %)",
                               int(shots[row]) if shots[row] is not None else None)
    return infos


def _results(wide: pl.DataFrame, tasks: dict[str, TaskInfo], path: Path) -> pl.DataFrame:
    accs = [c for c in wide.columns if c.startswith("acc__")]
    if not accs:
        raise SourceError(f"{path}: no accuracy columns (acc__<task>)")
    long = (wide.select(pl.col("name").alias("checkpoint"), *accs)
            .unpivot(index="checkpoint", variable_name="task", value_name="value")
            .with_columns(pl.col("task").str.strip_prefix("acc__"))
            .drop_nulls("value"))
    names = long["task"].unique().sort().to_list()
    missing = [t for t in names if t not in tasks]
    if missing:
        raise SourceError(f"{path}: task {missing[0]!r} has no item count or chance level (no {METADATA_CSV} row); "
                          f"give --tasks FILE with columns task,n_items,chance, or leave it out with --task")
    facts = pl.DataFrame({"task": names, "n_items": [tasks[t].n_items for t in names],
                          "chance": [tasks[t].chance for t in names],
                          "num_fewshot": [tasks[t].num_fewshot for t in names]},
                         schema={"task": pl.String, "n_items": pl.Int64, "chance": pl.Float64, "num_fewshot": pl.Int64})
    return long.join(facts, on="task").with_columns(
        setting=pl.lit("few_shot"), n_train=pl.lit(0, pl.Int64), subset_seed=pl.lit(0, pl.Int64),
        metric=pl.lit("accuracy"), source_metric=pl.lit("icl_accuracy"),
    ).sort("checkpoint", "task")
