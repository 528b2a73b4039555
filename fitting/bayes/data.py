"""The observations of a hierarchical fit: several tasks' item counts as aligned 1-D arrays."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from emergence.errors import FitError
from fitting.schema import ResultsFolder


@dataclass(frozen=True)
class BayesData:
    """The observations of several tasks, aligned 1-D arrays of length N (one per evaluation)."""

    tasks: tuple[str, ...]
    levels: tuple[str, ...]  # "few_shot", then finetuning sizes as text, ascending
    level_values: np.ndarray  # (n_levels,) D per level; D_0 for few_shot
    curves: tuple[str, ...]  # "task|n_train|subset_seed" of each finetuning subset
    task_idx: np.ndarray  # (N,) int
    level_idx: np.ndarray  # (N,) int
    curve_idx: np.ndarray  # (N,) int, -1 for few-shot rows
    loss: np.ndarray  # (N,) pretraining loss, nats
    few_shot: np.ndarray  # (N,) bool
    correct: np.ndarray  # (N,) int items correct
    n_items: np.ndarray  # (N,) int
    chance: np.ndarray  # (n_tasks,)
    sources: tuple = ()  # the per-task fitting.data.TaskData it was built from

    @classmethod
    def from_tasks(cls, sources: Sequence, d0: float = 1.0) -> "BayesData":
        """Stack several tasks' ``fitting.data.TaskData`` (one hierarchical fit)."""
        return _from_tasks(sources, d0)

    @property
    def n_obs(self) -> int:
        return int(self.loss.shape[0])

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for arr in (self.task_idx, self.level_idx, self.curve_idx, self.loss, self.correct, self.n_items):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update("|".join(self.tasks + self.levels).encode())
        return h.hexdigest()[:16]

    def task_loss_range(self) -> tuple[np.ndarray, np.ndarray]:
        """(n_tasks,) midpoint and width of each task's checkpoint losses."""
        lo = np.array([self.loss[self.task_idx == t].min() for t in range(len(self.tasks))])
        hi = np.array([self.loss[self.task_idx == t].max() for t in range(len(self.tasks))])
        return (lo + hi) / 2, hi - lo

    def subset(self, tasks: Sequence[str]) -> "BayesData":
        """The same observations restricted to ``tasks`` (e.g. one task fitted alone)."""
        return _from_tasks([td for td in self.sources if td.task in set(tasks)], self.level_values[0])


def bayes_data(folder: ResultsFolder, tasks: Sequence[str] | None = None, d0: float = 1.0,
               metric: str | None = None) -> BayesData:
    """Item counts per evaluation for ``tasks`` (all tasks when None), validated for the model."""
    from fitting.data import TaskData

    names = list(tasks) if tasks else folder.tasks
    return BayesData.from_tasks([TaskData.from_folder(folder, t, metric) for t in names], d0)


def with_counts(data: BayesData, correct: np.ndarray) -> BayesData:
    """The same design with other item counts (N,) (kept consistent in the per-task sources)."""
    correct = np.asarray(correct, dtype=np.int64)
    sources = tuple(dataclasses.replace(td, value=correct[data.task_idx == t] / td.n_items)
                    for t, td in enumerate(data.sources))
    return dataclasses.replace(data, correct=correct, sources=sources)


def _check_task(td) -> None:
    if not td.proportion:
        raise FitError(f"task {td.task!r}: metric {td.metric!r} has no item counts; the Bayesian "
                       "fit needs accuracy-like metrics (binomial likelihood)")
    if not td.has_finetune:
        raise FitError(f"task {td.task!r}: no finetune results; the emergence law needs finetuning "
                       "data levels (few-shot results alone give only the ground-truth elbow)")


def _from_tasks(sources: Sequence, d0: float) -> BayesData:
    for td in sources:
        _check_task(td)
    tasks = tuple(td.task for td in sources)
    if len(set(tasks)) != len(tasks):
        raise FitError(f"a task is listed twice: {', '.join(tasks)}")
    sizes = sorted({int(n) for td in sources for n in td.data_levels})
    level_of = {n: i + 1 for i, n in enumerate(sizes)}
    curves, curve_idx, level_idx, task_idx = [], [], [], []
    for t, td in enumerate(sources):
        for n, s, few in zip(td.n_train, td.subset_seed, td.few_shot):
            level_idx.append(0 if few else level_of[int(n)])
            task_idx.append(t)
            key = f"{td.task}|{int(n)}|{int(s)}"
            if not few and key not in curves:
                curves.append(key)
            curve_idx.append(-1 if few else curves.index(key))
    cat = lambda f: np.concatenate([f(td) for td in sources])  # noqa: E731
    return BayesData(
        tasks=tasks, levels=("few_shot",) + tuple(str(n) for n in sizes),
        level_values=np.array([d0] + sizes, dtype=float), curves=tuple(curves),
        task_idx=np.array(task_idx), level_idx=np.array(level_idx), curve_idx=np.array(curve_idx),
        loss=cat(lambda td: td.loss).astype(float), few_shot=cat(lambda td: td.few_shot).astype(bool),
        correct=cat(lambda td: td.successes), n_items=cat(lambda td: td.n_items),
        chance=np.array([td.chance for td in sources], dtype=float), sources=tuple(sources),
    )
