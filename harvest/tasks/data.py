"""Read a task's split: from local files in the hub's column format, or from the hub.

Local data is a folder holding ``<split>.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` (or the
hub's ``<split>-00000-of-00001.parquet`` naming), or a file path containing ``{split}``.
List and nested columns (MMLU ``choices``, CommonsenseQA ``choices.text``) need jsonl, json or
parquet; csv suits flat tables such as CoLA. Hub datasets are read with ``datasets``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from emergence.errors import SpecError

Doc = dict[str, Any]  # one row, in the hub dataset's columns


@dataclass(frozen=True)
class TaskData:
    """Where a task reads its rows: a local folder/file (the hub's columns) or a hub dataset."""

    path: str | None = None
    dataset: str | None = None
    config: str | None = None

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def read_split(task: str, split: str, data: TaskData, hub_dataset: str | None, hub_config: str | None) -> list[Doc]:
    if data.path is not None:
        return list(_read_local(task, split, data.path))
    name = data.dataset or hub_dataset
    if name is None:
        raise SpecError(f"task {task!r}: no data given (set 'data' to a local folder or 'dataset')")
    return list(_read_hub(task, split, name, data.config or hub_config))


def split_file(task: str, split: str, path: str) -> Path:
    """The local file holding ``split``."""
    p = Path(path.replace("{split}", split))
    if p.is_file():
        return p
    if p.is_dir():
        for suffix in SUFFIXES:
            hits = sorted(p.glob(f"{split}{suffix}")) or sorted(p.glob(f"{split}-*{suffix}"))
            if hits:
                return hits[0]
    raise SpecError(f"task {task!r}: no {split!r} split in {path} (looked for {split}.jsonl/.json/.parquet/.csv)")


@lru_cache(maxsize=64)
def _read_local(task: str, split: str, path: str) -> tuple[Doc, ...]:
    import polars as pl

    file = split_file(task, split, path)
    readers = {".jsonl": pl.read_ndjson, ".parquet": pl.read_parquet, ".csv": pl.read_csv,
               ".json": _read_json}
    try:
        frame = readers[file.suffix](file)
    except Exception as err:  # polars raises several error types for malformed files
        raise SpecError(f"task {task!r}: cannot read {file} ({type(err).__name__}: {err})") from None
    return tuple(frame.to_dicts())


def _read_json(file: Path):
    import polars as pl

    try:
        return pl.read_json(file)
    except Exception:  # the hub's ".json" files are often JSON lines
        return pl.read_ndjson(file)


@lru_cache(maxsize=64)
def _read_hub(task: str, split: str, name: str, config: str | None) -> tuple[Doc, ...]:
    try:
        import datasets
    except ImportError:
        from emergence.errors import MissingExtraError

        raise MissingExtraError("datasets", "harvest") from None
    try:
        rows = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # network, missing split, unknown dataset
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SpecError(f"task {task!r}: cannot load dataset {name!r} ({config}) split {split!r}: {reason}") from None
    return tuple(rows)
