"""Parity with lm-evaluation-harness: same tiny local model, same items, same prompts.

lm-eval (0.4.13) runs offline on a task given as a dict over local JSON files (see
``../shared/notes/lm-eval-parity.md``). Our prompts must equal lm-eval's byte for byte, our
per-choice log-likelihoods must equal its within ``TOL`` nats, and every answer must be identical.
"""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("lm_eval")
pytestmark = [pytest.mark.parity, pytest.mark.harvest]

from harvest.engines.base import ChoiceRequest, ModelRef  # noqa: E402
from harvest.tasks.fewshot import build_items  # noqa: E402
from harvest.tasks.synthetic import SyntheticArithmetic  # noqa: E402
from harvest.testing import build_tiny_llama  # noqa: E402

TOL = 1e-4  # nats; both sides run float32, batched differently
N_ITEMS, SHOTS = 40, 3


def ours_and_lm_eval_task(task, folder, name):
    """Our EvalItems and the lm-eval task dict over the same rows dumped to JSON lines."""
    test, train = task.docs("test"), task.docs("train")
    for split, rows in (("test", test), ("train", train)):
        with open(folder / f"{name}_{split}.jsonl", "w") as f:
            for d in rows:
                f.write(json.dumps({"text": task.doc_to_text(d), "choices": task.choices(d), "label": task.gold(d)}) + "\n")
    items = build_items(task, [(d["id"], d) for d in test], train, SHOTS, 1234, same_split=False)
    config = {
        "task": name, "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"train": str(folder / f"{name}_train.jsonl"),
                                          "test": str(folder / f"{name}_test.jsonl")}},
        "test_split": "test", "fewshot_split": "train", "output_type": "multiple_choice",
        "doc_to_text": "text", "doc_to_choice": "choices", "doc_to_target": "label",
        "num_fewshot": SHOTS, "metric_list": [{"metric": "acc"}],
    }
    return items, config


def test_prompts_loglikelihoods_and_answers_match_lm_eval(tmp_path, monkeypatch):
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from harvest.engines.hf import HFEngine

    torch.set_num_threads(1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model = build_tiny_llama(tmp_path / "model", init_std=0.1)
    tasks = {"parity_letters": SyntheticArithmetic(n_test=N_ITEMS, n_train=50),
             "parity_words": SyntheticArithmetic(n_test=N_ITEMS, n_train=50, answer="text")}  # multi-token
    built = {name: ours_and_lm_eval_task(t, tmp_path, name) for name, t in tasks.items()}

    out = simple_evaluate(model="hf", model_args=f"pretrained={model},dtype=float32",
                          tasks=[cfg for _, cfg in built.values()], device="cpu", batch_size=8,
                          log_samples=True, task_manager=TaskManager(include_defaults=False))
    engine = HFEngine(ModelRef(str(model)), batch_size=8)
    for name, (items, _) in built.items():
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        assert len(samples) == N_ITEMS
        ours = engine.score_choices([ChoiceRequest(it.context, it.continuations) for it in items])
        for it, score, sample in zip(items, ours, samples):
            args = sample["arguments"]  # in memory: [(context, continuation)] per choice
            assert all(context == it.context for context, _ in args)  # the prompt, byte for byte
            assert tuple(cont for _, cont in args) == it.continuations
            theirs = [float(r[0][0]) for r in sample["resps"]]
            assert score.logprobs == pytest.approx(theirs, abs=TOL)
            ours_pick = max(range(len(theirs)), key=lambda i: (score.logprobs[i], -i))
            their_pick = max(range(len(theirs)), key=lambda i: (theirs[i], -i))
            assert ours_pick == their_pick and sample["acc"] == float(ours_pick == it.gold)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
