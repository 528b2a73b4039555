"""Per-task evaluation facts an import needs: number of items and chance level.

Public results files give accuracies, not counts. The fit's binomial likelihood needs
``n_items`` and the ground-truth elbow needs ``chance``; neither is ever made up here. Each
value comes, in this order, from a user task table (``--tasks FILE``), from the data itself
(importers say how: lm-eval's ``n-samples``, Pythia's standard errors, Gadre's
``eval_metadata.csv``), or from :data:`KNOWN_TASKS` below, and its source is written into the
folder's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskInfo:
    """Items in the evaluation split, chance accuracy, and where both numbers come from."""

    n_items: int | None
    chance: float
    source: str
    num_fewshot: int | None = None

    def to_json(self) -> dict:
        return {"n_items": self.n_items, "chance": self.chance, "source": self.source,
                "num_fewshot": self.num_fewshot}


def _known(n_items: int | None, chance: float, what: str) -> TaskInfo:
    return TaskInfo(n_items, chance, f"built-in table (fitting/importers/tasks.py): {what}")


# lm-eval task names. Item counts are the standard evaluation splits lm-eval uses; Pythia's
# standard errors reproduce every count here exactly (tests/fitting/test_importers.py checks it).
KNOWN_TASKS: dict[str, TaskInfo] = {
    "mmlu": _known(14042, 0.25, "MMLU test split, 14,042 four-choice questions over 57 subjects"),
    "arc_easy": _known(2376, 0.25, "ARC-Easy test split; most questions have 4 choices (a few 3 or 5), chance ~0.25"),
    "arc_challenge": _known(1172, 0.25, "ARC-Challenge test split; most questions have 4 choices, chance ~0.25"),
    "hellaswag": _known(10042, 0.25, "HellaSwag validation split, 4 endings"),
    "winogrande": _known(1267, 0.5, "WinoGrande (xl) validation split, 2 options"),
    "piqa": _known(1838, 0.5, "PIQA validation split, 2 solutions"),
    "sciq": _known(1000, 0.25, "SciQ test split, 4 choices"),
    "logiqa": _known(651, 0.25, "LogiQA test split, 4 choices"),
    "wsc": _known(104, 0.5, "SuperGLUE WSC validation split, binary"),
    "boolq": _known(3270, 0.5, "BoolQ validation split, yes/no"),
    "openbookqa": _known(500, 0.25, "OpenBookQA test split, 4 choices"),
    "commonsense_qa": _known(1221, 0.2, "CommonsenseQA validation split, 5 choices"),
    "lambada_openai": _known(5153, 0.0, "LAMBADA (OpenAI) test split, exact last word: chance ~0"),
    "gsm8k": _known(1319, 0.0, "GSM8K test split, exact match of a free number: chance ~0"),
    "humaneval": _known(164, 0.0, "HumanEval, 164 problems, pass@1 of generated code: chance ~0"),
}

# lm-eval subtask prefixes whose chance level is that of the parent benchmark.
SUBTASK_PREFIXES = {"mmlu_": "mmlu", "hendrycksTest-": "mmlu", "arc_": None}


def known_chance(task: str) -> TaskInfo | None:
    """The built-in facts for ``task`` or for the benchmark it is a subtask of (no n_items then)."""
    if task in KNOWN_TASKS:
        return KNOWN_TASKS[task]
    for prefix, parent in SUBTASK_PREFIXES.items():
        if parent and task.startswith(prefix):
            info = KNOWN_TASKS[parent]
            return TaskInfo(None, info.chance, f"{info.source} (chance of the parent benchmark {parent!r})")
    return None
