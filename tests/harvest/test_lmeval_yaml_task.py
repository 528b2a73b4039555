"""A task given as an lm-evaluation-harness task YAML (``task = "lm_eval_yaml"``, option ``yaml``).

The YAMLs under ``tests/fixtures/lm_eval_yaml`` are lm-eval 0.4.13's ``commonsense_qa`` and
``gsm8k`` tasks (gsm8k without its regex filters): on the project's fixtures they give the
built-in tasks' prompts, continuations, golds, stops and training pairs, and (when lm_eval is
installed) the prompts lm-eval itself renders from the same YAML. Unsupported fields are refused
with one line naming the field and the file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from emergence.errors import MissingExtraError, SpecError
from harvest.tasks import TaskData, get_task
from harvest.tasks.fewshot import build_items

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
YAMLS = FIXTURES / "lm_eval_yaml"


def items(task, k: int, seed: int = 1234):
    rows = task.docs(task.eval_split)
    pool = task.docs(task.fewshot_split)
    return build_items(task, [(task.doc_id(d, task.eval_split, i), d) for i, d in enumerate(rows)], pool, k, seed,
                       task.eval_split == task.fewshot_split)


def pair(name: str):
    data = TaskData(str(FIXTURES / name))
    return get_task(name, data), get_task("lm_eval_yaml", data, yaml=str(YAMLS / f"{name}.yaml"))


def test_commonsense_qa_yaml_gives_the_built_in_prompts():
    builtin, task = pair("commonsense_qa")
    assert task.kind == "multiple_choice" and task.chance == builtin.chance == 0.2
    assert (task.eval_split, task.fewshot_split, task.train_split) == ("validation", "train", "train")
    assert task.fewshot_draws_extra is True  # lm-eval: fewshot_split == test_split (None == None)
    for k in (0, 1, 3):
        ours, theirs = items(task, k), items(builtin, k)
        assert [(i.context, i.continuations, i.gold) for i in ours] == \
            [(i.context, i.continuations, i.gold) for i in theirs]
    assert task.train_examples() == builtin.train_examples()
    rows = task.docs("validation")
    assert [task.gold_label(d) for d in rows] == [builtin.gold_label(d) for d in rows]
    assert [m.name for m in task.metrics()] == ["accuracy"]


def test_gsm8k_yaml_gives_the_built_in_prompts_and_stops():
    builtin, task = pair("gsm8k")
    assert task.kind == "generation"
    assert task.stop == builtin.stop == ("Question:", "</s>", "<|im_end|>")
    assert task.max_new_tokens == builtin.max_new_tokens and task.default_shots == builtin.default_shots == 5
    assert (task.eval_split, task.fewshot_split, task.train_split) == ("test", "train", "train")
    assert task.fewshot_draws_extra is builtin.fewshot_draws_extra is False
    for k in (0, 3):
        assert [i.context for i in items(task, k)] == [i.context for i in items(builtin, k)]
    assert task.train_examples() == builtin.train_examples()
    doc = task.docs("test")[1]  # gold "... #### 1,000"
    assert task.gold_label(doc) == builtin.gold_label(doc) == "1000"
    assert task.score_generation(doc, " so #### 1,000.")["exact_match"][1] is True  # regexes_to_ignore
    assert task.score_generation(doc, " so #### 999")["exact_match"][1] is False
    assert [m.name for m in task.metrics()] == ["exact_match"]


def test_field_name_template_and_choice_forms(tmp_path):
    rows = tmp_path / "data"
    rows.mkdir()
    (rows / "test.jsonl").write_text('{"q": "2+2?", "opts": ["3", "4"], "label": 1, "desc": "Sums."}\n')
    for choice in ("opts", "'{{opts}}'", "['3', '4']"):
        y = tmp_path / "t.yaml"
        y.write_text(f"dataset_path: x\ntest_split: test\noutput_type: multiple_choice\ndoc_to_text: q\n"
                     f"doc_to_target: label\ndoc_to_choice: {choice}\ndescription: \"{{{{desc}}}}\\n\\n\"\n")
        task = get_task("lm_eval_yaml", TaskData(str(rows)), yaml=str(y))
        doc = task.docs("test")[0]
        assert task.choices(doc) == ["3", "4"] and task.gold(doc) == 1 and task.target(doc) == "4"
        assert task.prefix(doc) + task.doc_to_text(doc) == "Sums.\n\n2+2?"


BASE = ("dataset_path: x\ntest_split: test\noutput_type: multiple_choice\ndoc_to_text: q\n"
        "doc_to_target: label\ndoc_to_choice: opts\n")


@pytest.mark.parametrize("extra, field", [
    ("process_docs: !function utils.process_docs\n", "process_docs"),
    ("include: _default_template_yaml\n", "include"),
    ("metadata:\n  hook: !function utils.hook\n", "metadata.hook"),
    ("filter_list:\n  - name: m\n    filter:\n      - function: regex\n        regex_pattern: x\n", "filter_list[0]"),
    ("metric_list:\n  - metric: acc_norm\n", "metric_list[0]"),
    ("target_delimiter: ''\n", "target_delimiter"),
    ("fewshot_delimiter: '\\n'\n", "fewshot_delimiter"),
    ("fewshot_config:\n  sampler: first_n\n", "fewshot_config"),
    ("dataset_kwargs:\n  data_files: a.json\n", "dataset_kwargs"),
    ("something_new: 1\n", "something_new"),
])
def test_unsupported_fields_are_refused_in_one_line(tmp_path, extra, field):
    y = tmp_path / "t.yaml"
    y.write_text(BASE + extra)
    with pytest.raises(SpecError) as err:
        get_task("lm_eval_yaml", yaml=str(y))
    message = str(err.value)
    assert "\n" not in message and f": {field}:" in message and str(y) in message


def test_unsupported_output_type_and_missing_option(tmp_path):
    y = tmp_path / "t.yaml"
    y.write_text(BASE.replace("multiple_choice", "loglikelihood"))
    with pytest.raises(SpecError, match="output_type"):
        get_task("lm_eval_yaml", yaml=str(y))
    with pytest.raises(SpecError, match="option yaml"):
        get_task("lm_eval_yaml")
    with pytest.raises(SpecError, match="cannot read"):
        get_task("lm_eval_yaml", yaml=str(tmp_path / "missing.yaml"))


def _spec(tmp_path, table: str):
    from harvest.spec import load_spec

    (tmp_path / "spec.toml").write_text(
        '[[checkpoints]]\nname = "c"\npath = "."\nfamily = "f"\nparams = 1\ntokens = 1\npretrain_loss = 3.0\n'
        f"[[tasks]]\n{table}\n")
    return load_spec(tmp_path / "spec.toml")


def test_spec_reads_the_yaml_relative_to_itself_and_refuses_bad_fields_when_read(tmp_path):
    (tmp_path / "t.yaml").write_text((YAMLS / "gsm8k.yaml").read_text())
    spec = _spec(tmp_path, f'task = "lm_eval_yaml"\nname = "gsm8k_yaml"\ndata = "{FIXTURES / "gsm8k"}"\n'
                           'options = { yaml = "t.yaml" }')
    assert spec.tasks[0].options["yaml"] == str((tmp_path / "t.yaml").resolve())
    (tmp_path / "t.yaml").write_text(BASE + "process_docs: !function utils.process_docs\n")
    with pytest.raises(SpecError) as err:
        _spec(tmp_path, 'task = "lm_eval_yaml"\noptions = { yaml = "t.yaml" }')
    assert "\n" not in str(err.value) and "tasks[0].options" in str(err.value) and "process_docs" in str(err.value)


def test_missing_jinja2_is_a_one_line_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(MissingExtraError, match="jinja2"):
        get_task("lm_eval_yaml", yaml=str(YAMLS / "gsm8k.yaml"))


@pytest.mark.parametrize("name, files, k", [
    ("commonsense_qa", {"train": "train.json", "validation": "validation.json"}, 3),
    ("gsm8k", {"train": "train.jsonl", "test": "test.jsonl"}, 3),
])
def test_prompts_are_byte_identical_to_lm_eval_s_rendering(name, files, k):
    pytest.importorskip("lm_eval")
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    config = dict(load_yaml(YAMLS / f"{name}.yaml"))
    config.update(dataset_path="json", dataset_name=None, num_fewshot=k,
                  dataset_kwargs={"data_files": {s: str(FIXTURES / name / f) for s, f in files.items()}})
    theirs = ConfigurableTask(config=config)
    theirs.set_fewshot_seed(seed=1234)
    task = get_task("lm_eval_yaml", TaskData(str(FIXTURES / name)), yaml=str(YAMLS / f"{name}.yaml"))
    ours = items(task, k)
    docs = list(theirs.eval_docs)
    assert len(docs) == len(ours)
    for item, doc in zip(ours, docs):
        assert item.context == theirs.fewshot_context(doc, k)
        if task.kind == "multiple_choice":
            assert item.continuations == tuple(" " + c for c in theirs.doc_to_choice(doc))
            assert item.gold == theirs.doc_to_choice(doc).index(theirs.doc_to_target(doc))
        else:
            assert task.stop == tuple(theirs.config.generation_kwargs["until"])
            assert task.target(item.doc) == theirs.doc_to_target(doc)


def test_format_hash_is_the_yaml_s():
    from harvest.tasks import task_class

    csqa, gsm = pair("commonsense_qa")[1], pair("gsm8k")[1]
    hashes = {csqa.format_hash(), gsm.format_hash(), task_class("lm_eval_yaml").format_hash()}
    assert len(hashes) == 3 and csqa.describe()["format_hash"] == csqa.format_hash()
    assert csqa.describe()["yaml_sha256"] == csqa.yaml_sha256 != gsm.yaml_sha256
