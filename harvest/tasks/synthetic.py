"""Synthetic multiple-choice tasks generated from a seed: no download, any number of items.

Both have splits ``train`` and ``test`` (disjoint draws of one seeded generator) and the
columns ``id``, ``question``, ``choices`` (4 str), ``answer`` (int), like MMLU, and both
are scored on the letter, so their prompts look like an MMLU item:

    Question: {question}\\nA. {c0}\\nB. {c1}\\nC. {c2}\\nD. {c3}\\nAnswer:  -> ' A'|' B'|' C'|' D'

- ``synthetic_arithmetic``: "What is a + b?" with a, b < ``max_operand``; distractors are the
  answer ± small offsets.
- ``synthetic_copy``: "Repeat: x y z ..." (``length`` random lowercase letters); distractors
  change one letter or swap two neighbours.

Options (in the spec's ``options`` table): ``n_train``, ``n_test``, ``data_seed``,
``max_operand`` or ``length``, and ``answer``: ``"letter"`` (above, one-token answers like MMLU)
or ``"text"`` (``Question: {question}\nAnswer:`` scored on each option's text, " 68", a
multi-token continuation like ARC or HellaSwag).
"""

from __future__ import annotations

import random
import string

from harvest.tasks.base import Doc, MultipleChoiceTask

LETTERS = ("A", "B", "C", "D")
SPLITS = ("train", "test")


class SyntheticTask(MultipleChoiceTask):
    eval_split = "test"
    fewshot_split = "train"
    default_shots = 3
    prompt_format = "[shots] Question: {question}\\nA. {c0}\\nB. {c1}\\nC. {c2}\\nD. {c3}\\nAnswer:  -> ' A'|' B'|' C'|' D'"

    def __init__(self, data=None, *, n_train: int = 256, n_test: int = 256, data_seed: int = 0,
                 answer: str = "letter", **options):
        if answer not in ("letter", "text"):
            raise TypeError(f"option answer must be 'letter' or 'text', got {answer!r}")
        self.sizes = {"train": int(n_train), "test": int(n_test)}
        self.data_seed, self.answer = int(data_seed), answer
        super().__init__(data, **options)

    splits = SPLITS

    def split_size(self, split: str) -> int | None:
        return self.sizes.get(split)

    def docs(self, split: str) -> list[Doc]:
        if split not in SPLITS:
            from emergence.errors import SpecError

            raise SpecError(f"task {self.name!r}: unknown split {split!r} (choose from {', '.join(SPLITS)})")
        rng = random.Random(f"{self.name}/{self.data_seed}/{split}")
        return [self._make(rng, f"{split}-{i}") for i in range(self.sizes[split])]

    def _make(self, rng: random.Random, doc_id: str) -> Doc:
        question, answer, distractors = self.draw(rng)
        choices = [answer, *distractors]
        rng.shuffle(choices)
        return {"id": doc_id, "question": question, "choices": choices, "answer": choices.index(answer)}

    def draw(self, rng: random.Random) -> tuple[str, str, list[str]]:
        raise NotImplementedError

    def doc_id(self, doc: Doc, split: str, index: int) -> str:
        return doc["id"]

    def doc_to_text(self, doc: Doc) -> str:
        if self.answer == "text":
            return f"Question: {doc['question']}\nAnswer:"
        options = "".join(f"{letter}. {text}\n" for letter, text in zip(LETTERS, doc["choices"]))
        return f"Question: {doc['question']}\n{options}Answer:"

    def choices(self, doc: Doc) -> list[str]:
        return list(doc["choices"]) if self.answer == "text" else list(LETTERS)

    def gold(self, doc: Doc) -> int:
        return int(doc["answer"])

    def describe(self) -> dict:
        return {**super().describe(), "sizes": self.sizes, "data_seed": self.data_seed, "answer": self.answer,
                **self.extra()}

    def extra(self) -> dict:
        return {}


class SyntheticArithmetic(SyntheticTask):
    name = "synthetic_arithmetic"
    version = "1"

    def __init__(self, data=None, *, max_operand: int = 100, **options):
        self.max_operand = int(max_operand)
        super().__init__(data, **options)

    def draw(self, rng):
        a, b = rng.randrange(self.max_operand), rng.randrange(self.max_operand)
        offsets = rng.sample([-11, -10, -2, -1, 1, 2, 9, 10, 11], 3)
        return f"What is {a} + {b}?", str(a + b), [str(a + b + d) for d in offsets]

    def extra(self):
        return {"max_operand": self.max_operand}


class SyntheticCopy(SyntheticTask):
    name = "synthetic_copy"
    version = "1"

    def __init__(self, data=None, *, length: int = 6, **options):
        self.length = int(length)
        super().__init__(data, **options)

    def draw(self, rng):
        seq = [rng.choice(string.ascii_lowercase) for _ in range(self.length)]
        wrong: set[str] = set()
        while len(wrong) < 3:
            wrong.add(" ".join(_perturb(seq, rng)))
            wrong.discard(" ".join(seq))
        return f"Repeat: {' '.join(seq)}", " ".join(seq), sorted(wrong)

    def extra(self):
        return {"length": self.length}


def _perturb(seq: list[str], rng: random.Random) -> list[str]:
    out = list(seq)
    i = rng.randrange(len(out))
    if rng.random() < 0.5 and len(out) > 1:
        j = min(i + 1, len(out) - 1) if i + 1 < len(out) else i - 1
        out[i], out[j] = out[j], out[i]
    else:
        out[i] = rng.choice(string.ascii_lowercase)
    return out
