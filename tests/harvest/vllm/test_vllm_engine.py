"""The vLLM engine against plain transformers and the HF engine, on a tiny trained Llama.

Per-choice log-probabilities must agree within ``TOL`` nats and every prediction must be
identical; a LoRA adapter scored through vLLM must match the same adapter merged into the
weights (``merge_and_unload``) and scored by transformers, and must move the scores away from
the base (else a silently ignored adapter would pass); greedy generation must equal
transformers' greedy output and stop where asked.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM tests run in the vLLM venv (scripts/ci_vllm.sh)")
torch = pytest.importorskip("torch")

from emergence.errors import CheckpointError, SpecError  # noqa: E402
from harvest.engines.base import ChoiceRequest, GenerateRequest, ModelRef  # noqa: E402

from vllm_reference import (MAX_LENGTH, REQUESTS, TOL, assert_same_scores,  # noqa: E402
                            reference_generate, reference_scores)

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def engine(models):
    """Closed at the end of this module: one in-process vLLM engine at a time (docs/vllm.md)."""
    from harvest.engines.vllm_engine import VLLMEngine

    # max_loras=1: the two adapters must swap in and out of the single GPU slot between calls.
    eng = VLLMEngine(ModelRef(str(models["base"])), max_loras=1, max_lora_rank=8,
                     gpu_memory_utilization=0.1, enforce_eager=True)
    yield eng
    eng.close()


def hf_engine(folder):
    """The project's HF engine when it exists (it is written in parallel with this one)."""
    hf = pytest.importorskip("harvest.engines.hf", reason="harvest/engines/hf.py not written yet")
    return hf.HFEngine(ModelRef(str(folder)), max_length=MAX_LENGTH)


# ---------------------------------------------------------------------- scoring


def test_base_scores_match_transformers(engine, models):
    got = engine.score_choices(REQUESTS)
    assert_same_scores(got, reference_scores(models["base"], REQUESTS), "base vs transformers")
    assert [len(s.n_tokens) for s in got] == [len(r.continuations) for r in REQUESTS]
    assert got[1].n_tokens[1] > 1 and all(n == 1 for n in got[2].n_tokens)  # both paths exercised
    assert engine.max_length == MAX_LENGTH < len(engine.tok.encode(REQUESTS[4].context))  # cut


def test_base_scores_match_hf_engine(engine, models):
    hf = hf_engine(models["base"])
    want = hf.score_choices(REQUESTS)
    got = engine.score_choices(REQUESTS)
    assert_same_scores(got, [list(s.logprobs) for s in want], "base vs HFEngine")
    assert [s.n_tokens for s in got] == [s.n_tokens for s in want]


def test_lora_scores_match_merged_weights(engine, models):
    base = engine.score_choices(REQUESTS)
    for adapter, merged in zip(models["adapters"], models["merged"]):
        got = engine.score_choices(REQUESTS, adapter=str(adapter))
        assert_same_scores(got, reference_scores(merged, REQUESTS), f"LoRA vs merged {merged.name}")
        moved = max(abs(a - b) for g, b0 in zip(got, base) for a, b in zip(g.logprobs, b0.logprobs))
        assert moved > 0.5, "the adapter did not change the scores: vLLM ignored it"


def test_adapters_interleaved_with_base_keep_their_numbers(engine, models):
    """A, B, base, A again with one LoRA slot: swapping must not leak weights between calls."""
    a, b = (str(p) for p in models["adapters"])
    first = engine.score_choices(REQUESTS, adapter=a)
    engine.score_choices(REQUESTS, adapter=b)
    base = engine.score_choices(REQUESTS)
    again = engine.score_choices(REQUESTS, adapter=a)
    assert [s.logprobs for s in again] == [s.logprobs for s in first]
    assert_same_scores(base, reference_scores(models["base"], REQUESTS), "base after adapters")


def test_lora_scores_match_hf_engine_with_adapter(engine, models):
    hf = hf_engine(models["base"])
    adapter = str(models["adapters"][0])
    want = hf.score_choices(REQUESTS, adapter=adapter)
    got = engine.score_choices(REQUESTS, adapter=adapter)
    assert_same_scores(got, [list(s.logprobs) for s in want], "LoRA vs HFEngine with the adapter")


def test_a_unit_goes_to_vllm_in_one_call_with_the_numbers_of_64_per_call(engine, models, monkeypatch):
    """Issue 18: ``harvest.evaluate`` hands vLLM all of a unit's requests in one call (no cap of
    64); the rows equal those of 64 requests per call and of the HF engine: predictions
    identical, log-probabilities within ``TOL``. Letter answers (prompts merged across items)
    and text answers (prompt log-probs), 90 items each."""
    from harvest.evaluate import evaluate_task, plan_task
    from harvest.spec import TaskSpec

    calls, real = [], engine.score_choices
    monkeypatch.setattr(engine, "score_choices", lambda reqs, adapter=None: calls.append(len(reqs)) or real(reqs, adapter))
    hf = hf_engine(models["base"])
    for answer in ("letter", "text"):
        plan = plan_task(TaskSpec(task="synthetic_arithmetic", name="arith", shots=1,
                                  options={"n_train": 8, "n_test": 90, "answer": answer}))
        calls.clear()
        whole = evaluate_task(engine, plan, "tiny")
        assert calls == [90], answer
        with monkeypatch.context() as mp:
            mp.setattr(engine, "requests_per_call", 64)
            calls.clear()
            chunked = evaluate_task(engine, plan, "tiny")
            assert calls == [64, 26], answer
        want = evaluate_task(hf, plan, "tiny")
        for other, label in ((chunked, "64 per call"), (want, "HF engine")):
            assert whole["prediction"].to_list() == other["prediction"].to_list(), (answer, label)
            gap = max(abs(a - b) for x, y in zip(whole["choice_logprobs"].to_list(), other["choice_logprobs"].to_list())
                      for a, b in zip(x, y))
            assert gap < TOL, (answer, label, gap)
            print(f"{answer} answers, one call vs {label}: max gap {gap:.2e} nats")


# ---------------------------------------------------------------------- generation and loss

PROMPTS = [
    GenerateRequest("Question: what colour is the sky? Answer:", max_new_tokens=24),
    GenerateRequest("the quick brown", max_new_tokens=24, stop=(".",)),
    GenerateRequest("Question: what do cows drink? Answer:", max_new_tokens=24, stop=("\n", "Question")),
]


def test_greedy_generation_matches_transformers(engine, models):
    got = engine.generate(PROMPTS)
    want = [reference_generate(models["base"], p.prompt, p.max_new_tokens, p.stop) for p in PROMPTS]
    assert got == want
    hf = hf_engine(models["base"])  # one request per call: its batches share stop strings
    assert got == [hf.generate([p])[0] for p in PROMPTS]
    assert got[1] and "." not in got[1] and "Question" not in got[2]


def test_stop_string_cuts_the_generation_without_changing_it(engine, models):
    """A word from the middle of an unstopped generation, used as the stop string, cuts both
    engines' output before its first occurrence and changes nothing before it. (The stop is
    taken from the model's own text: which strings a random tiny model emits depends on its
    weights and library versions.)"""
    prompt = "the quick brown"
    free = engine.generate([GenerateRequest(prompt, max_new_tokens=24)])[0]
    words = free.split()
    assert len(words) >= 4, free
    stop = words[len(words) // 2]
    want = free[: free.index(stop)]
    request = GenerateRequest(prompt, max_new_tokens=24, stop=(stop,))
    assert engine.generate([request])[0] == want
    assert hf_engine(models["base"]).generate([request])[0] == want


def test_generation_with_adapter_matches_merged(engine, models):
    adapter, merged = str(models["adapters"][0]), models["merged"][0]
    want = [reference_generate(merged, p.prompt, p.max_new_tokens, p.stop) for p in PROMPTS]
    assert engine.generate(PROMPTS, adapter=adapter) == want


def test_token_nll_matches_transformers(engine, models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = ["the quick brown fox jumps over the lazy dog. " * 12, "a bird sang in the tall tree.", "A"]
    nll, count = engine.token_nll(texts, max_length=64)
    tok = AutoTokenizer.from_pretrained(models["base"])
    model = AutoModelForCausalLM.from_pretrained(models["base"], dtype=torch.float32).eval()
    want, n = 0.0, 0
    for text in texts:
        ids = tok.encode(text)
        for start in range(0, len(ids), 64):
            window = torch.tensor([ids[start:start + 64]])
            if window.shape[1] > 1:
                with torch.no_grad():
                    want += float(model(window, labels=window).loss) * (window.shape[1] - 1)
                n += window.shape[1] - 1
    assert count == n and count > 64  # several windows, the last partial
    assert abs(nll - want) < TOL * count


# ---------------------------------------------------------------------- refusals


def test_adapter_without_safetensors_is_refused(engine, tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}')
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="safetensors only"):
        engine.score_choices(REQUESTS[:1], adapter=str(tmp_path))


def test_adapter_on_lm_head_or_too_large_rank_is_refused(engine, models, tmp_path):
    import json
    import shutil

    for name, change, message in (("head", {"target_modules": ["q_proj", "lm_head"]}, "lm_head"),
                                  ("rank", {"r": 32}, "max_lora_rank")):
        folder = tmp_path / name
        shutil.copytree(models["adapters"][0], folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=message):
            engine.score_choices(REQUESTS[:1], adapter=str(folder))


def test_continuation_longer_than_max_length_is_refused(engine):
    with pytest.raises(SpecError, match="does not fit"):
        engine.score_choices([ChoiceRequest("Question:", (" the cat sat on the mat." * 80,))])


def test_missing_checkpoint_is_one_line_error(tmp_path):
    from harvest.engines.vllm_engine import VLLMEngine

    with pytest.raises(CheckpointError, match="not found"):
        VLLMEngine(ModelRef(str(tmp_path / "nothing")))


def test_checkpoint_without_safetensors_is_one_line_error(models, tmp_path):
    """A folder whose weights are a pickle (pytorch_model.bin) is refused, never unpickled."""
    import shutil

    from harvest.engines.vllm_engine import VLLMEngine

    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(models["base"] / name, tmp_path / name)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle either")
    with pytest.raises(CheckpointError, match="vLLM cannot load it"):
        VLLMEngine(ModelRef(str(tmp_path)), gpu_memory_utilization=0.1, enforce_eager=True)


def test_bad_engine_options_are_spec_errors(models):
    from harvest.engines.vllm_engine import VLLMEngine

    with pytest.raises(SpecError, match="bad option"):
        VLLMEngine(ModelRef(str(models["base"])), no_such_option=1)
    with pytest.raises(SpecError, match="max_lora_rank"):
        VLLMEngine(ModelRef(str(models["base"])), max_lora_rank=4)
    with pytest.raises(SpecError, match="max_position_embeddings"):  # positions the model never saw
        VLLMEngine(ModelRef(str(models["base"])), max_length=MAX_LENGTH + 1)
