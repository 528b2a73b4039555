"""Pythia term-frequency arithmetic sweep (EleutherAI/pythia ``evals/csv``) -> the data contract.

Reads every ``pythia-<size>-deduped_term_frquency_all_shots.csv`` in a folder (or one such
file): ``model,checkpoint,task,fewshot,acc,acc_stderr``, one row per model, training step,
operand task and shot count. ``task`` is ``num_reasoning_arithmetic_<op>_<x1>`` with op
addition or multiplication and x1 (0-99) the first operand; each operand task has 50 items.

Mapping (one checkpoint per model and training step):

    checkpoint     <- "<model>@step<checkpoint>", the model name as the file gives it
                      (old Pythia names: EleutherAI/pythia-125m-deduped = today's
                      pythia-160m-deduped; kept verbatim, see docs/importers.md)
    family         <- "pythia-deduped" ("pythia" for a model without -deduped)
    params         <- total parameters of today's size name (the Pythia README table)
    tokens         <- step x 2,097,152 (every Pythia model: 1024 sequences x 2048 tokens)
    pretrain_loss  <- not in the source: a --checkpoints table, or --loss-proxy chinchilla
    results        <- setting few_shot. The shot count is part of the task name, because the
                      contract's key (checkpoint, task, setting, n_train, subset_seed, metric)
                      has no shot column: arith_add_k<k>, arith_mul_k<k> for k in 0/2/4/8/16,
                      the item-weighted mean over the 100 operand tasks (5,000 items).
                      --keep-subtasks keeps the operand tasks: arith_add_x<x1>_k<k>.
                      --num-fewshot K imports one shot count only. num_fewshot keeps k.
    n_items        <- from the data: lm-eval's stderr = sqrt(p(1-p)/(n-1)) gives
                      n = p(1-p)/stderr^2 + 1 = 50 for every operand task
    chance         <- 0 (a free-form number scored by exact match)
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from emergence.errors import SourceError
from fitting.importers.base import Imported, ImportOptions
from fitting.importers.pythia import PARAMS, few_shot_results
from fitting.importers.sources import check_proportion, csv_line, numeric_column, read_csv
from fitting.importers.tasks import TaskInfo

FILE_GLOBS = ("*_term_frquency_all_shots.csv", "*_term_frequency_all_shots.csv")  # upstream's spelling first
SUBFOLDER = "term_frequency_arithmetic"
COLUMNS = ["model", "checkpoint", "task", "fewshot", "acc", "acc_stderr"]
BATCH_TOKENS = 2_097_152  # Pythia README: every model, 1024 x 2048 tokens per step
# Old (v0-era) Pythia size names -> today's (renamed January 2023 to count embedding parameters).
OLD_SIZES = {"19m": "70m", "125m": "160m", "350m": "410m", "800m": "1b", "1.3b": "1.4b",
             "2.7b": "2.8b", "6.7b": "6.9b", "13b": "12b"}
OPS = {"addition": "add", "multiplication": "mul"}
CHANCE = 0.0
_MODEL = re.compile(r"^(?:EleutherAI/)?pythia-(?P<size>[0-9.]+[mb])(?P<deduped>-deduped)?$")
_TASK = re.compile(r"^num_reasoning_arithmetic_(?P<op>addition|multiplication)_(?P<x>\d+)$")


def read(path: Path, options: ImportOptions) -> Imported:
    files = _files(path)
    if options.metric not in (None, "acc"):
        raise SourceError(f"{path}: --metric {options.metric!r}: the arithmetic files record only 'acc'")
    table = pl.concat([_read(f) for f in files], how="vertical")
    if options.num_fewshot is not None:
        have = sorted(table["fewshot"].unique().to_list())
        table = table.filter(pl.col("fewshot") == options.num_fewshot)
        if table.is_empty():
            raise SourceError(f"{path}: no rows with fewshot = {options.num_fewshot} (the files have {have})")
    n_items, notes = _infer_n_items(table)
    if (table["step"] == 0).any():  # no tokens yet: not a pretraining checkpoint the contract can hold
        notes.append("step 0 checkpoints are left out (0 tokens)")
        table = table.filter(pl.col("step") > 0)
    if options.keep_subtasks:
        rows = table.with_columns(pl.format("arith_{}_x{}_k{}", "op", "x", "fewshot").alias("task"),
                                  pl.col("source_task").replace_strict(n_items, return_dtype=pl.Int64).alias("n"))
        rows = rows.select("model", "step", "task", "fewshot", pl.col("acc").alias("value"), "n")
    else:
        rows = _aggregate(table, n_items, notes)
    tasks = _task_infos(rows, options)
    results = _results(rows, tasks)
    checkpoints = _checkpoints(table).filter(pl.col("checkpoint").is_in(results["checkpoint"].unique().implode()))
    metadata = {"files": [str(f) for f in files],
                "loss_in_source": "none (the arithmetic sweep records no loss)",
                "params_source": "Pythia README total parameters of today's size name (old name -> new: "
                                 + ", ".join(f"{o} -> {n}" for o, n in OLD_SIZES.items()) + ")",
                "shots_in_task_name": "task arith_<op>[_x<operand>]_k<shots>: the contract key has no shot column",
                "tasks": {t: i.to_json() for t, i in sorted(tasks.items())},
                "notes": notes + ["model names kept as the files give them (old Pythia names); which weights "
                                  "(v0 or the retrained v1) were evaluated is not recorded in the files"]}
    return Imported(checkpoints, results, None, metadata)


# --------------------------------------------------------------------------- reading


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    for folder in (path, path / SUBFOLDER):
        found = sorted({f for pattern in FILE_GLOBS for f in folder.glob(pattern)})
        if found:
            return found
    raise SourceError(f"{path}: no *_term_frquency_all_shots.csv here or in {SUBFOLDER}/ "
                      "(the Pythia arithmetic term-frequency files)")


def _read(path: Path) -> pl.DataFrame:
    df = read_csv(path, COLUMNS)
    df = df.with_columns(numeric_column(df, path, c) for c in ("checkpoint", "fewshot", "acc", "acc_stderr"))
    for column in ("checkpoint", "fewshot", "acc", "acc_stderr", "model", "task"):
        bad = df[column].is_null().arg_true()
        if len(bad):
            raise SourceError(f"{path}, {csv_line(int(bad[0]))}, column {column!r}: empty")
    check_proportion(df["acc"], path, "acc")
    for column in ("checkpoint", "fewshot"):
        bad = ((df[column] < 0) | (df[column] != df[column].round(0))).arg_true()
        if len(bad):
            row = int(bad[0])
            raise SourceError(f"{path}, {csv_line(row)}, column {column!r}: {df[column][row]!r} is not a whole "
                              "non-negative number")
    bad = (df["acc_stderr"] < 0).arg_true()
    if len(bad):
        row = int(bad[0])
        raise SourceError(f"{path}, {csv_line(row)}, column 'acc_stderr': {df['acc_stderr'][row]!r} is negative")
    sizes, ops, xs = [], [], []
    models = df["model"].cast(pl.String).to_list()
    for row, model in enumerate(models):
        m = _MODEL.match(model)
        size = m and OLD_SIZES.get(m["size"], m["size"])
        if size not in PARAMS:
            raise SourceError(f"{path}, {csv_line(row)}, column 'model': unknown Pythia model {model!r} "
                              f"(known sizes: {', '.join(OLD_SIZES)} and {', '.join(PARAMS)})")
        sizes.append(size)
    for row, task in enumerate(df["task"].cast(pl.String).to_list()):
        t = _TASK.match(task)
        if not t:
            raise SourceError(f"{path}, {csv_line(row)}, column 'task': {task!r} is not "
                              "num_reasoning_arithmetic_<addition|multiplication>_<operand>")
        ops.append(OPS[t["op"]])
        xs.append(int(t["x"]))
    return df.select(
        pl.col("model").cast(pl.String), pl.col("checkpoint").cast(pl.Int64).alias("step"),
        pl.col("task").cast(pl.String).alias("source_task"), pl.col("fewshot").cast(pl.Int64),
        "acc", "acc_stderr",
        pl.Series("size", sizes), pl.Series("op", ops), pl.Series("x", xs, dtype=pl.Int64),
        pl.col("model").cast(pl.String).str.ends_with("-deduped").alias("deduped"),
        pl.lit(str(path)).alias("file"))


# --------------------------------------------------------------------------- item counts


def _infer_n_items(table: pl.DataFrame) -> tuple[dict[str, int], list[str]]:
    """n per operand task from p(1-p)/stderr^2 + 1 (rows with 0 < p < 1); the common n otherwise."""
    usable = table.filter(pl.col("acc") > 0, pl.col("acc") < 1, pl.col("acc_stderr") > 0).with_columns(
        n=(pl.col("acc") * (1 - pl.col("acc")) / pl.col("acc_stderr") ** 2 + 1).round(0).cast(pl.Int64))
    if usable.is_empty():
        raise SourceError(f"{table['file'][0]}: no row with 0 < acc < 1 and a standard error, so the number of "
                          "items per task cannot be inferred; give --tasks FILE with task,n_items,chance")
    per_task = usable.group_by("source_task").agg(pl.col("n").mode().min().alias("n"),
                                                  pl.col("n").n_unique().alias("distinct"))
    n_items = dict(zip(per_task["source_task"].to_list(), per_task["n"].to_list()))
    notes = [f"task {t}: stderr implies {d} different item counts; used the most common, {n}"
             for t, n, d in per_task.iter_rows() if d > 1]
    common = int(per_task["n"].mode().min())
    missing = sorted(set(table["source_task"].to_list()) - set(n_items))
    if missing:
        notes.append(f"{len(missing)} operand tasks never score strictly between 0 and 1, so their item count "
                     f"cannot be inferred; assumed the common count {common}: {', '.join(missing[:5])}"
                     + (" ..." if len(missing) > 5 else ""))
        n_items.update({t: common for t in missing})
    return n_items, notes


def _aggregate(table: pl.DataFrame, n_items: dict[str, int], notes: list[str]) -> pl.DataFrame:
    """The operand tasks of one operation -> one row per checkpoint and shot count (item-weighted)."""
    operands = table.group_by("op").agg(pl.col("x").n_unique().alias("k"))
    expected = dict(zip(operands["op"].to_list(), operands["k"].to_list()))
    weights = pl.col("source_task").replace_strict(n_items, return_dtype=pl.Float64)
    grouped = (table.with_columns(w=weights).group_by("model", "step", "op", "fewshot")
               .agg((pl.col("acc") * pl.col("w")).sum().alias("hits"), pl.col("w").sum().alias("n"),
                    pl.col("x").n_unique().alias("k")))
    complete = grouped.filter(pl.col("k") == pl.col("op").replace_strict(expected, return_dtype=pl.UInt32))
    if complete.height < grouped.height:
        notes.append(f"{grouped.height - complete.height} (checkpoint, operation, shots) groups lack some operand "
                     "tasks; left out")
    for op, k in sorted(expected.items()):
        n = complete.filter(pl.col("op") == op)["n"]
        notes.append(f"arith_{op}_k*: item-weighted mean of {k} operand tasks, {int(n.max()) if len(n) else 0} items")
    return complete.select("model", "step", pl.format("arith_{}_k{}", "op", "fewshot").alias("task"), "fewshot",
                           (pl.col("hits") / pl.col("n")).alias("value"), pl.col("n").round(0).cast(pl.Int64))


def _task_infos(rows: pl.DataFrame, options: ImportOptions) -> dict[str, TaskInfo]:
    user = options.user_tasks()
    facts = rows.group_by("task").agg(pl.col("n").max().alias("n"), pl.col("fewshot").first())
    infos = {}
    for task, n, shots in facts.sort("task").iter_rows():
        infos[task] = user.get(task) or TaskInfo(
            int(n), CHANCE, "n_items inferred from stderr (n = p(1-p)/se^2 + 1 per operand task, summed); "
                            "chance 0: a free-form number scored by exact match", int(shots))
    return infos


def _name() -> pl.Expr:
    return pl.format("{}@step{}", pl.col("model"), pl.col("step"))


def _checkpoints(table: pl.DataFrame) -> pl.DataFrame:
    runs = table.select("model", "step", "size", "deduped").unique()
    return runs.select(
        _name().alias("checkpoint"),
        pl.when(pl.col("deduped")).then(pl.lit("pythia-deduped")).otherwise(pl.lit("pythia")).alias("family"),
        pl.col("size").replace_strict(PARAMS, return_dtype=pl.Int64).alias("params"),
        (pl.col("step") * BATCH_TOKENS).alias("tokens"),
        pl.lit(None, pl.Float64).alias("pretrain_loss"),
    ).sort("checkpoint")


def _results(rows: pl.DataFrame, tasks: dict[str, TaskInfo]) -> pl.DataFrame:
    return few_shot_results(rows, tasks, _name(), pl.lit("acc"), pl.col("fewshot"))
