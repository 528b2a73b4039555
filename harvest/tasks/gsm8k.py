"""GSM8K (Cobbe et al.): grade-school maths, scored by exact match of the final number.

Hub: ``openai/gsm8k`` config ``main``; columns ``question`` and ``answer`` (worked solution
ending in ``#### <number>``). Everything follows lm-eval's ``gsm8k`` task
(``lm_eval/tasks/gsm8k/gsm8k.yaml``, version 3.0):

- prompt ``Question: {question}\\nAnswer:`` (the question as stored, not stripped); shots show
  the full worked solution (``doc_to_target: "{{answer}}"``), and so do finetuning targets;
- greedy generation until ``Question:``, ``</s>`` or ``<|im_end|>`` (and the model's
  end-of-sequence token, which the engines always stop at), at most 256 new tokens;
- two answer filters, reported as two metrics:
  ``exact_match`` (lm-eval's ``strict-match``): the first match of ``#### (\\-?[0-9\\.\\,]+)``;
  ``exact_match_flexible`` (``flexible-extract``): the last match of
  ``(-?[$0-9.,]{2,})|(-?[0-9]+)``; no match gives ``[invalid]``;
- exact match as lm-eval's ``exact_match`` with the task's ``regexes_to_ignore`` (``,``, ``$``,
  everything up to ``#### ``, a final ``.``) removed from prediction and gold, case ignored.

Version 2 (this); version 1 stripped the question, stopped at a blank line too and had one
filter of its own (after ``####``, else the last number).
"""

from __future__ import annotations

import re

from harvest.tasks.base import Doc, Task
from harvest.tasks.metrics import EXACT_MATCH, EXACT_MATCH_FLEXIBLE, Metric

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
FALLBACK = "[invalid]"
IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")  # the task's regexes_to_ignore, applied in order


def regex_filter(pattern: re.Pattern, text: str, group_select: int) -> str:
    """lm-eval's ``regex`` filter (then ``take_first``): one match of ``pattern`` or ``[invalid]``."""
    found = pattern.findall(text)
    if not found:
        return FALLBACK
    match = found[group_select]
    if isinstance(match, tuple):  # several groups: the first that matched
        match = next((m for m in match if m), FALLBACK)
    return match.strip()


def strict_match(text: str) -> str:
    return regex_filter(STRICT, text, 0)


def flexible_extract(text: str) -> str:
    return regex_filter(FLEXIBLE, text, -1)


def normalise(text: str) -> str:
    """What lm-eval's exact_match compares: ``regexes_to_ignore`` removed, lower case."""
    for pattern in IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def extract_answer(text: str) -> str:
    """The final number of a worked solution, as compared (``1,000`` after ``####`` -> ``1000``)."""
    return normalise(text)


class GSM8K(Task):
    name = "gsm8k"
    version = "2"  # 2: lm-eval's gsm8k.yaml (3.0) exactly; 1: own stops and filter
    kind = "generation"
    prompt_format = ("[shots] Question: {question}\\nAnswer: -> greedy until 'Question:', '</s>', '<|im_end|>'; "
                     "strict-match '#### (\\-?[0-9\\.\\,]+)' and flexible-extract, exact match")
    eval_split = "test"
    fewshot_split = "train"
    train_split = "train"
    splits = ("train", "test")
    split_sizes = {"train": 7473, "test": 1319}
    lm_eval_task = "gsm8k"
    default_shots = 5
    hub_dataset = "openai/gsm8k"
    hub_config = "main"
    stop = ("Question:", "</s>", "<|im_end|>")
    max_new_tokens = 256

    @property
    def chance(self) -> float:
        return 0.0

    def metrics(self) -> tuple[Metric, ...]:
        return (Metric(EXACT_MATCH, 0.0, lm_eval="exact_match,strict-match"),
                Metric(EXACT_MATCH_FLEXIBLE, 0.0, lm_eval="exact_match,flexible-extract"))

    def doc_to_text(self, doc: Doc) -> str:
        return f"Question: {doc['question']}\nAnswer:"

    def target(self, doc: Doc) -> str:
        return doc["answer"]

    def gold_label(self, doc: Doc) -> str:
        return normalise(doc["answer"])

    def score_generation(self, doc: Doc, text: str) -> dict[str, tuple[str, bool]]:
        gold = normalise(doc["answer"])
        out = {}
        for metric, pick in ((EXACT_MATCH, strict_match), (EXACT_MATCH_FLEXIBLE, flexible_extract)):
            prediction = pick(text)
            out[metric] = (prediction, normalise(prediction) == gold)
        return out
