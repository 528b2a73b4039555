"""Pythia evaluations over training (EleutherAI/pythia ``evals/``) -> the data contract.

Reads ``pythia_v1_lm_eval_long.csv`` (one row per model, step, shot count, task and metric:
``model,step,num_fewshot,task,metric,value,stderr``) and ``pythia_models.csv`` (size, deduped
flag, tokens per step) from one folder.

Mapping (one checkpoint per model and training step):

    checkpoint     <- "EleutherAI/<model>@step<step>"   (the Hugging Face id and revision)
    family         <- "pythia" or "pythia-deduped"      (one training set per series)
    params         <- total parameters of the size, from the Pythia README table
    tokens         <- step x batch_tokens (2,097,152); step 0 has no tokens and is left out
    pretrain_loss  <- not recorded by Pythia: a --checkpoints table, or the opt-in proxy
                      --loss-proxy lambada = ln(LAMBADA perplexity, 0-shot, same step)
    results        <- rows with num_fewshot = --num-fewshot (default 5) and metric = --metric
                      (default acc); the 57 hendrycksTest-* subjects become one "mmlu" task
                      (item-weighted mean) unless --keep-subtasks
    n_items        <- from the data: lm-eval's stderr = sqrt(p(1-p)/(n-1)) gives
                      n = p(1-p)/stderr^2 + 1 (exact integers here; checked against the
                      built-in table in the tests); chance <- the built-in task table
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from emergence.errors import SourceError
from fitting.importers.base import Imported, ImportOptions
from fitting.importers.sources import check_proportion, csv_line, numeric_column, read_csv
from fitting.importers.tasks import TaskInfo, known_chance

LONG_CSV = "pythia_v1_lm_eval_long.csv"
MODELS_CSV = "pythia_models.csv"
MMLU_PREFIX = "hendrycksTest-"
DEFAULT_SHOTS = 5
DEFAULT_METRIC = "acc"
PROPORTIONS = ("acc", "acc_norm")
# Total parameters per size: github.com/EleutherAI/pythia README, "Total params" column.
PARAMS = {"14m": 14_067_712, "31m": 30_494_720, "70m": 70_426_624, "160m": 162_322_944,
          "410m": 405_334_016, "1b": 1_011_781_632, "1.4b": 1_414_647_808, "2.8b": 2_775_208_960,
          "6.9b": 6_857_302_016, "12b": 11_846_072_320}
LAMBADA_SOURCE = ("ln(lambada_openai perplexity, 0-shot, same checkpoint): mean nats per LAMBADA "
                  "target word, not the per-token held-out loss")


def read(path: Path, options: ImportOptions) -> Imported:
    long_path, models_path = _paths(path)
    long = _read_long(long_path)
    checkpoints = _checkpoints(long, _read_models(models_path), models_path)
    shots = DEFAULT_SHOTS if options.num_fewshot is None else options.num_fewshot
    metric = options.metric or DEFAULT_METRIC
    rows = _select(long, shots, metric, long_path)
    n_items, notes = _infer_n_items(long)
    if not options.keep_subtasks:
        rows, n_items = _aggregate_mmlu(rows, n_items, notes)
    tasks = _task_infos(rows, n_items, options, long_path)
    results = _results(rows, tasks, metric, shots)
    checkpoints = checkpoints.filter(pl.col("checkpoint").is_in(results["checkpoint"].unique().implode()))
    proxy = _lambada_proxy(long)
    metadata = {"files": [str(long_path), str(models_path)],
                "loss_in_source": "none (Pythia records no held-out loss)",
                "params_source": "Pythia README total parameters per size",
                "tasks": {t: {**i.to_json(), "metric": metric, "num_fewshot": shots} for t, i in sorted(tasks.items())},
                "notes": notes + ["step 0 checkpoints are left out (0 tokens)"]}
    return Imported(checkpoints, results, None, metadata, {"lambada": proxy})


# --------------------------------------------------------------------------- reading


def _paths(path: Path) -> tuple[Path, Path]:
    folder = path.parent if path.is_file() else path
    long_path = path if path.is_file() else folder / LONG_CSV
    if not long_path.is_file():
        raise SourceError(f"{folder}: no {LONG_CSV} here (the Pythia evals table)")
    models_path = folder / MODELS_CSV
    if not models_path.is_file():
        raise SourceError(f"{folder}: no {MODELS_CSV} next to {long_path.name} (sizes and tokens per step)")
    return long_path, models_path


def _read_long(path: Path) -> pl.DataFrame:
    df = read_csv(path, ["model", "step", "num_fewshot", "task", "metric", "value", "stderr"])
    df = df.with_columns(numeric_column(df, path, c) for c in ("step", "num_fewshot", "value", "stderr"))
    proportion = pl.when(pl.col("metric").is_in(PROPORTIONS)).then(pl.col("value"))
    check_proportion(df.select(proportion)["value"], path, "value")
    bad_step = (df["step"].is_null() | (df["step"] < 0) | (df["step"] != df["step"].round(0))).arg_true()
    if len(bad_step):
        row = int(bad_step[0])
        raise SourceError(f"{path}, {csv_line(row)}, column 'step': {df['step'][row]!r} is not a training step")
    return df.with_columns(pl.col("step").cast(pl.Int64), pl.col("num_fewshot").cast(pl.Int64))


def _read_models(path: Path) -> pl.DataFrame:
    df = read_csv(path, ["model", "size", "deduped", "batch_tokens"])
    df = df.with_columns(numeric_column(df, path, "batch_tokens").cast(pl.Int64),
                         numeric_column(df, path, "deduped").cast(pl.Int64))
    unknown = (~df["size"].cast(pl.String).is_in(list(PARAMS))).arg_true()
    if len(unknown):
        row = int(unknown[0])
        raise SourceError(f"{path}, {csv_line(row)}, column 'size': unknown Pythia size {df['size'][row]!r} "
                          f"(known: {', '.join(PARAMS)})")
    return df


def _checkpoints(long: pl.DataFrame, models: pl.DataFrame, models_path: Path) -> pl.DataFrame:
    runs = long.select("model", "step").unique().filter(pl.col("step") > 0)
    missing = runs.join(models, on="model", how="anti")
    if missing.height:
        raise SourceError(f"{models_path}: no row for model {missing['model'][0]!r}")
    params = pl.col("size").cast(pl.String).replace_strict(PARAMS, return_dtype=pl.Int64)
    return runs.join(models, on="model").select(
        _name().alias("checkpoint"),
        pl.when(pl.col("deduped") == 1).then(pl.lit("pythia-deduped")).otherwise(pl.lit("pythia")).alias("family"),
        params.alias("params"),
        (pl.col("step") * pl.col("batch_tokens")).alias("tokens"),
        pl.lit(None, pl.Float64).alias("pretrain_loss"),
    ).sort("checkpoint")


def _name() -> pl.Expr:
    return pl.format("EleutherAI/{}@step{}", pl.col("model"), pl.col("step"))


def _select(long: pl.DataFrame, shots: int, metric: str, path: Path) -> pl.DataFrame:
    if metric not in PROPORTIONS:
        raise SourceError(f"{path}: --metric {metric!r} is not an accuracy; choose one of {', '.join(PROPORTIONS)}")
    rows = long.filter(pl.col("step") > 0, pl.col("num_fewshot") == shots, pl.col("metric") == metric)
    if rows.is_empty():
        have_shots = sorted(long["num_fewshot"].unique().to_list())
        have_metrics = sorted(long["metric"].unique().to_list())
        raise SourceError(f"{path}: no rows with num_fewshot = {shots} and metric = {metric!r} "
                          f"(shots: {have_shots}; metrics: {have_metrics})")
    return rows


# --------------------------------------------------------------------------- item counts


def _infer_n_items(long: pl.DataFrame) -> tuple[dict[str, int], list[str]]:
    """n per task from p(1-p)/stderr^2 + 1 over every proportion row with 0 < p < 1."""
    usable = long.filter(pl.col("metric").is_in(PROPORTIONS), pl.col("value") > 0, pl.col("value") < 1,
                         pl.col("stderr") > 0)
    est = usable.with_columns(
        n=(pl.col("value") * (1 - pl.col("value")) / pl.col("stderr") ** 2 + 1).round(0).cast(pl.Int64))
    per_task = est.group_by("task").agg(pl.col("n").mode().min().alias("n"), pl.col("n").n_unique().alias("distinct"))
    notes = [f"task {t}: stderr implies {d} different item counts; used the most common, {n}"
             for t, n, d in per_task.iter_rows() if d > 1]
    return dict(zip(per_task["task"].to_list(), per_task["n"].to_list())), notes


def _aggregate_mmlu(rows: pl.DataFrame, n_items: dict[str, int], notes: list[str]):
    """The 57 subjects -> one "mmlu" row per checkpoint: item-weighted accuracy, summed items."""
    subjects = rows.filter(pl.col("task").str.starts_with(MMLU_PREFIX))
    if subjects.is_empty():
        return rows, n_items
    names = sorted(subjects["task"].unique().to_list())
    weights = pl.col("task").replace_strict(n_items, default=None, return_dtype=pl.Float64)
    mmlu = (subjects.with_columns(w=weights).group_by("model", "step")
            .agg((pl.col("value") * pl.col("w")).sum().alias("hits"), pl.col("w").sum().alias("n"),
                 pl.col("task").n_unique().alias("k"), pl.col("w").null_count().alias("unknown")))
    complete = mmlu.filter(pl.col("k") == len(names), pl.col("unknown") == 0)
    if complete.height < mmlu.height:
        notes.append(f"mmlu: {mmlu.height - complete.height} checkpoints lack some of the {len(names)} subjects; left out")
    total = int(complete["n"].max()) if complete.height else 0
    agg = complete.select("model", "step", pl.lit("mmlu").alias("task"), (pl.col("hits") / pl.col("n")).alias("value"))
    notes.append(f"mmlu: item-weighted mean of {len(names)} hendrycksTest subjects, {total} items")
    others = rows.filter(~pl.col("task").str.starts_with(MMLU_PREFIX)).select("model", "step", "task", "value")
    return pl.concat([others, agg]), {**n_items, "mmlu": total}


def _task_infos(rows: pl.DataFrame, n_items: dict[str, int], options: ImportOptions, path: Path) -> dict[str, TaskInfo]:
    user = options.user_tasks()
    infos = {}
    for task in sorted(rows["task"].unique().to_list()):
        known = known_chance(task)
        if task in user:
            infos[task] = user[task]
        elif known is None:
            raise SourceError(f"{path}: task {task!r} has no known chance level; give --tasks FILE "
                              f"with columns task,n_items,chance, or leave it out with --task")
        elif task in n_items:
            infos[task] = TaskInfo(n_items[task], known.chance,
                                   f"n_items inferred from stderr (n = p(1-p)/se^2 + 1); chance: {known.source}")
        elif known.n_items:
            infos[task] = known
        else:
            raise SourceError(f"{path}: task {task!r}: no item count in the data or the built-in table; give --tasks FILE")
    return infos


def _results(rows: pl.DataFrame, tasks: dict[str, TaskInfo], metric: str, shots: int) -> pl.DataFrame:
    return few_shot_results(rows, tasks, _name(), pl.lit(metric), pl.lit(shots, pl.Int64))


def few_shot_results(rows: pl.DataFrame, tasks: dict[str, TaskInfo], checkpoint: pl.Expr, source_metric: pl.Expr,
                     num_fewshot: pl.Expr) -> pl.DataFrame:
    """Few-shot accuracy rows of the contract from ``rows`` (``task``, ``value`` and what the
    expressions read), with each task's item count and chance (the Pythia importers)."""
    facts = pl.DataFrame({"task": list(tasks), "n_items": [t.n_items for t in tasks.values()],
                          "chance": [t.chance for t in tasks.values()]},
                         schema={"task": pl.String, "n_items": pl.Int64, "chance": pl.Float64})
    return rows.join(facts, on="task").select(
        checkpoint.alias("checkpoint"), "task", pl.lit("few_shot").alias("setting"),
        pl.lit(0, pl.Int64).alias("n_train"), pl.lit(0, pl.Int64).alias("subset_seed"),
        pl.lit("accuracy").alias("metric"), "value", "n_items", "chance",
        source_metric.alias("source_metric"), num_fewshot.cast(pl.Int64).alias("num_fewshot"),
    ).sort("checkpoint", "task")


# --------------------------------------------------------------------------- loss proxy


def _lambada_proxy(long: pl.DataFrame):
    ppl = (long.filter(pl.col("task") == "lambada_openai", pl.col("metric") == "ppl", pl.col("num_fewshot") == 0,
                       pl.col("value") > 0)
           .select(_name().alias("checkpoint"), pl.col("value").log().alias("proxy")))

    def proxy(ckpts: pl.DataFrame) -> tuple[pl.Series, str]:
        joined = ckpts.select("checkpoint").join(ppl, on="checkpoint", how="left", maintain_order="left")
        return joined["proxy"], LAMBADA_SOURCE

    return proxy
