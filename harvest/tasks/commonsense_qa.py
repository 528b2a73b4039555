"""CommonsenseQA (Talmor et al.): 5 choices, scored on the letter (lm-eval's format).

Hub: ``tau/commonsense_qa``; columns ``id``, ``question``, ``question_concept``, ``choices``
(``{"label": ["A".."E"], "text": [...]}``), ``answerKey`` ("A".."E"). The hub's test split has
no answers, so the eval split is ``validation``; shots and finetuning come from ``train``, as
lm-eval's ``commonsense_qa`` task (its YAML names no ``fewshot_split``, so shots come from its
``training_split``), drawn as lm-eval draws them (``k + 1`` rows per item, the first ``k``
kept: :mod:`harvest.tasks.fewshot`; version 2). lm-eval's default is 0 shots; the paper uses 6.
"""

from __future__ import annotations

from harvest.tasks.base import Doc, MultipleChoiceTask


class CommonsenseQA(MultipleChoiceTask):
    name = "commonsense_qa"
    version = "2"  # 2: lm-eval's k + 1 shot draw (fewshot_draws_extra); 1: k drawn
    fewshot_draws_extra = True
    prompt_format = "[shots] Question: {question}\\nA. {t0}\\nB. {t1}\\nC. {t2}\\nD. {t3}\\nE. {t4}\\nAnswer:  -> ' A'..' E'"
    eval_split = "validation"
    fewshot_split = "train"
    train_split = "train"
    splits = ("train", "validation", "test")
    split_sizes = {"train": 9741, "validation": 1221, "test": 1140}
    lm_eval_task = "commonsense_qa"
    default_shots = 6
    hub_dataset = "tau/commonsense_qa"
    id_column = "id"
    n_choices = 5

    def doc_to_text(self, doc: Doc) -> str:
        ch = doc["choices"]
        options = "".join(f"{label}. {text}\n" for label, text in zip(ch["label"], ch["text"]))
        return f"Question: {doc['question'].strip()}\n{options}Answer:"

    def choices(self, doc: Doc) -> list[str]:
        return list(doc["choices"]["label"])

    def gold(self, doc: Doc) -> int:
        return list(doc["choices"]["label"]).index(doc["answerKey"])
