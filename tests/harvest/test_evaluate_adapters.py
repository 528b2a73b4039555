"""Several adapters scored in one engine call give the rows of one call per adapter.

The engine is a stand-in with deterministic answers per (request, adapter), counting its calls:
the batched path must change how the engine is called, never the rows. The vLLM engine's own
batched calls are tested for real in ``tests/harvest/vllm/test_vllm_sweep.py``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from harvest.engines.base import ChoiceScore
from harvest.evaluate import AdapterRun, evaluate_adapters, evaluate_task, plan_task
from harvest.spec import TaskSpec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _number(*parts) -> float:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16) / 2**32


class OneAtATime:
    """Answers depend on the request and the adapter only."""

    requests_per_call = 3  # several calls per unit on the one-by-one path

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def score_choices(self, requests, adapter=None):
        self.calls.append(("score", 1))
        return [ChoiceScore(tuple(-_number(r.context, c, adapter) for c in r.continuations),
                            tuple(1 for _ in r.continuations)) for r in requests]

    def generate(self, requests, adapter=None):
        self.calls.append(("generate", 1))
        return [f" {int(_number(r.prompt, adapter) * 20)}\n#### {int(_number(r.prompt, adapter) * 20)}" for r in requests]


class Batched(OneAtATime):
    def score_choices_adapters(self, requests, adapters):
        self.calls.append(("score", len(adapters)))
        return [OneAtATime.score_choices(self, requests, a) for a in adapters]

    def generate_adapters(self, requests, adapters):
        self.calls.append(("generate", len(adapters)))
        return [OneAtATime.generate(self, requests, a) for a in adapters]


@pytest.mark.parametrize("spec", [
    TaskSpec(task="synthetic_arithmetic", name="arith", shots=1, options={"n_train": 8, "n_test": 7}),
    TaskSpec(task="mmlu", name="mmlu", shots=2, data=str(FIXTURES / "mmlu")),
    TaskSpec(task="gsm8k", name="gsm8k", shots=1, data=str(FIXTURES / "gsm8k")),
], ids=lambda s: s.name)
def test_batched_adapters_give_the_rows_of_one_call_each(spec):
    plan = plan_task(spec)
    runs = [AdapterRun(f"/adapters/{n}-{s}", n, s) for n in (4, 16) for s in (0, 1)]
    one, batched = OneAtATime(), Batched()
    expected = [evaluate_task(one, plan, "ck", setting="finetune", n_train=r.n_train, subset_seed=r.subset_seed,
                              adapter=r.adapter) for r in runs]
    got = evaluate_adapters(batched, plan, "ck", runs, setting="finetune")
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected):
        assert a.equals(b)
    assert len({tuple(f["prediction"]) for f in got}) > 1  # the adapters' answers differ
    batched.calls = [c for c in batched.calls if c[1] > 1]  # the inner per-adapter replays aside
    assert len(batched.calls) == 1 and batched.calls[0][1] == 4  # one call for the four adapters
    assert len(one.calls) > 4  # one call per chunk and adapter, for comparison
    # an engine without the batched methods: one evaluate_task per adapter, same rows
    plain = evaluate_adapters(OneAtATime(), plan, "ck", runs, setting="finetune")
    assert all(a.equals(b) for a, b in zip(plain, expected))
