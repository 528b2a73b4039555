"""CoLA (GLUE): is a sentence grammatically acceptable? Two choices, lm-eval's format.

Hub: ``nyu-mll/glue`` config ``cola``; columns ``sentence`` (str), ``label`` (0 unacceptable,
1 acceptable), ``idx`` (int). The hub's test split has label -1, so the eval split is
``validation``; shots and finetuning come from ``train``, drawn as lm-eval's ``cola`` draws them
(``k + 1`` rows per item, the first ``k`` kept: :mod:`harvest.tasks.fewshot`; version 2).

Metrics: Matthews correlation (``mcc``, primary, as GLUE and lm-eval's ``cola`` task score it),
chance 0 on [-1, 1]: a model that learns only the label prior (always "yes", accuracy about 0.69
on the hub's validation split) scores 0, so a rise is evidence of skill. ``accuracy`` is kept as a
second metric, chance 0.5 (a uniform guess), whose rise to the majority class is not.
"""

from __future__ import annotations

from harvest.tasks.base import Doc, MultipleChoiceTask
from harvest.tasks.metrics import MCC, Metric, accuracy_metric


class CoLA(MultipleChoiceTask):
    name = "cola"
    version = "2"  # 2: lm-eval's k + 1 shot draw (fewshot_draws_extra); 1: k drawn
    fewshot_draws_extra = True
    prompt_format = "[shots] {sentence}\\nQuestion: Does this sentence make sense?\\nAnswer:  -> ' no'|' yes'"
    eval_split = "validation"
    fewshot_split = "train"
    train_split = "train"
    splits = ("train", "validation", "test")
    split_sizes = {"train": 8551, "validation": 1043, "test": 1063}
    lm_eval_task = "cola"
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

    def metrics(self) -> tuple[Metric, ...]:
        return (Metric(MCC, 0.0, low=-1.0, high=1.0, aggregate="mcc", lm_eval="mcc"), accuracy_metric(self.chance))
