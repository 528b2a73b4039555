"""Observational Scaling Laws score tables (github.com/ryoungj/ObsScaling) -> the data contract.

Reads ``base_llm_benchmark_eval.csv`` (``Model, Model Family, Model Size (B), Pretraining
Data Size (T), FLOPs (1E21)`` and Open LLM Leaderboard v1 scores) and, when the path is the
folder, joins the scores of ``base_llm_emergent_capability_eval.csv`` on ``Model``. A single
CSV with the same metadata columns can be given instead of the folder.

Mapping (one checkpoint per model):

    checkpoint     <- Model                         (Hugging Face id)
    family         <- Model Family
    params         <- Model Size (B) x 1e9
    tokens         <- Pretraining Data Size (T) x 1e12   (models without it are left out)
    flops          <- FLOPs (1E21) x 1e21           (6 N D when blank)
    pretrain_loss  <- not in the source: a --checkpoints table, or the opt-in proxy
                      --loss-proxy chinchilla (a function of N and D only)
    results        <- each score column in SCORE_COLUMNS below, setting few_shot, with the
                      item count, chance and shot count given there (a --tasks table adds or
                      overrides columns, keyed by task name or source column name)
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from emergence.errors import SourceError
from fitting.importers.base import Imported, ImportOptions
from fitting.importers.sources import check_int64, check_proportion, csv_line, numeric_column, read_csv
from fitting.importers.tasks import KNOWN_TASKS, TaskInfo

BENCHMARK_CSV = "base_llm_benchmark_eval.csv"
EXTRA_CSVS = ("base_llm_emergent_capability_eval.csv",)
META = {"Model": "checkpoint", "Model Family": "family", "Model Size (B)": "params",
        "Pretraining Data Size (T)": "tokens", "FLOPs (1E21)": "flops"}
SCALE = {"params": 1e9, "tokens": 1e12, "flops": 1e21}


def _known(task: str, shots: int, metric: str) -> tuple[str, TaskInfo, str]:
    info = KNOWN_TASKS[task]
    return task, TaskInfo(info.n_items, info.chance, info.source, shots), metric


def _counted(task: str, n: int, chance: float, shots: int, metric: str, what: str) -> tuple[str, TaskInfo, str]:
    source = (f"built-in ObsScaling table: {what}; n_items = the smallest count for which every "
              f"published value x n is a whole number (checked in tests)")
    return task, TaskInfo(n, chance, source, shots), metric


# Source column -> (task, facts, source metric). Leaderboard v1 protocol per the ObsScaling README.
SCORE_COLUMNS: dict[str, tuple[str, TaskInfo, str]] = {
    "MMLU": _known("mmlu", 5, "acc (leaderboard: mean of the 57 subject accuracies)"),
    "ARC-C": _known("arc_challenge", 25, "acc_norm"),
    "HellaSwag": _known("hellaswag", 10, "acc_norm"),
    "Winograd": _known("winogrande", 5, "acc"),
    "GSM8K": _known("gsm8k", 5, "exact_match"),
    "HumanEval": _known("humaneval", 0, "pass@1"),
    "arithmetic_3ds_2_acc": _counted("arithmetic_3ds", 2000, 0.0, 2, "acc", "3-digit subtraction, exact answer"),
    "arithmetic_3da_2_acc": _counted("arithmetic_3da", 2000, 0.0, 2, "acc", "3-digit addition, exact answer"),
    "arithmetic_2dm_2_acc": _counted("arithmetic_2dm", 2000, 0.0, 2, "acc", "2-digit multiplication, exact answer"),
    "arithmetic_2da_2_acc": _counted("arithmetic_2da", 2000, 0.0, 2, "acc", "2-digit addition, exact answer"),
    "parsinlu_qa_2_acc": _counted("parsinlu_qa", 1050, 0.25, 2, "acc", "ParsiNLU QA, 4 choices"),
    "word_unscrambling_2_exact_match": _counted("word_unscrambling", 2000, 0.0, 2, "exact_match",
                                                "word unscrambling, exact answer"),
}
# Columns left out on purpose, and why (a --tasks row naming the column brings one back).
SKIPPED_COLUMNS = {
    "TruthfulQA": "mc2 is a probability-mass score, not a proportion of items",
    "XWinograd": "a mean over languages whose item counts the source does not give",
    "ipa_transliterate_2_exact_match": "no item count consistent with the published values",
    "ipa_transliterate_2_bleu": "BLEU is not an accuracy",
}


def read(path: Path, options: ImportOptions) -> Imported:
    files = _files(path)
    wide = _read_scores(files)
    checkpoints, skipped = _checkpoints(wide)
    columns, notes = _score_columns(wide, options)
    results = _results(wide, columns).filter(pl.col("checkpoint").is_in(checkpoints["checkpoint"].implode()))
    metadata = {"files": [str(f) for f in files], "loss_in_source": "none (ObsScaling records no loss)",
                "tasks": {task: {**info.to_json(), "source_column": col, "metric": metric}
                          for col, (task, info, metric) in columns.items()},
                "skipped_models": skipped, "notes": notes}
    return Imported(checkpoints, results, None, metadata)


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    main = path / BENCHMARK_CSV
    if not main.is_file():
        raise SourceError(f"{path}: no {BENCHMARK_CSV} here (the ObsScaling base-model table)")
    return [main] + [path / name for name in EXTRA_CSVS if (path / name).is_file()]


def _read_scores(files: list[Path]) -> pl.DataFrame:
    wide = _read_one(files[0], list(META))
    for extra in files[1:]:
        scores = _read_one(extra, ["Model"])
        wide = wide.join(scores.select("Model", *[c for c in scores.columns if c not in wide.columns]),
                         on="Model", how="left")
    return wide


def _read_one(path: Path, required: list[str]) -> pl.DataFrame:
    df = read_csv(path, required)
    repeat = (~df["Model"].is_first_distinct()).arg_true()
    if len(repeat):
        row = int(repeat[0])
        raise SourceError(f"{path}, {csv_line(row)}, column 'Model': duplicate {df['Model'][row]!r}")
    numbers = [c for c in df.columns if c not in ("Model", "Model Family")]
    df = df.with_columns(numeric_column(df, path, c) for c in numbers)
    for src in (c for c, dst in META.items() if dst in ("params", "tokens") and c in df.columns):
        check_int64(df[src], path, src, scale=SCALE[META[src]])
    for column in (c for c in numbers if c in SCORE_COLUMNS):
        check_proportion(df[column], path, column)
    return df


def _checkpoints(wide: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    ckpts = wide.select(
        pl.col("Model").alias("checkpoint"), pl.col("Model Family").alias("family"),
        *[(pl.col(src) * SCALE[dst]).alias(dst) for src, dst in META.items() if dst in SCALE],
    )
    complete = pl.col("params").is_not_null() & pl.col("tokens").is_not_null()
    skipped = ckpts.filter(~complete)["checkpoint"].to_list()
    ckpts = ckpts.filter(complete).with_columns(
        pl.col("params").round(0).cast(pl.Int64), pl.col("tokens").round(0).cast(pl.Int64),
        pl.lit(None, pl.Float64).alias("pretrain_loss"))
    return ckpts, skipped


def _score_columns(wide: pl.DataFrame, options: ImportOptions):
    user = options.user_tasks()
    columns, notes = {}, []
    for column in wide.columns:
        if column in META:
            continue
        task, info, metric = SCORE_COLUMNS.get(column, (column, None, "as published"))
        if task in user or column in user:
            info = user.get(task) or user[column]
        if info is None:
            why = SKIPPED_COLUMNS.get(column, "no item count or chance level known")
            notes.append(f"column {column!r} left out: {why} (add it with a --tasks row)")
            continue
        columns[column] = (task, info, metric)
    return columns, notes


def _results(wide: pl.DataFrame, columns: dict[str, tuple[str, TaskInfo, str]]) -> pl.DataFrame:
    parts = [
        wide.select(pl.col("Model").alias("checkpoint"), pl.col(col).alias("value")).drop_nulls("value").with_columns(
            task=pl.lit(task), n_items=pl.lit(info.n_items, pl.Int64), chance=pl.lit(info.chance),
            num_fewshot=pl.lit(info.num_fewshot, pl.Int64), source_metric=pl.lit(metric))
        for col, (task, info, metric) in columns.items()
    ]
    return pl.concat(parts).with_columns(
        setting=pl.lit("few_shot"), n_train=pl.lit(0, pl.Int64), subset_seed=pl.lit(0, pl.Int64),
        metric=pl.lit("accuracy")).sort("checkpoint", "task")
