"""The task registry: MMLU, GSM8K, CommonsenseQA, CoLA and synthetic tasks.

``get_task(name, data, **options)`` builds one; an unknown name raises a one-line
:class:`~emergence.errors.SpecError` with "did you mean ...?".
"""

from __future__ import annotations

import difflib
from typing import Any

from emergence.errors import SpecError
from harvest.tasks.base import MultipleChoiceTask, Task, TaskData
from harvest.tasks.cola import CoLA
from harvest.tasks.commonsense_qa import CommonsenseQA
from harvest.tasks.gsm8k import GSM8K
from harvest.tasks.mmlu import MMLU
from harvest.tasks.synthetic import SyntheticArithmetic, SyntheticCopy

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (MMLU, GSM8K, CommonsenseQA, CoLA, SyntheticArithmetic, SyntheticCopy)
}

__all__ = ["TASKS", "Task", "TaskData", "MultipleChoiceTask", "get_task", "check_task_name", "register_task"]


def check_task_name(name: str) -> str | None:
    """None if ``name`` is registered, else the error message (with near matches)."""
    if name in TASKS:
        return None
    near = difflib.get_close_matches(name, TASKS, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    return f"unknown task {name!r}{hint} (known: {', '.join(sorted(TASKS))})"


def get_task(name: str, data: TaskData | None = None, **options: Any) -> Task:
    problem = check_task_name(name)
    if problem:
        raise SpecError(problem)
    try:
        return TASKS[name](data, **options)
    except TypeError as err:
        raise SpecError(f"task {name!r}: {err}") from None


def register_task(cls: type[Task]) -> type[Task]:
    """Add a task class to the registry (usable as a decorator)."""
    TASKS[cls.name] = cls
    return cls


# The micro-ladder's synthetic tasks (ml_copy, ml_topic, ...) register themselves on import
# (harvest/microladder/tasks.py). A module import, not a from-import: importing that module first
# reaches this line while it is half-initialised, and it finishes registering itself.
import harvest.microladder.tasks  # noqa: E402,F401
