"""Task registry, local fixtures in the hub's format, deterministic few-shot prompts."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from emergence.errors import SpecError
from harvest.spec import TaskSpec
from harvest.tasks import TASK_CLASSES, TaskData, get_task, task_class
from harvest.tasks.base import FEWSHOT_DELIMITER
from harvest.tasks.fewshot import build_context, build_items, draw_shots
from harvest.tasks.gsm8k import extract_answer

FIXTURES = Path(__file__).parent / "fixtures"

# name -> (eval rows, few-shot rows, n choices or None, chance)
REAL = {
    "mmlu": (6, 6, 4, 0.25),
    "gsm8k": (4, 5, None, 0.0),
    "commonsense_qa": (4, 7, 5, 0.2),
    "cola": (6, 8, 2, 0.5),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_task_reads_its_local_fixture(name):
    n_eval, n_pool, n_choices, chance = REAL[name]
    task = get_task(name, TaskData(path=str(FIXTURES / name)))
    docs, pool = task.docs(task.eval_split), task.docs(task.fewshot_split)
    assert (len(docs), len(pool)) == (n_eval, n_pool)
    assert task.chance == chance
    for doc in docs:
        text = task.doc_to_text(doc)
        assert text.endswith("Answer:") or text.endswith("make sense?\nAnswer:")
        if n_choices:
            assert len(task.choices(doc)) == n_choices and 0 <= task.gold(doc) < n_choices
        else:
            assert task.gold_label(doc).isdigit()
    assert len(task.train_examples()) == n_pool and task.train_examples()[0][1].startswith(" ")


def test_parquet_copy_of_a_fixture_reads_the_same(tmp_path):
    for split in ("test", "dev"):
        pl.read_ndjson(FIXTURES / "mmlu" / f"{split}.jsonl").write_parquet(tmp_path / f"{split}-00000-of-00001.parquet")
    a = get_task("mmlu", TaskData(path=str(FIXTURES / "mmlu"))).docs("test")
    b = get_task("mmlu", TaskData(path=str(tmp_path))).docs("test")
    assert a == b


def test_prompt_formats_are_the_documented_ones():
    mmlu = get_task("mmlu", TaskData(path=str(FIXTURES / "mmlu")))
    doc = mmlu.docs("test")[0]
    assert mmlu.doc_to_text(doc) == ("Which blood cells carry oxygen?\nA. White cells\nB. Platelets\n"
                                     "C. Red cells\nD. Plasma\nAnswer:")
    assert mmlu.prefix(doc) == "The following are multiple choice questions (with answers) about high school biology.\n\n"
    csqa = get_task("commonsense_qa", TaskData(path=str(FIXTURES / "commonsense_qa")))
    d = csqa.docs("validation")[0]
    assert csqa.doc_to_text(d).startswith("Question: Where would you put dirty dishes?\nA. bed\n")
    assert csqa.target(d) == "B"
    cola = get_task("cola", TaskData(path=str(FIXTURES / "cola")))
    assert cola.doc_to_text(cola.docs("validation")[0]) == (
        "My brother likes green apples.\nQuestion: Does this sentence make sense?\nAnswer:")
    assert len({task_class(name).format_hash() for name in TASK_CLASSES}) == len(TASK_CLASSES)


def test_context_is_the_lm_eval_concatenation():
    task = get_task("cola", TaskData(path=str(FIXTURES / "cola")))
    pool, doc = task.docs("train"), task.docs("validation")[0]
    shots = pool[:2]
    expected = "".join(task.doc_to_text(s) + " " + ("yes" if s["label"] else "no") + "\n\n" for s in shots)
    assert build_context(task, doc, shots) == expected + task.doc_to_text(doc)


def _prompts(seed: int, k: int = 3) -> list[str]:
    task = get_task("synthetic_arithmetic", n_test=20, n_train=30)
    rows = [(d["id"], d) for d in task.docs("test")]
    return [it.context for it in build_items(task, rows, task.docs("train"), k, seed, same_split=False)]


def test_few_shot_prompts_are_deterministic_given_the_seed():
    assert _prompts(1234) == _prompts(1234)
    assert _prompts(1234) != _prompts(99)
    assert all(p.count(FEWSHOT_DELIMITER) == 3 for p in _prompts(5))


def test_same_split_pool_never_shows_the_item_itself():
    import random

    task = get_task("synthetic_copy", n_test=12)
    docs = task.docs("test")
    rnd = random.Random(0)
    for doc in docs:
        shots = draw_shots(rnd, docs, doc, 4, same_split=True)
        assert len(shots) == 4 and doc not in shots


def test_mmlu_shots_come_from_the_same_subject():
    task = get_task("mmlu", TaskData(path=str(FIXTURES / "mmlu")))
    rows = [(str(i), d) for i, d in enumerate(task.docs("test"))]
    for it in build_items(task, rows, task.docs("dev"), 2, 1, same_split=False):
        other = "elementary mathematics" if "biology" in it.context[:90] else "high school biology"
        assert other not in it.context and it.context.count("Answer:") == 3


def test_mmlu_shots_are_the_first_dev_rows_of_the_subject_as_lm_eval_first_n():
    task = get_task("mmlu", TaskData(path=str(FIXTURES / "mmlu")))
    dev = task.docs("dev")
    rows = [(str(i), d) for i, d in enumerate(task.docs("test"))]
    for seed in (1, 2):  # the seed plays no part: every item of a subject gets the same shots
        for it in build_items(task, rows, dev, 2, seed, same_split=False):
            first = [d for d in dev if d["subject"] == it.doc["subject"]][:2]
            demos = "".join(task.doc_to_text(d) + " " + task.target(d) + "\n\n" for d in first)
            assert it.context == task.prefix(it.doc) + demos + task.doc_to_text(it.doc)


def test_synthetic_tasks_are_seeded_and_splits_disjoint():
    a = get_task("synthetic_arithmetic", data_seed=1).docs("test")
    assert a == get_task("synthetic_arithmetic", data_seed=1).docs("test")
    assert a != get_task("synthetic_arithmetic", data_seed=2).docs("test")
    train = get_task("synthetic_copy").docs("train")
    assert len(train) == 256 and all(d["choices"][d["answer"]] in d["question"] for d in train)
    gaps = {len(set(d["choices"])) for d in get_task("synthetic_copy").docs("test")}
    assert gaps == {4}


def test_gsm8k_answer_extraction():
    assert extract_answer("so 3 * 4 = 12.\n#### 12") == "12"
    assert extract_answer("1,000 hens remain.\n#### 1,000") == "1000"
    assert extract_answer("The answer is $42.") == "42"
    assert extract_answer("no number here") == ""
    task = get_task("gsm8k", TaskData(path=str(FIXTURES / "gsm8k")))
    doc = task.docs("test")[1]
    assert task.check_generation(doc, " 1200 - 200 = 1000\n#### 1000") == ("1000", True)
    assert task.check_generation(doc, " it is 999") == ("999", False)


def test_unknown_task_and_missing_data_are_one_line_errors(tmp_path):
    with pytest.raises(SpecError, match="did you mean 'commonsense_qa'"):
        get_task("commonsense_q")
    with pytest.raises(SpecError, match="no 'validation' split"):
        get_task("cola", TaskData(path=str(tmp_path))).docs("validation")
    with pytest.raises(SpecError, match="unknown option"):
        get_task("mmlu", colour=1)
    assert TaskSpec("mmlu", "mmlu").seed == 1234  # lm-eval's default few-shot seed
