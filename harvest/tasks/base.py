"""What every task provides: documents, a versioned prompt format, choices or a checker.

Prompt construction follows lm-evaluation-harness (``../shared/notes/lm-eval-parity.md``)::

    context(doc)    = prefix(doc)
                      + Σ over shots s: doc_to_text(s) + " " + target(s) + "\\n\\n"
                      + doc_to_text(doc)
    continuation_i  = " " + choices(doc)[i]          # multiple choice
    generation      = greedy completion of context    # generation tasks, cut at ``stop``

A task's ``prompt_format`` string documents its template; ``format_hash`` is the sha256 of
name, version and that template, so a changed prompt is a new version, never a silent change.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from harvest.tasks.data import Doc, TaskData, read_split

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"

class Task(ABC):
    """A benchmark: rows in the hub's format, a prompt format, and how an answer is scored."""

    name: ClassVar[str]
    version: ClassVar[str]
    kind: ClassVar[str] = "multiple_choice"  # or "generation"
    prompt_format: ClassVar[str]
    eval_split: ClassVar[str] = "test"
    fewshot_split: ClassVar[str] = "train"
    default_shots: ClassVar[int] = 0
    hub_dataset: ClassVar[str | None] = None
    hub_config: ClassVar[str | None] = None
    id_column: ClassVar[str | None] = None
    # generation tasks
    stop: ClassVar[tuple[str, ...]] = ()
    max_new_tokens: ClassVar[int] = 256

    def __init__(self, data: TaskData | None = None, **options: Any):
        if options:
            raise TypeError(f"unknown option(s) {', '.join(sorted(options))}")
        self.data = data or TaskData()

    # --- rows
    def docs(self, split: str) -> list[Doc]:
        """All rows of a split, in file order."""
        return read_split(self.name, split, self.data, self.hub_dataset, self.hub_config)

    def doc_id(self, doc: Doc, split: str, index: int) -> str:
        if self.id_column and doc.get(self.id_column) is not None:
            return str(doc[self.id_column])
        return f"{split}-{index}"

    # --- prompt
    def prefix(self, doc: Doc) -> str:
        """Text before the shots (a description); empty by default."""
        return ""

    @abstractmethod
    def doc_to_text(self, doc: Doc) -> str:
        """The question part of the prompt, ending where the answer starts."""

    @abstractmethod
    def target(self, doc: Doc) -> str:
        """The answer text (without the leading delimiter) used in shots and training pairs."""

    def fewshot_pool(self, pool: list[Doc], doc: Doc) -> list[Doc]:
        """The rows shots are drawn from for ``doc`` (all of them by default)."""
        return pool

    # --- scoring
    @property
    @abstractmethod
    def chance(self) -> float:
        """Accuracy of a uniform random guess."""

    def choices(self, doc: Doc) -> list[str]:
        raise NotImplementedError(f"{self.name} is a generation task")

    def gold(self, doc: Doc) -> int:
        raise NotImplementedError(f"{self.name} is a generation task")

    def gold_label(self, doc: Doc) -> str:
        """The correct answer as stored in items.parquet (choice index, or the gold answer)."""
        return str(self.gold(doc))

    def check_generation(self, doc: Doc, text: str) -> tuple[str, bool]:
        """(extracted prediction, correct) for a generated completion."""
        raise NotImplementedError(f"{self.name} is a multiple-choice task")

    # --- provenance
    @classmethod
    def format_hash(cls) -> str:
        text = "\x1f".join([cls.name, cls.version, cls.prompt_format, TARGET_DELIMITER, FEWSHOT_DELIMITER])
        return hashlib.sha256(text.encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        """What identifies this task's data and prompt (goes into unit keys and metadata)."""
        return {"task": self.name, "version": self.version, "format_hash": self.format_hash(),
                "data": vars(self.data)}

    # --- finetuning
    def train_examples(self, split: str | None = None) -> list[tuple[str, str]]:
        """(prompt, target) pairs for finetuning: zero-shot prompt and " " + answer."""
        rows = self.docs(split or self.fewshot_split)
        return [(self.prefix(d) + self.doc_to_text(d), TARGET_DELIMITER + self.target(d)) for d in rows]


class MultipleChoiceTask(Task):
    """Multiple choice scored by the log-likelihood of each choice; target = the gold choice."""

    def target(self, doc: Doc) -> str:
        return self.choices(doc)[self.gold(doc)]

    @property
    def chance(self) -> float:
        return 1.0 / self.n_choices

    n_choices: ClassVar[int] = 4
