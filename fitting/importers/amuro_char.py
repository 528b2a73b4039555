"""Amuro & Char (Sun & Dredze 2024): base and finetuned OLMo-1B checkpoints -> the data contract.

Reads ``all_perf_table.csv`` (``,model_id,eval dataset,Performance,std``; one row per model
and evaluation set) from github.com/KaiserWhoLearns/AmuroCharPTFTRelationship
``results/analysis/``. ``model_id`` encodes what was evaluated:

    olmo1b_checkpoint-<step>_original[_hf][_<k>shots]           base checkpoint at <step>
    olmo1b_hf_ckpt<step>_<task>_<e>epoch_<lr>[_<k>shots]        <step> finetuned on <task>
    olmo1b_original_hf[...] / olmo1b_hf_main_<task>_...          the final ("main") model

(no ``_<k>shots`` suffix: evaluated 0-shot). The importer keeps one shot count
(``--num-fewshot``, default 4: the only one every checkpoint has, base and finetuned).

Mapping (one checkpoint per pretraining step):

    checkpoint     <- "allenai/OLMo-1B@step<step>"   (finetuned rows point at the base they
                      started from; the HF revision is named step<step>-tokens<N>B)
    family         <- "olmo-1b"
    params         <- 1,176,764,416 (OLMo-1B config: 16 layers, d_model 2048, SwiGLU MLP
                      8192, vocabulary 50,304, tied embeddings, no biases)
    tokens         <- step x 4,194,304 (2048 sequences x 2048 tokens, the data README)
    pretrain_loss  <- not in the source: a --checkpoints table, or --loss-proxy chinchilla
    results        <- base checkpoints: setting few_shot on the in-task evaluation sets;
                      finetuned checkpoints: setting finetune on the evaluation sets of the
                      task they were finetuned on (mnli -> mnli_matched and mnli_mismatched,
                      paws -> paws, socialiqa -> socialiqa), n_train = the task's full
                      training-set size (one data level), subset_seed 0
    n_items, chance <- TASKS below (published evaluation-split sizes; chance per task)

Left out, each counted in the metadata notes: the "main" model (its pretraining step is not
in the data), cross-task evaluations (a model finetuned on one task scored on another), the
prompt-format variants (``_instruct``, ``_inputoutput``), tasks that are not accuracies
(xsum, cnn, xlsum: ROUGE) or have no finetuned counterpart (rte, qqp, sciq, ...), the Tulu
instruction-tuned models, and model ids that do not follow the pattern above.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from emergence.errors import SourceError
from fitting.importers.base import Imported, ImportOptions
from fitting.importers.sources import check_proportion, csv_line, numeric_column, read_csv
from fitting.importers.tasks import TaskInfo

PERF_CSV = "all_perf_table.csv"
FAMILY = "olmo-1b"
HF_ID = "allenai/OLMo-1B"
# 16 x (4 x 2048^2 attention + 3 x 2048 x 8192 SwiGLU) + 50,304 x 2048 tied embedding
PARAMS = 1_176_764_416
TOKENS_PER_STEP = 2048 * 2048  # data README: 2048 sequences of 2048 tokens per step
DEFAULT_SHOTS = 4
METRIC = "accuracy"

# Finetuning task -> (training-set size, evaluation sets scored for it).
# Training-set sizes are the published train splits; the data README says "full training set".
FINETUNE_TASKS: dict[str, tuple[int, tuple[str, ...], str]] = {
    "mnli": (392_702, ("mnli_matched", "mnli_mismatched"), "MultiNLI train split, 392,702 pairs"),
    "paws": (49_401, ("paws",), "PAWS-Wiki labeled (final) train split, 49,401 pairs"),
    "socialiqa": (33_410, ("socialiqa",), "Social IQa train split, 33,410 questions"),
}
NOT_ACCURACY = {"xsum": "ROUGE-style summarisation score, not a proportion of items"}

_SRC = "built-in Amuro & Char table (fitting/importers/amuro_char.py)"
# Evaluation set -> facts. n_items: the published evaluation split (assumed: the source gives
# no counts; its std column matches these sizes for mnli and paws, see docs/importers.md).
TASKS: dict[str, TaskInfo] = {
    "mnli_matched": TaskInfo(9815, 1 / 3, f"{_SRC}: MultiNLI validation_matched, 9,815 pairs (assumed); "
                                          "3 labels, chance 1/3 (majority label ~0.354)"),
    "mnli_mismatched": TaskInfo(9832, 1 / 3, f"{_SRC}: MultiNLI validation_mismatched, 9,832 pairs (assumed); "
                                             "3 labels, chance 1/3 (majority label ~0.352)"),
    "paws": TaskInfo(8000, 0.558, f"{_SRC}: PAWS-Wiki test split, 8,000 pairs (assumed); chance = the "
                                  "majority label's share, 0.558 (not a paraphrase), which the base "
                                  "model's constant answer scores"),
    "socialiqa": TaskInfo(1954, 1 / 3, f"{_SRC}: Social IQa dev split, 1,954 questions (assumed); 3 answers, "
                                       "chance 1/3 (answers are generated and matched, so base scores "
                                       "fall below it)"),
}

_BASE = re.compile(r"^olmo1b_checkpoint-(?P<step>\d+)_original(?:_hf)?(?:_(?P<shots>\d+)shots)?$")
_FINETUNED = re.compile(r"^olmo1b_hf_(?:ckpt(?P<step>\d+)|main)_(?P<task>[a-z]+)_(?P<epochs>\d+)epoch_"
                        r"(?P<lr>[0-9.]+e-?\d+)(?:_(?P<shots>\d+)shots)?$")
_MAIN = re.compile(r"^olmo1b_original_hf(?:_(?P<shots>\d+)shots)?$")


def read(path: Path, options: ImportOptions) -> Imported:
    csv_path = _path(path)
    table = _read_table(csv_path)
    shots = DEFAULT_SHOTS if options.num_fewshot is None else options.num_fewshot
    if options.metric not in (None, "acc", METRIC):
        raise SourceError(f"{csv_path}: --metric {options.metric!r}: this source has one metric per evaluation "
                          "set (accuracy for the imported tasks); leave --metric out")
    parsed, notes = _parse_ids(table)
    rows, more = _select(parsed, shots, csv_path)
    notes += more
    tasks = _task_infos(rows, options)
    results = _results(rows, tasks)
    steps = sorted(set(results["step"].to_list()))
    checkpoints = pl.DataFrame({
        "checkpoint": [_name(s) for s in steps], "family": [FAMILY] * len(steps),
        "params": [PARAMS] * len(steps), "tokens": [s * TOKENS_PER_STEP for s in steps],
        "pretrain_loss": [None] * len(steps)},
        schema={"checkpoint": pl.String, "family": pl.String, "params": pl.Int64, "tokens": pl.Int64,
                "pretrain_loss": pl.Float64})
    levels = {t: n for t, (n, _, _) in FINETUNE_TASKS.items()}
    metadata = {
        "files": [str(csv_path)],
        "loss_in_source": "none (the Amuro & Char tables record no held-out loss)",
        "params_source": "OLMo-1B config (16 layers, d_model 2048, MLP 8192, vocab 50,304, tied embeddings)",
        "tokens_source": "step x 4,194,304 tokens (2048 x 2048 per step, data README)",
        "num_fewshot": shots,
        "n_train": {t: {"n_train": n, "source": FINETUNE_TASKS[t][2] + " (published size; the source says "
                                                                      "'full training set')"}
                    for t, n in levels.items()},
        "tasks": {t: {**i.to_json(), "num_fewshot": shots} for t, i in sorted(tasks.items())},
        "few_shot_only": False,
        "data_levels": 1,
        "note": ("few-shot (base) and finetune rows at ONE data level per task (the full training set): "
                 "the ground-truth few-shot elbow and the finetuned elbow can be fitted, but how the "
                 "elbow moves with the amount of finetuning data (E(D)) is not identified"),
        "notes": notes,
    }
    return Imported(checkpoints, results.drop("step"), None, metadata)


# --------------------------------------------------------------------------- reading


def _path(path: Path) -> Path:
    csv_path = path if path.is_file() else path / PERF_CSV
    if not csv_path.is_file():
        raise SourceError(f"{path}: no {PERF_CSV} here (the Amuro & Char results/analysis table)")
    return csv_path


def _read_table(path: Path) -> pl.DataFrame:
    df = read_csv(path, ["model_id", "eval dataset", "Performance"])
    df = df.with_columns(numeric_column(df, path, "Performance").alias("Performance"))
    for column in ("model_id", "eval dataset"):
        bad = df[column].is_null().arg_true()
        if len(bad):
            row = int(bad[0])
            raise SourceError(f"{path}, {csv_line(row)}, column {column!r}: empty")
    df = df.with_row_index("row").with_columns(pl.col("model_id").cast(pl.String),
                                               pl.col("eval dataset").cast(pl.String))
    df = df.with_columns(pl.lit(str(path)).alias("file"))
    return df


def _parse_ids(df: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """One record per row: kind (base/finetune/main/unknown), step, finetuned task, lr, shots."""
    records = []
    for model_id in df["model_id"].to_list():
        base, ft, main = _BASE.match(model_id), _FINETUNED.match(model_id), _MAIN.match(model_id)
        if base:
            records.append(("base", int(base["step"]), None, None, None, int(base["shots"] or 0)))
        elif ft and ft["step"] is not None:
            records.append(("finetune", int(ft["step"]), ft["task"], ft["lr"], int(ft["epochs"]),
                            int(ft["shots"] or 0)))
        elif ft or main:
            records.append(("main", None, None, None, None, None))
        else:
            records.append(("unknown", None, None, None, None, None))
    parsed = pl.DataFrame(records, orient="row", schema={"kind": pl.String, "step": pl.Int64, "ft_task": pl.String,
                                                          "lr": pl.String, "epochs": pl.Int64, "shots": pl.Int64})
    df = pl.concat([df, parsed], how="horizontal")
    notes = []
    unknown = sorted(df.filter(pl.col("kind") == "unknown")["model_id"].unique().to_list())
    if unknown:
        notes.append(f"{len(unknown)} model ids not in the documented pattern, left out: {', '.join(unknown)}")
    main = df.filter(pl.col("kind") == "main")
    if main.height:
        notes.append(f"the final 'main' model (olmo1b_original_hf, olmo1b_hf_main_*) is left out: its "
                     f"pretraining step is not in the data ({main.height} rows)")
    return df, notes


def _select(df: pl.DataFrame, shots: int, path: Path) -> tuple[pl.DataFrame, list[str]]:
    notes = []
    in_task = {ev: t for t, (_, evals, _) in FINETUNE_TASKS.items() for ev in evals}
    usable = df.filter(pl.col("kind").is_in(["base", "finetune"]))
    if usable.is_empty():
        raise SourceError(f"{path}: no row whose model_id names a base or finetuned OLMo-1B checkpoint "
                          "(olmo1b_checkpoint-<step>_original..., olmo1b_hf_ckpt<step>_<task>_...)")
    have = sorted(usable["shots"].unique().to_list())
    usable = usable.filter(pl.col("shots") == shots)
    if usable.is_empty():
        raise SourceError(f"{path}: no rows evaluated with {shots} shots (--num-fewshot; the data have {have})")
    evals = usable.filter(pl.col("eval dataset").is_in(list(in_task)))
    other = sorted(set(usable["eval dataset"].to_list()) - set(in_task))
    if other:
        notes.append(f"evaluation sets without a finetuned counterpart, prompt variants or non-accuracy scores, "
                     f"left out: {', '.join(other)}")
    ft_tasks = set(usable.filter(pl.col("kind") == "finetune")["ft_task"].to_list())
    for task in sorted(ft_tasks - set(FINETUNE_TASKS)):
        why = NOT_ACCURACY.get(task, "not a task with an accuracy evaluation set here (instruction tuning)")
        notes.append(f"models finetuned on {task!r} left out: {why}")
    own = pl.col("eval dataset").replace_strict(in_task, default=None)
    cross = evals.filter(pl.col("kind") == "finetune", pl.col("ft_task") != own)
    if cross.height:
        notes.append(f"{cross.height} cross-task rows (finetuned on one task, scored on another) left out")
    rows = evals.filter((pl.col("kind") == "base") | (pl.col("ft_task") == own))
    check_proportion(_by_row(df, rows, "Performance"), path, "Performance")
    rows = _one_learning_rate(rows, notes)
    rows = rows.with_columns(pl.col("eval dataset").alias("task"))
    dup = rows.filter(pl.struct("step", "task", "kind").is_duplicated())
    if dup.height:
        row = int(dup["row"][1])
        raise SourceError(f"{path}, {csv_line(row)}, column 'model_id': a second {dup['kind'][1]} result for "
                          f"step {dup['step'][1]} on {dup['task'][1]!r} ({dup['model_id'][1]!r})")
    return rows, notes


def _by_row(df: pl.DataFrame, rows: pl.DataFrame, column: str) -> pl.Series:
    """``column`` over every source row, null outside ``rows`` (so errors name the file's line)."""
    keep = df["row"].is_in(rows["row"].implode())
    return df.select(pl.when(keep).then(pl.col(column)))[column]


def _one_learning_rate(rows: pl.DataFrame, notes: list[str]) -> pl.DataFrame:
    """Where one step was finetuned at several learning rates, keep the task's usual one."""
    ft = rows.filter(pl.col("kind") == "finetune")
    if ft.is_empty():
        return rows
    usual = ft.group_by("ft_task").agg(pl.col("lr").mode().sort().first().alias("usual"))
    clash = ft.filter(pl.struct("step", "eval dataset").is_duplicated())
    if clash.is_empty():
        return rows
    drop = clash.join(usual, on="ft_task").filter(pl.col("lr") != pl.col("usual"))
    notes.append(f"{drop.height} finetuned rows at a second learning rate left out (kept each task's usual one)")
    return rows.filter(~pl.col("row").is_in(drop["row"].implode()))


def _task_infos(rows: pl.DataFrame, options: ImportOptions) -> dict[str, TaskInfo]:
    user = options.user_tasks()
    return {t: user.get(t, TASKS[t]) for t in sorted(rows["task"].unique().to_list())}


def _name(step: int) -> str:
    return f"{HF_ID}@step{step}"


def _results(rows: pl.DataFrame, tasks: dict[str, TaskInfo]) -> pl.DataFrame:
    facts = pl.DataFrame({"task": list(tasks), "n_items": [t.n_items for t in tasks.values()],
                          "chance": [t.chance for t in tasks.values()]},
                         schema={"task": pl.String, "n_items": pl.Int64, "chance": pl.Float64})
    n_train = {t: n for t, (n, _, _) in FINETUNE_TASKS.items()}
    finetune = pl.col("kind") == "finetune"
    return rows.join(facts, on="task").select(
        pl.format(f"{HF_ID}@step{{}}", pl.col("step")).alias("checkpoint"), "task",
        pl.when(finetune).then(pl.lit("finetune")).otherwise(pl.lit("few_shot")).alias("setting"),
        pl.when(finetune).then(pl.col("ft_task").replace_strict(n_train, default=0, return_dtype=pl.Int64))
        .otherwise(pl.lit(0, pl.Int64)).alias("n_train"),
        pl.lit(0, pl.Int64).alias("subset_seed"), pl.lit(METRIC).alias("metric"),
        pl.col("Performance").alias("value"), "n_items", "chance",
        pl.lit("accuracy").alias("source_metric"), pl.col("shots").alias("num_fewshot"),
        pl.col("model_id").alias("source_model"), pl.col("lr").alias("finetune_lr"),
        pl.col("epochs").alias("finetune_epochs"), "step",
    ).sort("checkpoint", "task", "setting")
