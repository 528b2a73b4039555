"""The task registry: MMLU, GSM8K, CommonsenseQA, CoLA, synthetic tasks and the micro-ladder's.

``get_task(name, data, **options)`` builds one; an unknown name raises a one-line
:class:`~emergence.errors.SpecError` with "did you mean ...?". Like the engines
(:mod:`harvest.engines`), the registry is a table of names to ``"module:Class"``, imported when
a task is built: a new task is one entry here, or in a package's own table (the micro-ladder
lists its tasks in :data:`harvest.microladder.TASK_CLASSES`), and nothing is imported at startup.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from emergence.errors import SpecError
from harvest.microladder import TASK_CLASSES as MICROLADDER_TASK_CLASSES
from harvest.tasks.base import MultipleChoiceTask, Task
from harvest.tasks.data import TaskData

TASK_CLASSES: dict[str, str | type[Task]] = {
    "mmlu": "harvest.tasks.mmlu:MMLU",
    "gsm8k": "harvest.tasks.gsm8k:GSM8K",
    "commonsense_qa": "harvest.tasks.commonsense_qa:CommonsenseQA",
    "cola": "harvest.tasks.cola:CoLA",
    "lm_eval_yaml": "harvest.tasks.lmeval_yaml:LmEvalYaml",
    "synthetic_arithmetic": "harvest.tasks.synthetic:SyntheticArithmetic",
    "synthetic_copy": "harvest.tasks.synthetic:SyntheticCopy",
    **MICROLADDER_TASK_CLASSES,
}

__all__ = ["TASK_CLASSES", "Task", "TaskData", "MultipleChoiceTask", "get_task", "task_class",
           "check_task_name", "register_task"]


def check_task_name(name: str) -> str | None:
    """None if ``name`` is registered, else the error message (with near matches)."""
    if name in TASK_CLASSES:
        return None
    near = difflib.get_close_matches(name, TASK_CLASSES, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    return f"unknown task {name!r}{hint} (known: {', '.join(sorted(TASK_CLASSES))})"


def task_class(name: str) -> type[Task]:
    """The class registered as ``name`` (imported on first use)."""
    problem = check_task_name(name)
    if problem:
        raise SpecError(problem)
    entry = TASK_CLASSES[name]
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = TASK_CLASSES[name] = getattr(importlib.import_module(module), attr)
    if entry.name != name:
        raise SpecError(f"task registry: {name!r} names {entry.__name__}, whose name is {entry.name!r}")
    return entry


def get_task(name: str, data: TaskData | None = None, **options: Any) -> Task:
    cls = task_class(name)
    try:
        return cls(data, **options)
    except TypeError as err:
        raise SpecError(f"task {name!r}: {err}") from None


def register_task(cls: type[Task]) -> type[Task]:
    """Add a task class to the registry at run time (usable as a decorator)."""
    TASK_CLASSES[cls.name] = cls
    return cls
