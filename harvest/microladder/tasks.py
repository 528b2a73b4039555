"""The micro-ladder tasks as harvest tasks: 4-way multiple choice over corpus episodes.

Registry names: ``ml_copy``, ``ml_recall``, ``ml_arith``, ``ml_reverse``, ``ml_topic``,
``ml_topic_short`` (see
:mod:`harvest.microladder.corpus` for the episode formats). Each row is one episode split where
the answer starts::

    doc_to_text   "# w5 w9 w2 # w5"        the episode up to the answer
    choices       w9 | w2 | w5 | w40       single words, scored as " " + word
    target        "w9 w2 #"                answer plus the rest of the episode

so a k-shot prompt (shots joined by whitespace, which the word-level tokenizer drops) reads
exactly like a task block of the pretraining corpus: k whole episodes, then the query.
Finetuning pairs (``train_examples``) are (query, " " + answer): the loss is on the answer only.

Splits ``train`` and ``test`` are disjoint seeded draws (options ``n_train``, ``n_test``,
``data_seed``); chance is 1/4.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from harvest.microladder.corpus import check_shared_head, episode
from harvest.tasks.base import TARGET_DELIMITER, Doc, MultipleChoiceTask

SPLITS = {"train": 0, "test": 1}


class MicroLadderTask(MultipleChoiceTask):
    episode_task: ClassVar[str]
    episode_options: ClassVar[dict] = {}
    version = "1"
    eval_split = "test"
    fewshot_split = "train"
    default_shots = 2
    prompt_format = "[k whole episodes] episode-up-to-answer -> ' ' + one of 4 words (target in shots: answer + episode tail)"

    def __init__(self, data=None, *, n_train: int = 2048, n_test: int = 400, data_seed: int = 0, **options):
        self.sizes = {"train": int(n_train), "test": int(n_test)}
        self.data_seed = int(data_seed)
        super().__init__(data, **options)

    def docs(self, split: str) -> list[Doc]:
        if split not in SPLITS:
            from emergence.errors import SpecError

            raise SpecError(f"task {self.name!r}: unknown split {split!r} (choose from {', '.join(SPLITS)})")
        rng = np.random.default_rng([self.data_seed, SPLITS[split], sum(map(ord, self.name))])
        return [self._row(rng, f"{split}-{i}") for i in range(self.sizes[split])]

    def _row(self, rng: np.random.Generator, doc_id: str) -> Doc:
        ep = episode(self.episode_task, rng, **self.episode_options)
        return {"id": doc_id, "prompt": " ".join(ep.prompt), "choices": list(ep.choices),
                "answer": ep.choices.index(ep.answer), "tail": " ".join(ep.tail)}

    def doc_id(self, doc: Doc, split: str, index: int) -> str:
        return doc["id"]

    def doc_to_text(self, doc: Doc) -> str:
        return doc["prompt"]

    def choices(self, doc: Doc) -> list[str]:
        return list(doc["choices"])

    def gold(self, doc: Doc) -> int:
        return int(doc["answer"])

    def target(self, doc: Doc) -> str:
        """Answer plus the rest of the episode, so a shot is a whole episode."""
        return " ".join(filter(None, [doc["choices"][doc["answer"]], doc["tail"]]))

    def train_examples(self, split: str | None = None) -> list[tuple[str, str]]:
        rows = self.docs(split or self.fewshot_split)
        return [(self.doc_to_text(d), TARGET_DELIMITER + d["choices"][d["answer"]]) for d in rows]

    def describe(self) -> dict:
        return {**super().describe(), "sizes": self.sizes, "data_seed": self.data_seed}


class Copy(MicroLadderTask):
    name = "ml_copy"
    episode_task = "copy"


class Recall(MicroLadderTask):
    name = "ml_recall"
    episode_task = "recall"


class Arith(MicroLadderTask):
    name = "ml_arith"
    episode_task = "arith"


class Reverse(MicroLadderTask):
    name = "ml_reverse"
    episode_task = "reverse"


class _TopicTask(MicroLadderTask):
    """Topic naming; option ``shared_head`` must match the pretraining corpus's
    ``topic_shared_head`` (the language the checkpoints learned; 0: no topic clusters)."""

    def __init__(self, data=None, *, shared_head: int = 0, **options):
        try:
            check_shared_head(shared_head)
        except ValueError as err:
            from emergence.errors import SpecError

            raise SpecError(f"task {self.name!r}: option shared_head: {err}") from None
        self.episode_options = {**type(self).episode_options, "shared_head": shared_head}
        super().__init__(data, **options)

    def describe(self) -> dict:
        head = self.episode_options["shared_head"]
        return {**super().describe(), **({"shared_head": head} if head else {})}


class Topic(_TopicTask):
    """Name the topic of 12-16 words of background text (choices: 4 of the 16 labels; in a
    clustered language, the answer's cluster)."""

    name = "ml_topic"
    episode_task = "topic"
    episode_options = {"segment": "long"}


class TopicShort(_TopicTask):
    """The same with 3-5 words (one or two phrases): less evidence, a lower ceiling (it emerged at
    the same loss as ``ml_topic`` in the shipped ladder, docs/microladder.md)."""

    name = "ml_topic_short"
    episode_task = "topic"
    episode_options = {"segment": "short"}


MICROLADDER_TASKS = (Copy, Recall, Arith, Reverse, Topic, TopicShort)
# The tasks whose episodes are in the background language: they take its ``shared_head``.
LANGUAGE_TASKS = frozenset(t.name for t in MICROLADDER_TASKS if issubclass(t, _TopicTask))
