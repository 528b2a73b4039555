"""Small user-supplied tables that complete what a public results file lacks.

``--checkpoints FILE`` (CSV or TOML), one row per checkpoint, keyed by the checkpoint name the
importer prints::

    checkpoint,family,params,tokens,pretrain_loss,flops
    EleutherAI/pythia-160m@step143000,pythia,162322944,299892736000,2.31,

or in TOML, one ``[[checkpoint]]`` table per row with the same keys. Only ``checkpoint`` is
required; every other column present overrides (or supplies) that value.

``--tasks FILE`` (CSV or TOML ``[[task]]``): ``task,n_items,chance`` overriding per-task facts.

``--finetunes FILE`` (lm-eval; CSV or TOML ``[[model]]``): which evaluated models are finetuned
checkpoints, keyed by the model lm-eval evaluated (a PEFT adapter's ``peft=`` path, else the
checkpoint name the importer prints)::

    model,checkpoint,n_train,subset_seed,task
    adapters/pythia-1.4b-step36000-mmlu-d256-s0,,256,0,mmlu_abstract_algebra

``n_train`` is required; ``subset_seed`` defaults to 0; ``checkpoint`` (the base checkpoint) is
required unless the model is a PEFT adapter; ``task`` keeps only that task of the model's results.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import polars as pl

from emergence.errors import SourceError
from fitting.importers.sources import (
    big_number, check_int64, check_positive, csv_line, numeric_column, read_csv, require_file,
)
from fitting.schema import shown_name, task_name_problem
from fitting.importers.tasks import TaskInfo

CHECKPOINT_TABLE_COLUMNS = {"family": "text", "params": "count", "tokens": "count",
                            "pretrain_loss": "positive", "flops": "positive"}
TASK_TABLE_COLUMNS = {"n_items": "count", "chance": "chance"}
FINETUNE_TABLE_COLUMNS = {"checkpoint": "text", "task": "text", "n_train": "count", "subset_seed": "index"}


@dataclass(frozen=True)
class UserTable:
    """A validated user table: ``key`` column plus typed value columns, and where it came from."""

    frame: pl.DataFrame
    path: Path
    line_of: Callable[[int], str] = csv_line


def read_checkpoint_table(path: Path) -> UserTable:
    return _read_table(path, "checkpoint", CHECKPOINT_TABLE_COLUMNS)


def read_task_table(path: Path) -> dict[str, TaskInfo]:
    table = _read_table(path, "task", TASK_TABLE_COLUMNS)
    for column in TASK_TABLE_COLUMNS:
        if column not in table.frame.columns or table.frame[column].null_count():
            raise SourceError(f"{path}: every row needs {column!r} (columns: task, n_items, chance)")
    for row, name in enumerate(table.frame["task"].to_list()):
        problem = task_name_problem(name)
        if problem is not None:
            raise SourceError(f"{path}, {table.line_of(row)}, column 'task': task name {shown_name(name)} {problem}")
    return {
        row["task"]: TaskInfo(int(row["n_items"]), float(row["chance"]), f"user task table {path}")
        for row in table.frame.iter_rows(named=True)
    }


def read_finetune_table(path: Path) -> dict[str, dict]:
    """``--finetunes``: model -> {"checkpoint", "task" (None when not given), "n_train", "subset_seed"}."""
    table = _read_table(path, "model", FINETUNE_TABLE_COLUMNS)
    frame = table.frame
    if "n_train" not in frame.columns or frame["n_train"].null_count():
        row = 0 if "n_train" not in frame.columns else int(frame["n_train"].is_null().arg_true()[0])
        raise SourceError(f"{path}, {table.line_of(row)}, column 'n_train': every model needs its data level "
                          f"(columns: model, n_train[, subset_seed, checkpoint, task])")
    out = {}
    for row in frame.iter_rows(named=True):
        seed = row.get("subset_seed")
        out[row["model"]] = {"checkpoint": row.get("checkpoint"), "task": row.get("task"),
                             "n_train": int(row["n_train"]), "subset_seed": 0 if seed is None else int(seed)}
    return out


def _read_table(path: Path, key: str, columns: dict[str, str]) -> UserTable:
    require_file(path, "table")
    frame, line_of = _read_toml(path, key, columns) if path.suffix.lower() == ".toml" else _read_csv(path, key)
    unknown = [c for c in frame.columns if c != key and c not in columns]
    if unknown:
        raise SourceError(f"{path}: unknown column {unknown[0]!r} (allowed: {key}, {', '.join(columns)})")
    frame = frame.with_columns(pl.col(key).cast(pl.String))
    _check_keys(frame, path, key, line_of)
    casts = [_typed(frame, path, name, kind, line_of) for name, kind in columns.items() if name in frame.columns]
    return UserTable(frame.with_columns(casts) if casts else frame, path, line_of)


def _read_csv(path: Path, key: str):
    return read_csv(path, [key]), csv_line


def _read_toml(path: Path, key: str, columns: dict[str, str]):
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SourceError(f"{path}: not valid TOML ({err})") from None
    except UnicodeDecodeError as err:
        raise SourceError(f"{path}: not UTF-8 text ({err.reason})") from None
    except RecursionError:
        raise SourceError(f"{path}: TOML nested too deeply to read") from None
    rows = doc.get(key)
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise SourceError(f"{path}: expected one or more [[{key}]] tables")
    if any(key not in r for r in rows):
        n = next(i for i, r in enumerate(rows) if key not in r)
        raise SourceError(f"{path}: [[{key}]] entry {n + 1} has no {key!r} key")
    for n, row in enumerate(rows):
        for name, value in row.items():
            _check_toml_value(path, f"[[{key}]] entry {n + 1}", name, value, "text" if name == key else columns.get(name))
    names = sorted({k for r in rows for k in r})
    try:
        frame = pl.DataFrame([{k: r.get(k) for k in names} for r in rows], infer_schema_length=None)
    except (pl.exceptions.PolarsError, TypeError) as err:
        raise SourceError(f"{path}: mixed value types in one column ({err})") from None
    return frame, lambda row: f"[[{key}]] entry {row + 1}"


def _check_toml_value(path: Path, where: str, name: str, value, kind: str | None) -> None:
    """A TOML value must be a plain string (text columns) or number (numeric columns)."""
    if kind is None:  # an unknown column: refused by name once the table is built
        return
    numeric = kind != "text"
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if numeric else isinstance(value, str)
    if not ok:
        raise SourceError(f"{path}: {where}, key {name!r}: {_toml_type(value)} {shown_name(value)}, expected "
                          f"{'a number' if numeric else 'a string'}")
    if numeric and isinstance(value, int) and not -2**63 <= value < 2**63:  # TOML integers are 64-bit
        raise SourceError(f"{path}: {where}, key {name!r}: {big_number(value)} is not a plausible count "
                          f"(it must be below 9.2e18)")


def _toml_type(value) -> str:
    names = {bool: "a boolean", list: "an array", dict: "a table", str: "a string", int: "the integer", float: "the number"}
    return names.get(type(value), f"a {type(value).__name__}")


def _check_keys(frame: pl.DataFrame, path: Path, key: str, line_of) -> None:
    nulls = frame[key].is_null().arg_true()
    if len(nulls):
        raise SourceError(f"{path}, {line_of(int(nulls[0]))}, column {key!r}: is empty")
    repeat = (~frame[key].is_first_distinct()).arg_true()
    if len(repeat):
        row = int(repeat[0])
        raise SourceError(f"{path}, {line_of(row)}, column {key!r}: duplicate {frame[key][row]!r}")


def _typed(frame: pl.DataFrame, path: Path, name: str, kind: str, line_of) -> pl.Series:
    if kind == "text":
        return frame[name].cast(pl.String)
    values = numeric_column(frame, path, name, line_of)
    if kind == "chance":  # 1 would leave nothing to emerge (and nothing below it to fit)
        bad = ((values < 0) | (values >= 1) | values.is_nan()).fill_null(False).arg_true()
        if len(bad):
            raise SourceError(f"{path}, {line_of(int(bad[0]))}, column {name!r}: {values[int(bad[0])]!r} "
                              f"outside [0, 1) (a chance level of 1 leaves nothing to emerge)")
        return values
    if kind == "index":  # a whole number >= 0 (a subset seed)
        bad = ((values < 0) | (values != values.round(0)) | values.is_nan() | values.is_infinite()
               | (values.abs() >= 2**63)).fill_null(False).arg_true()
        if len(bad):
            raise SourceError(f"{path}, {line_of(int(bad[0]))}, column {name!r}: {values[int(bad[0])]!r} "
                              f"must be a whole number >= 0")
        return values.cast(pl.Int64)
    check_positive(values, path, name, line_of)
    if kind == "count":
        check_int64(values, path, name, line_of)
        fractional = (values != values.round(0)).fill_null(False).arg_true()
        if len(fractional):
            row = int(fractional[0])
            raise SourceError(f"{path}, {line_of(row)}, column {name!r}: {values[row]!r} is not a whole number")
        return values.cast(pl.Int64)
    return values
