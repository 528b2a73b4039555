"""MMLU (Hendrycks et al.): 57 subjects, 4 choices, scored on the letter.

Hub: ``cais/mmlu`` config ``all``; columns ``question`` (str), ``subject`` (str), ``choices``
(list of 4 str), ``answer`` (int 0-3). Eval split ``test``, shots: the first k rows of ``dev``
of the same subject, in file order (lm-eval's ``first_n`` sampler), so every item of a subject
has the same k-shot prefix. Version 2; version 1 drew a seeded random sample of the dev rows.

Finetuning uses ``auxiliary_train`` (99,842 rows from ARC, OBQA, RACE and MCTest, the split the
MMLU paper provides for training; its ``subject`` is empty, so a training prompt's description
reads "...(with answers).", without a subject), not ``dev`` (285 rows, 5 per subject), which
holds the shots. lm-eval counterpart: the ``mmlu`` group (``mmlu_<subject>`` tasks of
``lm_eval/tasks/mmlu/default``).
"""

from __future__ import annotations

from harvest.tasks.base import Doc, MultipleChoiceTask

LETTERS = ("A", "B", "C", "D")


class MMLU(MultipleChoiceTask):
    name = "mmlu"
    version = "2"  # 2: first k dev rows of the subject (lm-eval's first_n); 1: seeded sample
    prompt_format = (
        "The following are multiple choice questions (with answers) about {subject}.\\n\\n"
        "[shots] {question}\\nA. {c0}\\nB. {c1}\\nC. {c2}\\nD. {c3}\\nAnswer:  -> ' A'|' B'|' C'|' D'"
    )
    eval_split = "test"
    fewshot_split = "dev"
    train_split = "auxiliary_train"
    splits = ("auxiliary_train", "dev", "validation", "test")
    split_sizes = {"auxiliary_train": 99842, "dev": 285, "validation": 1531, "test": 14042}
    lm_eval_task = "mmlu"
    fewshot_sampler = "first_n"
    default_shots = 5
    hub_dataset = "cais/mmlu"
    hub_config = "all"

    def prefix(self, doc: Doc) -> str:
        subject = str(doc.get("subject", "")).replace("_", " ").strip()
        about = f" about {subject}" if subject else ""
        return f"The following are multiple choice questions (with answers){about}.\n\n"

    def doc_to_text(self, doc: Doc) -> str:
        options = "".join(f"{letter}. {text}\n" for letter, text in zip(LETTERS, doc["choices"]))
        return f"{doc['question'].strip()}\n{options}Answer:"

    def choices(self, doc: Doc) -> list[str]:
        return list(LETTERS[: len(doc["choices"])])

    def gold(self, doc: Doc) -> int:
        return int(doc["answer"])

    def fewshot_pool(self, pool: list[Doc], doc: Doc) -> list[Doc]:
        same = [d for d in pool if d.get("subject") == doc.get("subject")]
        return same or pool
