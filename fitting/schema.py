"""The data contract between harvest (GPU boxes) and fitting (laptops): Parquet tables.

A results folder holds up to three tables. Version ``CONTRACT_VERSION`` is written into each
file's Parquet key-value metadata (key ``emergence``, a JSON object that also carries
provenance) and checked on read.

``checkpoints.parquet``, one row per checkpoint

    checkpoint     str     unique name
    family         str     one pretraining run or model series
    params         int64   parameters
    tokens         int64   pretraining tokens seen
    pretrain_loss  float64 nats/token on one fixed held-out set (shared by all compared families)
    flops          float64 optional; when absent or null it is 6 * params * tokens

``results.parquet``, one row per evaluation

    checkpoint  str     must exist in checkpoints
    task        str     non-empty, at most 200 characters, no control characters (newlines, tabs)
    setting     str     "few_shot" or "finetune"
    n_train     int64   finetuning examples (0 for few_shot, > 0 for finetune)
    subset_seed int64   which random subset of that size (0 for few_shot)
    metric      str     "accuracy" by default
    value       float64 the metric; accuracy must lie in [0, 1], mcc in [-1, 1]
    n_items     int64   evaluation items (> 0)
    chance      float64 the metric's chance level for the task, in [0, 1)

    key: (checkpoint, task, setting, n_train, subset_seed, metric) is unique.

``items.parquet`` (optional), one row per evaluated item

    checkpoint, task, setting, n_train, subset_seed  as in results
    item_id          str
    prediction       str          the chosen answer (choice index as text, or generated answer)
    correct          bool
    choice_logprobs  list[float64] log-probability of every choice (null for generation tasks)

Extra columns are allowed and kept. Everything is validated here, once, at the boundary: a
violation raises :class:`~emergence.errors.ContractError` naming file, column, row and value.

Size: one cohesive thing, the results contract and its validation at the boundary.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from emergence.atomic import atomic_path, replace_folder
from emergence.errors import ContractError

CONTRACT_VERSION = "1.0"
METADATA_KEY = b"emergence"

CHECKPOINTS_FILE = "checkpoints.parquet"
RESULTS_FILE = "results.parquet"
ITEMS_FILE = "items.parquet"
RESULT_TABLES = (CHECKPOINTS_FILE, RESULTS_FILE, ITEMS_FILE)  # written together, one generation

FEW_SHOT = "few_shot"
FINETUNE = "finetune"
SETTINGS = (FEW_SHOT, FINETUNE)

# Column name -> polars dtype; "optional" columns may be absent.
CHECKPOINT_COLUMNS: dict[str, pl.DataType] = {
    "checkpoint": pl.String,
    "family": pl.String,
    "params": pl.Int64,
    "tokens": pl.Int64,
    "pretrain_loss": pl.Float64,
    "flops": pl.Float64,
}
CHECKPOINT_OPTIONAL = {"flops"}

RESULT_COLUMNS: dict[str, pl.DataType] = {
    "checkpoint": pl.String,
    "task": pl.String,
    "setting": pl.String,
    "n_train": pl.Int64,
    "subset_seed": pl.Int64,
    "metric": pl.String,
    "value": pl.Float64,
    "n_items": pl.Int64,
    "chance": pl.Float64,
}
RESULT_KEY = ["checkpoint", "task", "setting", "n_train", "subset_seed", "metric"]

ITEM_COLUMNS: dict[str, pl.DataType] = {
    "checkpoint": pl.String,
    "task": pl.String,
    "setting": pl.String,
    "n_train": pl.Int64,
    "subset_seed": pl.Int64,
    "item_id": pl.String,
    "prediction": pl.String,
    "correct": pl.Boolean,
    "choice_logprobs": pl.List(pl.Float64),
}
ITEM_KEY = ["checkpoint", "task", "setting", "n_train", "subset_seed", "item_id"]

# Metrics that are proportions of items and so must lie in [0, 1] (binomial likelihood).
PROPORTION_METRICS = {"accuracy", "exact_match", "exact_match_flexible", "acc", "acc_norm"}
# Other metrics with a known range (fitted by least squares: --likelihood gaussian). Matthews
# correlation (CoLA's metric in GLUE and lm-eval) lies in [-1, 1] with chance 0.
METRIC_RANGES = {"mcc": (-1.0, 1.0)}


@dataclass(frozen=True)
class ResultsFolder:
    """A validated results folder: the tables of the contract plus their metadata."""

    checkpoints: pl.DataFrame
    results: pl.DataFrame
    items: pl.DataFrame | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return sorted(self.results["task"].unique().to_list())

    def joined(self) -> pl.DataFrame:
        """Results with each checkpoint's family, params, tokens, pretrain_loss and flops."""
        return self.results.join(self.checkpoints, on="checkpoint", how="left")

    @property
    def families(self) -> list[str]:
        return sorted(self.checkpoints["family"].unique().to_list())

    def select_family(self, family: str) -> "ResultsFolder":
        """The checkpoints of one pretraining run (model family) and their results only."""
        if family not in self.families:
            raise ContractError(f"checkpoints.parquet: no family {family!r}; the folder has "
                                f"{', '.join(map(repr, self.families))}")
        ckpts = self.checkpoints.filter(pl.col("family") == family)
        keep = pl.col("checkpoint").is_in(ckpts["checkpoint"].implode())
        items = None if self.items is None else self.items.filter(keep)
        return replace(self, checkpoints=ckpts, results=self.results.filter(keep), items=items)


# --------------------------------------------------------------------------- validation


def _fail(file: str, column: str | None, row: int | None, message: str) -> ContractError:
    where = file
    if column is not None:
        where += f": column {column!r}"
    if row is not None:
        where += f", row {row}"
    return ContractError(f"{where}: {message}")


def _coerce(df: pl.DataFrame, file: str, columns: dict[str, pl.DataType], optional=()) -> pl.DataFrame:
    """Check presence and types; widen ints and floats losslessly; refuse anything else."""
    missing = [c for c in columns if c not in df.columns and c not in optional]
    if missing:
        raise _fail(file, missing[0], None, f"missing (required columns: {', '.join(columns)})")
    casts = []
    for name, want in columns.items():
        if name not in df.columns:
            continue
        have = df.schema[name]
        if have == want or have == pl.Null:
            casts.append(pl.col(name).cast(want))
        elif want == pl.Int64 and have.is_integer():
            casts.append(pl.col(name).cast(pl.Int64))
        elif want == pl.Float64 and (have.is_float() or have.is_integer()):
            casts.append(pl.col(name).cast(pl.Float64))
        elif want == pl.String and have == pl.Categorical:
            casts.append(pl.col(name).cast(pl.String))
        elif isinstance(want, pl.List) and isinstance(have, pl.List) and (
            have.inner.is_float() or have.inner.is_integer()
        ):
            casts.append(pl.col(name).cast(want))
        else:
            raise _fail(file, name, None, f"has type {have}, expected {want}")
    return df.with_columns(casts)


def _first_row(df: pl.DataFrame, bad: pl.Expr) -> int | None:
    idx = df.with_row_index("__row").filter(bad).select("__row")
    return None if idx.is_empty() else int(idx.item(0, 0))


def _check(df: pl.DataFrame, file: str, column: str, bad: pl.Expr, what: str) -> None:
    row = _first_row(df, bad)
    if row is not None:
        value = df[column][row]
        raise _fail(file, column, row, f"{what} (got {value!r})")


def _check_no_nulls(df: pl.DataFrame, file: str, columns, except_=()) -> None:
    for name in columns:
        if name in except_ or name not in df.columns:
            continue
        _check(df, file, name, pl.col(name).is_null(), "is null")
        if df.schema[name] == pl.Float64:
            _check(df, file, name, pl.col(name).is_nan() | pl.col(name).is_infinite(), "is not finite")


def _check_unique(df: pl.DataFrame, file: str, key: list[str]) -> None:
    dup = df.select(key).is_duplicated()
    if dup.any():
        row = int(dup.arg_true()[0])
        values = {k: df[k][row] for k in key}
        raise _fail(file, None, row, f"duplicate key {values}")


def validate_checkpoints(df: pl.DataFrame, file: str = CHECKPOINTS_FILE) -> pl.DataFrame:
    """Validate and normalise a checkpoints table; fill ``flops`` as 6·N·D where missing."""
    df = _coerce(df, file, CHECKPOINT_COLUMNS, CHECKPOINT_OPTIONAL)
    if "flops" not in df.columns:
        df = df.with_columns(pl.lit(None, pl.Float64).alias("flops"))
    _check_no_nulls(df, file, CHECKPOINT_COLUMNS, except_={"flops"})
    _check(df, file, "params", pl.col("params") <= 0, "must be positive")
    _check(df, file, "tokens", pl.col("tokens") <= 0, "must be positive")
    _check(df, file, "pretrain_loss", pl.col("pretrain_loss") <= 0, "must be a positive loss in nats")
    _check(df, file, "flops", pl.col("flops").is_not_null() & ~(pl.col("flops").is_finite() & (pl.col("flops") > 0)),
           "must be a positive finite number")
    _check_unique(df, file, ["checkpoint"])
    return df.with_columns(
        pl.col("flops").fill_null(6.0 * pl.col("params").cast(pl.Float64) * pl.col("tokens"))
    )


def validate_results(
    df: pl.DataFrame, checkpoints: pl.DataFrame | None = None, file: str = RESULTS_FILE
) -> pl.DataFrame:
    """Validate and normalise a results table (and its references to ``checkpoints``)."""
    if "metric" not in df.columns:
        df = df.with_columns(pl.lit("accuracy").alias("metric"))
    df = _coerce(df, file, RESULT_COLUMNS)
    _check_no_nulls(df, file, RESULT_COLUMNS)
    _check(df, file, "setting", ~pl.col("setting").is_in(SETTINGS), f"must be one of {SETTINGS}")
    few = pl.col("setting") == FEW_SHOT
    _check(df, file, "n_train", few & (pl.col("n_train") != 0), "must be 0 for few_shot rows")
    _check(df, file, "n_train", ~few & (pl.col("n_train") <= 0), "must be positive for finetune rows")
    _check(df, file, "subset_seed", few & (pl.col("subset_seed") != 0), "must be 0 for few_shot rows")
    _check(df, file, "n_items", pl.col("n_items") <= 0, "must be positive")
    proportion = pl.col("metric").is_in(PROPORTION_METRICS)
    _check(df, file, "value", proportion & ((pl.col("value") < 0) | (pl.col("value") > 1)),
           "accuracy must lie in [0, 1]")
    for metric, (low, high) in METRIC_RANGES.items():
        _check(df, file, "value", (pl.col("metric") == metric) & ((pl.col("value") < low) | (pl.col("value") > high)),
               f"{metric} must lie in [{low:g}, {high:g}]")
    _check(df, file, "chance", (pl.col("chance") < 0) | (pl.col("chance") >= 1),
           "must lie in [0, 1) (a chance level of 1 leaves nothing to emerge)")
    _check_task_names(df, file)
    _check_unique(df, file, RESULT_KEY)
    if checkpoints is not None:
        known = checkpoints["checkpoint"].implode()
        _check(df, file, "checkpoint", ~pl.col("checkpoint").is_in(known),
               f"names a checkpoint that is not in {CHECKPOINTS_FILE}")
    return df


TASK_NAME_MAX = 200


def task_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be a task name (empty, longer than TASK_NAME_MAX, control characters), or None."""
    if not isinstance(name, str) or not name.strip():
        return "is empty"
    if len(name) > TASK_NAME_MAX:
        return f"is {len(name)} characters long (at most {TASK_NAME_MAX})"
    if any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in name):
        return "contains a control character (a newline, tab, ...)"
    return None


def shown_name(name: Any, limit: int = 40) -> str:
    """``repr(name)`` cut to about ``limit`` characters, for one-line messages."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_task_names(df: pl.DataFrame, file: str) -> None:
    for name in df["task"].unique(maintain_order=True).to_list():
        problem = task_name_problem(name)
        if problem is not None:
            row = _first_row(df, pl.col("task") == name)
            raise _fail(file, "task", row, f"task name {shown_name(name)} {problem}")


def validate_items(df: pl.DataFrame, file: str = ITEMS_FILE) -> pl.DataFrame:
    """Validate and normalise an items table."""
    df = _coerce(df, file, ITEM_COLUMNS, optional={"choice_logprobs"})
    _check_no_nulls(df, file, ITEM_COLUMNS, except_={"choice_logprobs", "prediction"})
    _check_unique(df, file, ITEM_KEY)
    return df


# --------------------------------------------------------------------------- reading


def _read_table(path: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    if not path.is_file():
        raise ContractError(f"{path}: file not found")
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise ContractError(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from None
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    meta: dict[str, Any] = {}
    if raw is not None:
        try:
            meta = json.loads(raw)
        except (ValueError, RecursionError):  # JSONDecodeError, bad UTF-8, nesting too deep
            raise ContractError(f"{path}: metadata key 'emergence' is not JSON") from None
        if not isinstance(meta, dict):
            raise ContractError(f"{path}: metadata key 'emergence' holds a JSON {type(meta).__name__}, "
                                f"expected an object")
        version = str(meta.get("contract_version", CONTRACT_VERSION))
        if version.split(".")[0] != CONTRACT_VERSION.split(".")[0]:
            raise ContractError(
                f"{path}: written with data contract {version}, this toolkit reads "
                f"{CONTRACT_VERSION}; re-export it with a matching version"
            )
    return pl.from_arrow(table), meta


def load_results(folder: str | os.PathLike, *, items: bool = False) -> ResultsFolder:
    """Read and validate a results folder (``items=True`` also loads ``items.parquet``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ContractError(f"{folder}: results folder not found")
    ckpt_df, ckpt_meta = _read_table(folder / CHECKPOINTS_FILE)
    res_df, res_meta = _read_table(folder / RESULTS_FILE)
    ckpts = validate_checkpoints(ckpt_df, str(folder / CHECKPOINTS_FILE))
    results = validate_results(res_df, ckpts, str(folder / RESULTS_FILE))
    if results.is_empty():
        raise ContractError(f"{folder / RESULTS_FILE}: has no rows; there is nothing to fit")
    item_df, metas = None, {CHECKPOINTS_FILE: ckpt_meta, RESULTS_FILE: res_meta}
    if items and (folder / ITEMS_FILE).is_file():
        raw_items, metas[ITEMS_FILE] = _read_table(folder / ITEMS_FILE)
        item_df = validate_items(raw_items, str(folder / ITEMS_FILE))
    _check_one_generation(folder, metas)
    return ResultsFolder(ckpts, results, item_df, {**ckpt_meta, **res_meta})


def _check_one_generation(folder: Path, metas: dict[str, dict[str, Any]]) -> None:
    """The tables of a folder come from one write (tables written before generation ids pass)."""
    stamped = {name: meta["generation"] for name, meta in metas.items() if "generation" in meta}
    if len(set(stamped.values())) > 1:
        shown = ", ".join(f"{name} {gen[:8]}" for name, gen in stamped.items())
        raise ContractError(f"{folder}: its tables come from different writes ({shown}); an interrupted "
                            "write? Write the folder again (import/simulate with --overwrite, or rerun the harvest)")


# --------------------------------------------------------------------------- writing


def write_parquet_atomic(df: pl.DataFrame, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
    """Write ``df`` to ``path`` so that a reader sees the old file or the new one, never half.

    The contract version and ``metadata`` go into the Parquet key-value metadata.
    """
    meta = {"contract_version": CONTRACT_VERSION, **(metadata or {})}
    table = df.to_arrow()
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(meta, default=str).encode()}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_results(
    folder: str | os.PathLike,
    checkpoints: pl.DataFrame,
    results: pl.DataFrame,
    items: pl.DataFrame | None = None,
    metadata: dict[str, Any] | None = None,
    *,
    whole_folder: bool = True,
) -> ResultsFolder:
    """Validate the tables, then write them into ``folder``: all old or all new.

    Every table carries one ``generation`` id in its metadata, and :func:`load_results`
    refuses a folder whose tables disagree. ``whole_folder`` (the default) builds the new
    folder beside the old one and swaps it in atomically (:func:`emergence.atomic.replace_folder`;
    the folder's other files are kept). ``whole_folder=False`` writes the tables in place, one
    atomic file at a time, for a folder that other processes write into meanwhile (a harvest's
    parts): a kill between two tables leaves a folder that loading refuses, never a silent mix.
    """
    folder = Path(folder)
    ckpts = validate_checkpoints(checkpoints)
    res = validate_results(results, ckpts)
    its = validate_items(items) if items is not None else None
    metadata = {**(metadata or {}), "generation": uuid.uuid4().hex}
    tables = [(ckpts, CHECKPOINTS_FILE), (res, RESULTS_FILE)] + ([(its, ITEMS_FILE)] if its is not None else [])

    def write_into(target: Path) -> None:
        for df, name in tables:
            write_parquet_atomic(df, target / name, metadata)

    if whole_folder:
        with replace_folder(folder, drop=RESULT_TABLES) as staging:
            write_into(staging)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        if its is None:
            (folder / ITEMS_FILE).unlink(missing_ok=True)  # an old items table must not stay beside
        write_into(folder)
    return ResultsFolder(ckpts, res, its, {"contract_version": CONTRACT_VERSION, **(metadata or {})})
