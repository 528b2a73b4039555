"""What an importer is: a function ``read(path, options) -> Imported`` (see
:mod:`fitting.importers.registry`, which completes and writes what importers return).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import polars as pl

from fitting.importers.tables import read_task_table
from fitting.importers.tasks import TaskInfo

# A loss proxy: checkpoints table -> (loss per row, nullable; one-line description).
LossProxy = Callable[[pl.DataFrame], tuple[pl.Series, str]]


@dataclass(frozen=True)
class ImportOptions:
    """Everything an import may be told beyond the source path (one object, passed whole)."""

    checkpoints: Path | None = None  # user checkpoint table (CSV/TOML)
    tasks: Path | None = None  # user task table: task, n_items, chance
    finetunes: Path | None = None  # lm-eval: model -> base checkpoint, n_train, subset_seed (finetune rows)
    loss_proxy: str | None = None  # name of a documented proxy, opt-in only
    loss_column: str | None = None  # gadre: which validation loss is pretrain_loss
    num_fewshot: int | None = None  # pythia: which shot count to import
    metric: str | None = None  # the source metric to import (acc, acc_norm, exact_match, ...)
    only_tasks: tuple[str, ...] = ()  # import only these tasks
    keep_subtasks: bool = False  # pythia: keep the 57 MMLU subjects instead of one "mmlu"
    family: str | None = None  # default family for checkpoints the source gives none
    params: int | None = None  # single-checkpoint defaults (lm-eval)
    tokens: int | None = None
    pretrain_loss: float | None = None
    overwrite: bool = False

    def user_tasks(self) -> dict[str, TaskInfo]:
        return read_task_table(self.tasks) if self.tasks else {}


@dataclass
class Imported:
    """One importer's output before completion (see module docstring)."""

    checkpoints: pl.DataFrame
    results: pl.DataFrame
    items: pl.DataFrame | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    loss_proxies: dict[str, LossProxy] = field(default_factory=dict)


Importer = Callable[[Path, ImportOptions], Imported]
