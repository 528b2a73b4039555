"""GSM8K (Cobbe et al.): grade-school maths, scored by exact match of the final number.

Hub: ``openai/gsm8k`` config ``main``; columns ``question`` and ``answer`` (worked solution
ending in ``#### <number>``). Shots show the full worked solution (chain of thought). The
prediction is the number after ``####`` in the completion, else its last number; commas, ``$``
and a trailing period are dropped before comparing with the gold number.
"""

from __future__ import annotations

import re

from harvest.tasks.base import Doc, Task

FINAL = re.compile(r"####\s*(-?[$0-9.,]+)")
NUMBER = re.compile(r"-?[$0-9][0-9.,]*")


def normalise_number(text: str) -> str:
    text = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else repr(value)


def extract_answer(text: str) -> str:
    """The final number of a solution: after '####', else the last number; '' if none."""
    hit = FINAL.search(text)
    if hit:
        return normalise_number(hit.group(1))
    numbers = NUMBER.findall(text)
    return normalise_number(numbers[-1]) if numbers else ""


class GSM8K(Task):
    name = "gsm8k"
    version = "1"
    kind = "generation"
    prompt_format = "[shots] Question: {question}\\nAnswer: -> greedy until 'Question:' or blank line; final number"
    eval_split = "test"
    fewshot_split = "train"
    default_shots = 5
    hub_dataset = "openai/gsm8k"
    hub_config = "main"
    stop = ("Question:", "</s>", "<|im_end|>", "\n\n")
    max_new_tokens = 256

    @property
    def chance(self) -> float:
        return 0.0

    def doc_to_text(self, doc: Doc) -> str:
        return f"Question: {doc['question'].strip()}\nAnswer:"

    def target(self, doc: Doc) -> str:
        return doc["answer"].strip()

    def gold_label(self, doc: Doc) -> str:
        return extract_answer(doc["answer"])

    def check_generation(self, doc: Doc, text: str) -> tuple[str, bool]:
        prediction = extract_answer(text)
        return prediction, prediction != "" and prediction == extract_answer(doc["answer"])
