"""One task's results as aligned arrays: :class:`TaskData`, the input of every fit.

Built with ``TaskData.from_folder(folder, task)`` from a validated results folder
(:mod:`fitting.schema`) and subset with ``select_checkpoints``, ``select_levels``,
``drop_levels``, ``select_subset_seeds``, ``select_rows``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import polars as pl

from emergence.errors import FitError
from fitting.schema import FEW_SHOT, PROPORTION_METRICS, ResultsFolder


# The metric a fit takes when a task has several and none is chosen: accuracy, else exact match
# (GSM8K's strict match, before its flexible filter).
DEFAULT_METRICS = ("accuracy", "exact_match")


@dataclass(frozen=True)
class TaskData:
    """One task's evaluations as aligned arrays (N rows) plus its checkpoints (K)."""

    task: str
    metric: str
    chance: float
    # per row (N,)
    loss: np.ndarray
    n_train: np.ndarray  # int; 0 for few-shot rows
    few_shot: np.ndarray  # bool
    subset_seed: np.ndarray  # int
    value: np.ndarray
    n_items: np.ndarray  # int
    ckpt: np.ndarray  # int index into the per-checkpoint arrays below
    # per checkpoint (K,)
    checkpoints: tuple[str, ...]
    families: tuple[str, ...]
    ckpt_loss: np.ndarray
    ckpt_flops: np.ndarray

    # ----------------------------------------------------------- construction

    @classmethod
    def from_folder(cls, folder: ResultsFolder, task: str, metric: str | None = None) -> "TaskData":
        """Select ``task`` (and ``metric``; default accuracy, else exact_match, else the task's
        only metric: a harvested GSM8K has exact_match and exact_match_flexible).

        Rows are ordered by decreasing pretraining loss (weakest checkpoint first).
        """
        rows, metric = _task_rows(folder, task, metric)
        ckpts = rows.unique("checkpoint", keep="first", maintain_order=True)
        index = {name: i for i, name in enumerate(ckpts["checkpoint"].to_list())}
        col = lambda name, dtype: rows[name].to_numpy().astype(dtype)  # noqa: E731
        return cls(
            task=task, metric=metric, chance=float(np.median(col("chance", float))),
            loss=col("pretrain_loss", float), n_train=col("n_train", np.int64),
            few_shot=(rows["setting"] == FEW_SHOT).to_numpy(), subset_seed=col("subset_seed", np.int64),
            value=col("value", float), n_items=col("n_items", np.int64),
            ckpt=np.array([index[c] for c in rows["checkpoint"].to_list()], dtype=np.int64),
            checkpoints=tuple(index), families=tuple(ckpts["family"].to_list()),
            ckpt_loss=ckpts["pretrain_loss"].to_numpy().astype(float),
            ckpt_flops=ckpts["flops"].to_numpy().astype(float),
        )

    # ----------------------------------------------------------- properties

    @property
    def n_rows(self) -> int:
        return len(self.loss)

    @property
    def n_checkpoints(self) -> int:
        return len(self.checkpoints)

    @property
    def proportion(self) -> bool:
        """True for accuracy-like metrics (binomial likelihood allowed)."""
        return self.metric in PROPORTION_METRICS

    @property
    def successes(self) -> np.ndarray:
        """Correct items per row: round(value · n_items)."""
        return np.rint(self.value * self.n_items).astype(np.int64)

    @property
    def has_finetune(self) -> bool:
        return bool((~self.few_shot).any())

    @property
    def data_levels(self) -> list[int]:
        return sorted(set(self.n_train[~self.few_shot].tolist()))

    @property
    def subset_seeds(self) -> list[int]:
        return sorted(set(self.subset_seed[~self.few_shot].tolist()))

    @property
    def max_flops(self) -> float:
        return float(self.ckpt_flops.max())

    # ----------------------------------------------------------- subsets

    def select_rows(self, mask: np.ndarray) -> "TaskData":
        """Keep the rows where ``mask`` (N,) is True; checkpoints left without rows are dropped."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.n_rows,):
            raise ValueError(f"row mask must have shape ({self.n_rows},), got {mask.shape}")
        kept = np.unique(self.ckpt[mask])
        remap = np.full(self.n_checkpoints, -1)
        remap[kept] = np.arange(len(kept))
        per_row = {f: getattr(self, f)[mask] for f in _ROW_FIELDS}
        per_row["ckpt"] = remap[self.ckpt[mask]]
        return replace(
            self, **per_row, checkpoints=tuple(self.checkpoints[i] for i in kept),
            families=tuple(self.families[i] for i in kept),
            ckpt_loss=self.ckpt_loss[kept], ckpt_flops=self.ckpt_flops[kept],
        )

    def select_checkpoints(self, which: Sequence[str] | np.ndarray) -> "TaskData":
        """Keep checkpoints given by name or by a boolean mask over ``checkpoints`` (K,)."""
        which = np.asarray(which)
        if which.dtype == bool:
            if which.shape != (self.n_checkpoints,):
                raise ValueError(f"checkpoint mask must have shape ({self.n_checkpoints},)")
            keep = which
        else:
            unknown = set(which.tolist()) - set(self.checkpoints)
            if unknown:
                raise FitError(f"task {self.task!r} has no results for checkpoint(s) {sorted(unknown)}")
            keep = np.isin(np.array(self.checkpoints, dtype=object), which)
        return self.select_rows(keep[self.ckpt])

    def select_max_flops(self, max_flops: float) -> "TaskData":
        """Keep checkpoints with FLOPs <= ``max_flops`` (a backtest cutoff)."""
        return self.select_checkpoints(self.ckpt_flops <= max_flops)

    def select_levels(self, levels: Sequence[int]) -> "TaskData":
        """Keep finetune rows whose ``n_train`` is in ``levels`` (few-shot rows always kept)."""
        return self.select_rows(self.few_shot | np.isin(self.n_train, list(levels)))

    def drop_levels(self, levels: Sequence[int]) -> "TaskData":
        """Drop finetune rows whose ``n_train`` is in ``levels``."""
        return self.select_rows(self.few_shot | ~np.isin(self.n_train, list(levels)))

    def select_subset_seeds(self, seeds: Sequence[int]) -> "TaskData":
        """Keep finetune rows whose ``subset_seed`` is in ``seeds`` (few-shot rows always kept)."""
        return self.select_rows(self.few_shot | np.isin(self.subset_seed, list(seeds)))

    def few_shot_only(self) -> "TaskData":
        return self.select_rows(self.few_shot)


_ROW_FIELDS = ("loss", "n_train", "few_shot", "subset_seed", "value", "n_items")


def _task_rows(folder: ResultsFolder, task: str, metric: str | None) -> tuple[pl.DataFrame, str]:
    """One task's rows for one metric, joined with their checkpoints, weakest checkpoint first."""
    if task not in folder.tasks:
        near = difflib.get_close_matches(task, folder.tasks, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else f"; known tasks: {', '.join(folder.tasks)}"
        raise FitError(f"unknown task {task!r}{hint}")
    rows = folder.joined().filter(pl.col("task") == task)
    metric = _choose_metric(rows["metric"].unique().sort().to_list(), task, metric)
    order = ["pretrain_loss", "checkpoint", "setting", "n_train", "subset_seed"]
    rows = rows.filter(pl.col("metric") == metric).sort(order, descending=[True, False, False, False, False])
    return rows, metric


def _choose_metric(metrics: list[str], task: str, metric: str | None) -> str:
    if metric is not None:
        if metric not in metrics:
            raise FitError(f"task {task!r} has no rows with metric {metric!r} (it has: {', '.join(metrics)})")
        return metric
    if len(metrics) == 1:
        return metrics[0]
    for preferred in DEFAULT_METRICS:
        if preferred in metrics:
            return preferred
    raise FitError(f"task {task!r} has several metrics ({', '.join(metrics)}); choose one with --metric")
