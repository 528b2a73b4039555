"""CoLA (GLUE): is a sentence grammatically acceptable? Two choices, lm-eval's format.

Hub: ``nyu-mll/glue`` config ``cola``; columns ``sentence`` (str), ``label`` (0 unacceptable,
1 acceptable), ``idx`` (int). The hub's test split has label -1, so the eval split is
``validation``. Chance is 0.5 (a uniform guess); the majority class is about 0.69 on the hub's
validation split, so accuracy between the two is not evidence of skill.
"""

from __future__ import annotations

from harvest.tasks.base import Doc, MultipleChoiceTask


class CoLA(MultipleChoiceTask):
    name = "cola"
    version = "1"
    prompt_format = "[shots] {sentence}\\nQuestion: Does this sentence make sense?\\nAnswer:  -> ' no'|' yes'"
    eval_split = "validation"
    fewshot_split = "train"
    default_shots = 5
    hub_dataset = "nyu-mll/glue"
    hub_config = "cola"
    id_column = "idx"
    n_choices = 2

    def doc_to_text(self, doc: Doc) -> str:
        return f"{doc['sentence']}\nQuestion: Does this sentence make sense?\nAnswer:"

    def choices(self, doc: Doc) -> list[str]:
        return ["no", "yes"]

    def gold(self, doc: Doc) -> int:
        return int(doc["label"])
