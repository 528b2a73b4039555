"""What every task provides: documents, a versioned prompt format, choices or a checker.

Prompt construction follows lm-evaluation-harness (``../shared/notes/lm-eval-parity.md``)::

    context(doc)    = prefix(doc)
                      + Σ over shots s: doc_to_text(s) + " " + target(s) + "\\n\\n"
                      + doc_to_text(doc)
    continuation_i  = " " + choices(doc)[i]          # multiple choice
    generation      = greedy completion of context    # generation tasks, cut at ``stop``

A task's ``prompt_format`` string documents its template; ``format_hash`` is the sha256 of
name, version and that template, so a changed prompt is a new version, never a silent change.

Each task declares its data: ``eval_split`` (scored), ``fewshot_split`` (where shots come from)
and ``train_split`` (what the finetuning sweep trains on), each overridable per task in the spec
(``eval_split``, ``fewshot_split``, ``train_split``); ``splits`` and ``split_sizes`` name the hub
dataset's splits and their row counts, so a typo or a finetuning subset larger than its split is
refused when the spec is read. ``metrics()`` lists what it reports (:mod:`harvest.tasks.metrics`).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from harvest.tasks.data import Doc, TaskData, read_split, split_file
from harvest.tasks.metrics import Metric, accuracy_metric

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
    train_split: ClassVar[str] = "train"  # finetuning examples
    splits: ClassVar[tuple[str, ...] | None] = None  # the hub dataset's splits (None: unknown)
    split_sizes: ClassVar[dict[str, int]] = {}  # rows per split of the hub dataset
    lm_eval_task: ClassVar[str | None] = None  # lm-evaluation-harness's counterpart
    default_shots: ClassVar[int] = 0
    fewshot_draws_extra: ClassVar[bool] = False  # draw k + 1 shots, as lm-eval does (fewshot.py)
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
        """(extracted prediction, correct) for a generated completion: the primary metric's."""
        return self.score_generation(doc, text)[self.metrics()[0].name]

    def score_generation(self, doc: Doc, text: str) -> dict[str, tuple[str, bool]]:
        """Per metric: (extracted prediction, correct) for a generated completion."""
        raise NotImplementedError(f"{self.name} is a multiple-choice task")

    def metrics(self) -> tuple[Metric, ...]:
        """What this task reports, primary metric first (default: accuracy at ``chance``)."""
        return (accuracy_metric(self.chance),)

    # --- data
    def split_size(self, split: str) -> int | None:
        """Rows in ``split`` when known without a download: local files are counted, the
        default hub dataset's sizes are declared; None otherwise."""
        if self.data.path is not None:
            return len(self.docs(split))
        if self.data.dataset is None and self.data.config is None:
            return self.split_sizes.get(split)
        return None

    def check_subset(self, n_train: int, split: str | None = None) -> None:
        """Refuse (one line) a finetuning subset larger than its split, when the size is known."""
        split = split or self.train_split
        size = self.split_size(split)
        if size is not None and n_train > size:
            from emergence.errors import SpecError

            raise SpecError(f"task {self.name!r}: a finetuning subset of {n_train} examples is larger than "
                            f"its train split {split!r} ({size} examples)")

    def check_split(self, split: str) -> str | None:
        """None if ``split`` can exist, else why not (checked when the spec is read)."""
        if self.data.path is not None:
            try:
                split_file(self.name, split, self.data.path)
            except Exception as err:  # SpecError: no such file
                return str(err)
            return None
        if self.splits is None or self.data.dataset is not None or split in self.splits:
            return None
        return f"task {self.name!r}: unknown split {split!r} (the hub dataset has {', '.join(self.splits)})"

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
        """(prompt, target) pairs for finetuning (default: ``train_split``): the zero-shot
        prompt and " " + answer. The end-of-sequence token is the tokenizer's, added when the
        pair is encoded (:func:`harvest.tasks.training.encode_training_pair`)."""
        rows = self.docs(split or self.train_split)
        return [(self.prefix(d) + self.doc_to_text(d), TARGET_DELIMITER + self.target(d)) for d in rows]


class MultipleChoiceTask(Task):
    """Multiple choice scored by the log-likelihood of each choice; target = the gold choice."""

    def target(self, doc: Doc) -> str:
        return self.choices(doc)[self.gold(doc)]

    @property
    def chance(self) -> float:
        return 1.0 / self.n_choices

    n_choices: ClassVar[int] = 4
