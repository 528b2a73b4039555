"""Parity with lm-evaluation-harness on the four real task formats (MMLU, GSM8K, CommonsenseQA, CoLA).

The project's fixtures (``tests/fixtures/<task>/``, rows in the exact Hugging Face columns of
``cais/mmlu``, ``openai/gsm8k`` main, ``tau/commonsense_qa`` and ``nyu-mll/glue`` cola) are
evaluated twice with the same tiny local model: by our engine (``plan_task`` then
``evaluate_task``, as a harvest run does) and by lm-eval 0.4.13 offline. lm-eval's side is its
own task YAML, read from the installed package (``lm_eval/tasks/...``) with ``include`` resolved,
with only the data source swapped for the local fixture files (``dataset_path: json``/``csv``):
doc_to_text, doc_to_target, doc_to_choice, description, delimiters, sampler,
generation_kwargs, metrics and filters are lm-eval's own. Checked per item: the prompt byte for
byte; multiple choice: continuations, log-likelihoods within ``TOL`` nats and the same pick;
GSM8K: the same generation and, for each of lm-eval's two filters (strict-match,
flexible-extract), the same extracted answer and the same exact-match verdict, reported by us
as two metrics; CoLA: the same Matthews correlation. See ``../shared/notes/lm-eval-parity.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("lm_eval")
pytestmark = [pytest.mark.parity, pytest.mark.harvest]

from harvest.engines.base import ModelRef  # noqa: E402
from harvest.evaluate import evaluate_task, plan_task  # noqa: E402
from harvest.spec import TaskSpec  # noqa: E402
from harvest.tasks.metrics import EXACT_MATCH, EXACT_MATCH_FLEXIBLE, item_columns, unit_results  # noqa: E402
from harvest.testing import build_tiny_llama  # noqa: E402

TOL = 1e-4  # nats
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# the tasks' default shots (the paper's; gsm8k.yaml's 5), but MMLU: its fixture has 3 dev rows a subject
SHOTS = {"mmlu": 3, "gsm8k": 5, "commonsense_qa": 6, "cola": 5}
MMLU_SUBJECTS = ("high_school_biology", "elementary_mathematics")


def lm_eval_yaml(relative: str) -> dict:
    """lm-eval's own task config (``include`` resolved), from the installed package."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml  # what TaskManager reads YAMLs with (0.4.13)

    return load_yaml(Path(lm_eval.__file__).parent / "tasks" / relative)


def local(config: dict, name: str, builder: str, files: dict[str, Path], shots: int) -> dict:
    """``config`` reading ``files`` (split -> local file) instead of the hub dataset."""
    config = {k: v for k, v in config.items() if k not in ("tag", "dataset_name", "task_alias")}
    config.update(task=name, dataset_path=builder, num_fewshot=shots,
                  dataset_kwargs={"data_files": {split: str(path) for split, path in files.items()}})
    return config


def lm_eval_tasks(folder: Path) -> dict[str, dict]:
    """Our task name (or ``mmlu_<subject>``) -> lm-eval task dict over the fixtures."""
    tasks = {}
    for subject in MMLU_SUBJECTS:  # cais/mmlu's per-subject configs: the "all" rows of one subject
        files = {}
        for split in ("dev", "test"):
            rows = [line for line in (FIXTURES / "mmlu" / f"{split}.jsonl").read_text().splitlines()
                    if json.loads(line)["subject"] == subject]
            files[split] = folder / f"mmlu_{subject}_{split}.jsonl"
            files[split].write_text("\n".join(rows) + "\n")
        tasks[f"mmlu_{subject}"] = local(lm_eval_yaml(f"mmlu/default/mmlu_{subject}.yaml"), f"mmlu_{subject}",
                                         "json", files, SHOTS["mmlu"])
    gsm8k = FIXTURES / "gsm8k"
    tasks["gsm8k"] = local(lm_eval_yaml("gsm8k/gsm8k.yaml"), "gsm8k", "json",
                           {"train": gsm8k / "train.jsonl", "test": gsm8k / "test.jsonl"}, SHOTS["gsm8k"])
    csqa = FIXTURES / "commonsense_qa"
    tasks["commonsense_qa"] = local(lm_eval_yaml("commonsense_qa/default.yaml"), "commonsense_qa", "json",
                                    {"train": csqa / "train.json", "validation": csqa / "validation.json"},
                                    SHOTS["commonsense_qa"])
    cola = FIXTURES / "cola"
    tasks["cola"] = local(lm_eval_yaml("glue/cola/default.yaml"), "cola", "csv",
                          {"train": cola / "train.csv", "validation": cola / "validation.csv"}, SHOTS["cola"])
    return tasks


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """(our plans and item rows per task, lm-eval's output), computed once for the module."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from harvest.engines.hf import HFEngine

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("parity_real")
    model = build_tiny_llama(folder / "model", init_std=0.1)
    configs = lm_eval_tasks(folder)
    with pytest.MonkeyPatch.context() as mp:  # a mistyped path must not retry the hub
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        out = simple_evaluate(model="hf", model_args=f"pretrained={model},dtype=float32",
                              tasks=list(configs.values()), device="cpu", batch_size=8, log_samples=True,
                              bootstrap_iters=0,  # stderr only; MCC's bootstrap takes minutes
                              task_manager=TaskManager(include_defaults=False))
    engine = HFEngine(ModelRef(str(model)), batch_size=8)
    ours = {}
    for name in ("mmlu", "gsm8k", "commonsense_qa", "cola"):
        plan = plan_task(TaskSpec(task=name, name=name, shots=SHOTS[name], data=str(FIXTURES / name)))
        ours[name] = (plan, evaluate_task(engine, plan, "tiny"))
    ours["engine"] = engine
    return ours, out


def samples(out, task: str, filter_name: str = "none") -> list[dict]:
    rows = [s for s in out["samples"][task] if s.get("filter", "none") == filter_name]
    return sorted(rows, key=lambda s: s["doc_id"])


def check_multiple_choice(items, rows, theirs) -> None:
    """Per item: prompt, continuations, log-likelihoods (within ``TOL``) and pick."""
    assert len(items) == len(theirs) == rows.height
    for it, row, sample in zip(items, rows.iter_rows(named=True), theirs):
        args = sample["arguments"]
        assert all(context == it.context for context, _ in args)  # the prompt, byte for byte
        assert tuple(cont for _, cont in args) == it.continuations
        lls = [float(r[0][0]) for r in sample["resps"]]
        assert row["choice_logprobs"] == pytest.approx(lls, abs=TOL)
        pick = max(range(len(lls)), key=lambda i: (lls[i], -i))
        assert row["prediction"] == str(pick)  # the same answer
        if "acc" in sample:
            assert sample["acc"] == float(pick == it.gold) == float(row["correct"])


def test_mmlu_matches_lm_eval_mmlu_subject_tasks(both):
    """lm-eval's ``mmlu_<subject>`` (description per subject, ``first_n`` dev shots, letters)."""
    ours, out = both
    plan, rows = ours["mmlu"]
    for subject in MMLU_SUBJECTS:
        mine = [i for i, it in enumerate(plan.items) if it.doc["subject"] == subject]
        check_multiple_choice([plan.items[i] for i in mine], rows[mine], samples(out, f"mmlu_{subject}"))
        assert plan.items[mine[0]].context.startswith(  # the description names the subject, spaced
            f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n")


def test_commonsense_qa_matches_lm_eval(both):
    ours, out = both
    plan, rows = ours["commonsense_qa"]
    check_multiple_choice(plan.items, rows, samples(out, "commonsense_qa"))


def test_cola_matches_lm_eval_including_mcc(both):
    ours, out = both
    plan, rows = ours["cola"]
    theirs = samples(out, "cola")
    check_multiple_choice(plan.items, rows, theirs)
    assert [int(s["mcc"][0]) for s in theirs] == [int(g) for g in rows["gold"]]
    assert [int(s["mcc"][1]) for s in theirs] == [int(p) for p in rows["prediction"]]
    results = {r["metric"]: r["value"] for r in unit_results(plan.task.metrics(), rows.to_dict(as_series=False))}
    assert results["mcc"] == pytest.approx(out["results"]["cola"]["mcc,none"], abs=1e-12)
    assert -1.0 < results["mcc"] < 1.0 and results["mcc"] != 0.0  # not a degenerate (constant) prediction


def test_gsm8k_generations_and_both_filters_match_lm_eval(both):
    """Same greedy generation; each of lm-eval's filters extracts the same answer as our metric."""
    from harvest.engines.base import GenerateRequest

    ours, out = both
    plan, rows = ours["gsm8k"]
    task, engine = plan.task, ours["engine"]
    strict, flexible = samples(out, "gsm8k", "strict-match"), samples(out, "gsm8k", "flexible-extract")
    assert len(strict) == len(flexible) == len(plan.items) == rows.height
    texts = engine.generate([GenerateRequest(it.context, task.max_new_tokens, task.stop) for it in plan.items])
    gen_kwargs = strict[0]["arguments"][0][1]
    assert tuple(gen_kwargs["until"]) == task.stop and gen_kwargs["do_sample"] is False
    assert task.max_new_tokens == gen_kwargs.get("max_gen_toks", 256)  # HFLM's default budget
    columns: dict[str, list] = {"gold": list(rows["gold"])}
    for it, text, row, s, f in zip(plan.items, texts, rows.iter_rows(named=True), strict, flexible):
        assert s["arguments"][0][0] == it.context  # the prompt, byte for byte
        # The generation. Deliberate, documented difference (harvest/engines/hf.py
        # ``_generated_text``): a generation cut by max_new_tokens inside a multi-byte character
        # ends in U+FFFD in lm-eval; our engines hold those bytes back, as vLLM does.
        assert s["resps"][0][0] == f["resps"][0][0]
        assert text == s["resps"][0][0].rstrip("\ufffd")
        scored = task.score_generation(it.doc, text)
        for metric, sample in ((EXACT_MATCH, s), (EXACT_MATCH_FLEXIBLE, f)):
            prediction, correct = scored[metric]
            assert prediction == sample["filtered_resps"][0]  # the extracted answer
            assert float(correct) == sample["exact_match"]
            for column, value in zip(item_columns(metric, EXACT_MATCH), (prediction, correct)):
                columns.setdefault(column, []).append(value)
        assert (row["prediction"], row["correct"]) == scored[EXACT_MATCH]  # what a harvest run stores
    results = {r["metric"]: r["value"] for r in unit_results(task.metrics(), columns)}
    assert results == {EXACT_MATCH: pytest.approx(out["results"]["gsm8k"]["exact_match,strict-match"]),
                       EXACT_MATCH_FLEXIBLE: pytest.approx(out["results"]["gsm8k"]["exact_match,flexible-extract"])}


# Completions a tiny random model never writes: the strict filter's ``#### N``, thousands
# separators, dollars, decimals, negative numbers, no number at all.
COMPLETIONS = (" He buys 5 * 8 = <<5*8=40>>40 marbles.\n#### 40", " 1,200 - 200 = 1,000 hens.\n#### 1,000",
               " The answer is $1,000.", " #### 1000\n\n", " He walks 12 miles.", " It is -3.5 or 12.",
               " #### 3.", " no idea", "#### 12 then #### 13", " 3 slices.\n#### $3")


def test_gsm8k_filters_and_exact_match_are_lm_eval_s_from_its_yaml():
    """lm-eval's filter pipelines and exact_match, built from gsm8k.yaml, on every completion and gold."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.api.registry import get_filter

    from harvest.tasks import TaskData, get_task

    config = lm_eval_yaml("gsm8k/gsm8k.yaml")
    task = get_task("gsm8k", TaskData(path=str(FIXTURES / "gsm8k")))
    metric_kwargs = {k: v for k, v in config["metric_list"][0].items()
                     if k in ("regexes_to_ignore", "ignore_case", "ignore_punctuation")}
    ours_name = {"strict-match": EXACT_MATCH, "flexible-extract": EXACT_MATCH_FLEXIBLE}
    assert [f["name"] for f in config["filter_list"]] == list(ours_name)
    docs = task.docs("test")
    for doc in docs:
        for text in COMPLETIONS:
            scored = task.score_generation(doc, text)
            for pipeline in config["filter_list"]:
                resps = [[text]]
                for step in pipeline["filter"]:
                    kwargs = {k: v for k, v in step.items() if k != "function"}
                    resps = list(get_filter(step["function"])(**kwargs).apply(resps, [doc]))
                theirs = resps[0]
                prediction, correct = scored[ours_name[pipeline["name"]]]
                assert prediction == theirs, (pipeline["name"], text)
                em = exact_match_hf_evaluate([theirs], [doc["answer"]], **metric_kwargs)["exact_match"]
                assert float(correct) == em, (pipeline["name"], text, doc["answer"])
    # the crafted completions reach both outcomes under both filters
    outcomes = {(m, ok) for doc in docs for t in COMPLETIONS for m, (_, ok) in task.score_generation(doc, t).items()}
    assert outcomes == {(m, ok) for m in (EXACT_MATCH, EXACT_MATCH_FLEXIBLE) for ok in (True, False)}
