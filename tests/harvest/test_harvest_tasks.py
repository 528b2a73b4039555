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

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# name -> (eval rows, few-shot rows, train rows, n choices or None, chance)
REAL = {
    "mmlu": (6, 6, 8, 4, 0.25),
    "gsm8k": (4, 5, 5, None, 0.0),
    "commonsense_qa": (4, 7, 7, 5, 0.2),
    "cola": (6, 8, 8, 2, 0.5),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_task_reads_its_local_fixture(name):
    n_eval, n_pool, n_train, n_choices, chance = REAL[name]
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
    assert len(task.train_examples()) == n_train and task.train_examples()[0][1].startswith(" ")


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


@pytest.mark.parametrize("name", ["cola", "commonsense_qa"])
def test_cola_and_csqa_draw_k_plus_1_shots_as_lm_eval(name):
    """lm-eval's YAMLs for these set neither fewshot_split nor test_split, so its sampler draws
    k + 1 rows per item and keeps the first k (tests/harvest/test_lm_eval_parity_real.py runs lm-eval)."""
    import random

    task = get_task(name, TaskData(path=str(FIXTURES / name)))
    pool, docs = task.docs("train"), task.docs("validation")
    rows = [(str(i), d) for i, d in enumerate(docs)]
    rnd = random.Random(1234)
    for it in build_items(task, rows, pool, 3, 1234, same_split=False):
        shots = rnd.sample(pool, 4)[:3]
        demos = "".join(task.doc_to_text(s) + " " + task.target(s) + "\n\n" for s in shots)
        assert it.context == demos + task.doc_to_text(it.doc)
    # where the pool has no k + 1-th row (lm-eval would fail) k rows are drawn
    assert len(build_items(task, rows, pool[:3], 3, 1234, same_split=False)) == len(docs)


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
    task = get_task("gsm8k", TaskData(path=str(FIXTURES / "gsm8k")))
    doc = task.docs("test")[1]  # gold: 1,000
    assert task.check_generation(doc, " 1200 - 200 = 1000\n#### 1000") == ("1000", True)
    assert task.check_generation(doc, " it is 999") == ("[invalid]", False)


def test_unknown_task_and_missing_data_are_one_line_errors(tmp_path):
    with pytest.raises(SpecError, match="did you mean 'commonsense_qa'"):
        get_task("commonsense_q")
    with pytest.raises(SpecError, match="no 'validation' split"):
        get_task("cola", TaskData(path=str(tmp_path))).docs("validation")
    with pytest.raises(SpecError, match="unknown option"):
        get_task("mmlu", colour=1)
    assert TaskSpec("mmlu", "mmlu").seed == 1234  # lm-eval's default few-shot seed


# --------------------------------------------------------------------------- per-task data

# lm-eval's splits (lm_eval/tasks/{mmlu/default/_default_template_yaml, gsm8k/gsm8k.yaml,
# commonsense_qa/default.yaml, glue/cola/default.yaml}); MMLU finetunes on auxiliary_train (paper).
SPLITS = {  # name -> (train, eval, few-shot)
    "mmlu": ("auxiliary_train", "test", "dev"),
    "gsm8k": ("train", "test", "train"),
    "commonsense_qa": ("train", "validation", "train"),
    "cola": ("train", "validation", "train"),
}


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_each_task_declares_its_train_eval_and_fewshot_splits(name):
    cls = task_class(name)
    assert (cls.train_split, cls.eval_split, cls.fewshot_split) == SPLITS[name]
    assert set(SPLITS[name]) <= set(cls.splits) and set(cls.splits) == set(cls.split_sizes)


def test_mmlu_finetunes_on_auxiliary_train_and_shots_stay_on_dev():
    task = get_task("mmlu", TaskData(path=str(FIXTURES / "mmlu")))
    aux = task.docs("auxiliary_train")
    pairs = task.train_examples()
    assert len(pairs) == len(aux) == 8
    assert pairs[1] == ("The following are multiple choice questions (with answers).\n\nWhat do bees make?\n"
                        "A. milk\nB. silk\nC. honey\nD. wool\nAnswer:", " C")
    assert len(task.train_examples("dev")) == 6  # an explicit split still wins


def test_a_finetuning_subset_larger_than_its_split_is_one_line():
    hub = get_task("mmlu")  # sizes of cais/mmlu, known without a download
    hub.check_subset(5000)  # auxiliary_train: 99,842 rows
    with pytest.raises(SpecError, match=r"^task 'mmlu': a finetuning subset of 500 examples is larger than "
                                        r"its train split 'dev' \(285 examples\)$"):
        hub.check_subset(500, "dev")
    local = get_task("cola", TaskData(path=str(FIXTURES / "cola")))
    local.check_subset(8)
    with pytest.raises(SpecError, match=r"task 'cola': .* 9 examples .* split 'train' \(8 examples\)"):
        local.check_subset(9)
    assert get_task("mmlu", TaskData(dataset="someone/mmlu-copy")).split_size("dev") is None  # unknown: no check
    get_task("mmlu", TaskData(dataset="someone/mmlu-copy")).check_subset(10**9)
    with pytest.raises(SpecError, match="train split 'train' \\(30 examples\\)"):
        get_task("synthetic_copy", n_train=30).check_subset(31)


# --------------------------------------------------------------------------- metrics


def test_matthews_correlation_equals_sklearn():
    import random

    from sklearn.metrics import matthews_corrcoef as sk_mcc

    from harvest.tasks.metrics import matthews_corrcoef

    rnd = random.Random(0)
    for n, k in ((10, 2), (57, 2), (40, 3)):
        gold = [rnd.randrange(k) for _ in range(n)]
        pred = [g if rnd.random() < 0.6 else rnd.randrange(k) for g in gold]
        assert matthews_corrcoef(gold, pred) == pytest.approx(sk_mcc(gold, pred), abs=1e-12)
    assert matthews_corrcoef([0, 1, 1, 1], [1, 1, 1, 1]) == 0.0 == sk_mcc([0, 1, 1, 1], [1, 1, 1, 1])
    assert matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == -1.0


def test_cola_reports_mcc_first_and_a_label_prior_scores_zero():
    from harvest.tasks.metrics import unit_results

    task = get_task("cola", TaskData(path=str(FIXTURES / "cola")))
    mcc, acc = task.metrics()
    assert (mcc.name, mcc.chance, mcc.low, mcc.high, mcc.lm_eval) == ("mcc", 0.0, -1.0, 1.0, "mcc")
    assert (acc.name, acc.chance, acc.proportion, mcc.proportion) == ("accuracy", 0.5, True, False)
    gold = [str(task.gold(d)) for d in task.docs("validation")]
    always_yes = ["1"] * len(gold)
    rows = {"gold": gold, "prediction": always_yes, "correct": [g == p for g, p in zip(gold, always_yes)]}
    results = unit_results(task.metrics(), rows)
    assert [r["metric"] for r in results] == ["mcc", "accuracy"]
    assert results[0]["value"] == 0.0 and results[1]["value"] == gold.count("1") / len(gold)
    perfect = unit_results(task.metrics(), {"gold": gold, "prediction": gold, "correct": [True] * len(gold)})
    assert [r["value"] for r in perfect] == [1.0, 1.0]


def test_other_tasks_keep_one_accuracy_metric_at_their_chance():
    for name, chance in (("mmlu", 0.25), ("commonsense_qa", 0.2), ("synthetic_arithmetic", 0.25)):
        (metric,) = get_task(name).metrics()
        assert (metric.name, metric.chance, metric.proportion) == ("accuracy", chance, True)


def test_fit_accepts_an_mcc_metric_with_the_gaussian_likelihood(tmp_path, capsys):
    """A results folder whose task reports MCC (chance 0, values below 0 near chance) fits."""
    import json

    import numpy as np

    from fitting.schema import load_results, write_results
    from fitting.simulate import Design, TaskTruth, simulate
    from tests.cli_runner import run_cli

    truth = TaskTruth("cola", chance=0.0, A=0.6, k=0.05, alpha=1.1, C=2.45)
    sim = simulate(Design(tasks=(truth,), n_items=1000), seed=3)
    noise = np.random.default_rng(3).normal(0.0, 0.02, sim.results.height)  # MCC scatters around 0
    results = sim.results.with_columns(pl.lit("mcc").alias("metric"),
                                       (pl.col("value") + noise).clip(-1.0, 1.0).alias("value"))
    assert results["value"].min() < 0
    write_results(tmp_path / "mcc", sim.checkpoints, results)
    assert load_results(tmp_path / "mcc").results["metric"].unique().to_list() == ["mcc"]
    code, out, err = run_cli(["fit", tmp_path / "mcc", "--metric", "mcc", "--likelihood", "gaussian",
                              "--n-boot", "0", "--json"], capsys)
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["task"] == "cola" and abs(row["emergence_loss"] - truth.emergence_loss) < 0.1
    code, _, err = run_cli(["fit", tmp_path / "mcc", "--metric", "mcc", "--n-boot", "0"], capsys)
    assert code == 2 and "use --likelihood gaussian" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- the spec's task splits


def _task_spec(tmp_path, table: str):
    from harvest.spec import load_spec

    (tmp_path / "spec.toml").write_text(
        '[[checkpoints]]\nname = "c"\npath = "."\nfamily = "f"\nparams = 1\ntokens = 1\npretrain_loss = 3.0\n'
        f"[[tasks]]\n{table}\n")
    return load_spec(tmp_path / "spec.toml").tasks[0]


def test_spec_overrides_each_split_per_task(tmp_path):
    data = FIXTURES / "mmlu"
    ts = _task_spec(tmp_path, f'task = "mmlu"\ndata = "{data}"\ntrain_split = "dev"\neval_split = "dev"\n'
                              'fewshot_split = "auxiliary_train"')
    assert (ts.train_split, ts.eval_split, ts.split, ts.fewshot_split) == ("dev", "dev", "dev", "auxiliary_train")
    assert _task_spec(tmp_path, 'task = "mmlu"\nsplit = "validation"').eval_split == "validation"  # older name
    default = _task_spec(tmp_path, 'task = "mmlu"')
    assert (default.train_split, default.split, default.fewshot_split) == (None, None, None)  # the task's


@pytest.mark.parametrize("table, message", [
    ('task = "mmlu"\ntrain_split = "auxilary_train"',
     r"tasks\[0\]\.train_split: task 'mmlu': unknown split 'auxilary_train' \(the hub dataset has auxiliary_train"),
    ('task = "gsm8k"\neval_split = "validation"', r"tasks\[0\]\.eval_split: task 'gsm8k': unknown split 'validation'"),
    ('task = "cola"\nsplit = "dev"', r"tasks\[0\]\.split: task 'cola': unknown split 'dev'"),
    ('task = "cola"\nsplit = "test"\neval_split = "test"', r"tasks\[0\]\.split: give 'eval_split' or its older name"),
    (f'task = "mmlu"\ndata = "{FIXTURES / "mmlu"}"\ntrain_split = "validation"',
     r"tasks\[0\]\.train_split: task 'mmlu': no 'validation' split in"),
])
def test_a_bad_split_is_one_line_when_the_spec_is_read(tmp_path, table, message):
    with pytest.raises(SpecError, match=message) as err:
        _task_spec(tmp_path, table)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- formats


def test_gsm8k_prompt_target_and_stops_are_lm_eval_s():
    task = get_task("gsm8k", TaskData(path=str(FIXTURES / "gsm8k")))
    doc = {"question": "  Spaces kept? ", "answer": "Yes.\n#### 1"}
    assert task.doc_to_text(doc) == "Question:   Spaces kept? \nAnswer:"  # "Question: {{question}}\nAnswer:"
    assert task.target(doc) == "Yes.\n#### 1"  # "{{answer}}"
    assert task.stop == ("Question:", "</s>", "<|im_end|>") and task.max_new_tokens == 256
    assert [m.name for m in task.metrics()] == ["exact_match", "exact_match_flexible"]
    assert [m.lm_eval for m in task.metrics()] == ["exact_match,strict-match", "exact_match,flexible-extract"]


GSM8K_CASES = [  # completion -> (strict-match, flexible-extract) as lm-eval's filters give them
    (" 1200 - 200 = 1000 hens.\n#### 1,000", ("1,000", "1,000")),
    (" They sell 200, so 1000 remain.", ("[invalid]", "1000")),
    (" so 1000.", ("[invalid]", "1000.")),
    (" $1,000.", ("[invalid]", "$1,000.")),
    (" #### -3.5 then 7", ("-3.5", "7")),
    (" no digits", ("[invalid]", "[invalid]")),
    (" 5 and 9", ("[invalid]", "9")),
]


@pytest.mark.parametrize("text, expected", GSM8K_CASES)
def test_gsm8k_filters_are_lm_eval_s_strict_and_flexible(text, expected):
    from harvest.tasks.gsm8k import flexible_extract, strict_match

    assert (strict_match(text), flexible_extract(text)) == expected
    lm_eval = pytest.importorskip("lm_eval.filters.extraction")
    strict = lm_eval.RegexFilter(regex_pattern=r"#### (\-?[0-9\.\,]+)")
    flexible = lm_eval.RegexFilter(regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)
    assert (strict.apply([[text]], [{}])[0][0], flexible.apply([[text]], [{}])[0][0]) == expected


def test_gsm8k_exact_match_is_lm_eval_s_with_the_task_s_regexes_to_ignore():
    task = get_task("gsm8k", TaskData(path=str(FIXTURES / "gsm8k")))
    doc = task.docs("test")[1]  # gold "...#### 1,000"
    scores = task.score_generation(doc, " 1200 - 200 = 1,000 hens remain.")
    assert scores == {"exact_match": ("[invalid]", False), "exact_match_flexible": ("1,000", True)}
    assert task.score_generation(doc, " #### $1000.")["exact_match"] == ("[invalid]", False)  # "$" is no digit
    assert task.score_generation(doc, " so #### 1000.")["exact_match"] == ("1000.", True)
    metrics = pytest.importorskip("lm_eval.api.metrics")
    ignore = [",", "\\$", "(?s).*#### ", "\\.$"]
    for prediction in ("1,000", "1000.", "$1,000", "[invalid]", "999"):
        theirs = metrics.exact_match_hf_evaluate([prediction], [doc["answer"]], regexes_to_ignore=ignore,
                                                  ignore_case=True)["exact_match"]
        from harvest.tasks.gsm8k import normalise

        assert theirs == float(normalise(prediction) == task.gold_label(doc))


def test_training_pairs_end_with_eos_and_a_cut_is_counted(tmp_path):
    pytest.importorskip("transformers")
    from harvest.testing import build_tokenizer
    from harvest.tasks.training import encode_training_examples

    tok = build_tokenizer(tmp_path)
    task = get_task("gsm8k", TaskData(path=str(FIXTURES / "gsm8k")))
    pairs, cut = encode_training_examples(tok, task.train_examples(), max_length=10_000)
    assert all(p.ids[-1] == tok.eos_token_id and not p.truncated for p in pairs)
    assert cut.truncated == 0 and cut.warning() is None
    prompt, target = task.train_examples()[0]
    assert tok.decode(pairs[0].ids[pairs[0].target_start:]) == target + tok.eos_token
    short, cut = encode_training_examples(tok, task.train_examples(), max_length=24)
    assert cut.truncated == cut.total == 5 and all(len(p.ids) == 24 and p.ids[-1] == tok.eos_token_id for p in short)
    assert cut.warning().startswith("5 of 5 finetuning examples were longer than max_length 24 tokens")
    plain, _ = encode_training_examples(tok, task.train_examples(), max_length=10_000, eos=False)
    assert [len(p.ids) for p in plain] == [len(p.ids) - 1 for p in pairs]
