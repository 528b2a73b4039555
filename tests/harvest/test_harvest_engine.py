"""The Hugging Face engine against direct transformers computations on a tiny local Llama."""

from __future__ import annotations

import json
import math
import time
import zlib

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.harvest

import torch  # noqa: E402

from emergence.errors import CheckpointError  # noqa: E402
from harvest.engines.base import ChoiceRequest, GenerateRequest, ModelRef  # noqa: E402
from harvest.engines.hf import HFEngine  # noqa: E402
from harvest.engines.loading import encode_choices, encode_pair, keep_freed_memory  # noqa: E402
from harvest.engines.prefix import shared_prefix_groups, worth_sharing  # noqa: E402
from harvest.loss import measure_loss  # noqa: E402
from harvest.testing import build_tiny_llama, direct_logprob  # noqa: E402

TOL = 1e-4  # nats: float32 rounding of differently batched matmuls

REQUESTS = [
    ChoiceRequest("Question: What is 3 + 4?\nAnswer:", (" 7", " 8", " 12 apples", " seventy")),
    ChoiceRequest("Repeat: a b c", (" a b c", " a c b")),
    ChoiceRequest("the cat sat on the ", ("mat", "dog jumps over")),  # trailing space moves
    ChoiceRequest("x", (" y", " zz top")),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    return build_tiny_llama(tmp_path_factory.mktemp("tiny"), init_std=0.1, max_positions=128)


@pytest.fixture(scope="module")
def engine(tiny):
    return HFEngine(ModelRef(str(tiny)), batch_size=3)


def test_shared_prefix_scores_equal_one_forward_per_choice(engine):
    scores = engine.score_choices(REQUESTS)
    for req, score in zip(REQUESTS, scores):
        for cont, lp, n in zip(req.continuations, score.logprobs, score.n_tokens):
            assert lp == pytest.approx(direct_logprob(engine.model, engine.tok, req.context, cont), abs=TOL)
            assert n == len(encode_pair(engine.tok, req.context, cont)[1])


SHOTS = "Question: What is 2 + 2?\nAnswer: 4\n\nQuestion: Name a colour.\nAnswer: red\n\n" * 2
FIXED_SHOT_REQUESTS = [ChoiceRequest(SHOTS + f"Question: item {i}{' x' * i}?\nAnswer:", (" A", " B b", " C", " dog"))
                       for i in range(6)] + [
    # Shares the string SHOTS + "Questi" with the others, but there "Question" is one token and
    # here "Questi" is: the shared token prefix must end before the word, not at the string prefix.
    ChoiceRequest(SHOTS + "Questi?\nAnswer:", (" A", " B")),
    ChoiceRequest("unrelated", (" A", " B b")),
]


def test_scoring_passes_the_kv_cache_under_the_name_this_transformers_takes(engine):
    """transformers 5.2x renamed forward's ``past_key_values`` to ``cache`` and drops the old name
    in 5.40: shared prefixes and multi-token choices (both reuse a cache) must not use it."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        scores = engine.score_choices(FIXED_SHOT_REQUESTS + REQUESTS)
    assert any(n > 1 for s in scores for n in s.n_tokens)  # the continuation path ran


def test_shared_prefix_groups_compare_token_ids():
    ctxs = [[1, 2, 3, 4, 5, 9], [1, 2, 3, 4, 5, 8, 7], [1, 2, 3, 4, 6], [7, 7], [1, 2, 3, 4, 5]]
    groups, alone = shared_prefix_groups(ctxs, min_shared=4)
    assert groups == [(4, [4, 1, 0, 2])] and alone == [3]  # [1..5] keeps its last token to run
    groups, alone = shared_prefix_groups(ctxs, min_shared=5)
    assert groups == [(5, [1, 0])] and sorted(alone) == [2, 3, 4]


def test_shared_prefix_scores_equal_unshared_scores(engine, monkeypatch):
    import harvest.engines.hf as hf

    ctxs = [engine._encode_request(r)[0] for r in FIXED_SHOT_REQUESTS]
    groups, alone = shared_prefix_groups(ctxs, hf.MIN_SHARED_TOKENS)
    assert len(groups) == 1 and alone == [7] and sorted(groups[0][1]) == list(range(7))
    string_prefix = engine.tok.encode(SHOTS + "Questi")
    assert ctxs[0][:len(string_prefix)] != string_prefix  # the string prefix is no token prefix
    assert groups[0][0] == len(engine.tok.encode(SHOTS))  # ... so sharing stops at the shots
    shared = engine.score_choices(FIXED_SHOT_REQUESTS)
    monkeypatch.setattr(hf, "MIN_SHARED_TOKENS", 10**9)  # no sharing
    plain = engine.score_choices(FIXED_SHOT_REQUESTS)
    for req, a, b in zip(FIXED_SHOT_REQUESTS, shared, plain):
        assert a.logprobs == pytest.approx(b.logprobs, abs=TOL) and a.n_tokens == b.n_tokens
        for cont, lp in zip(req.continuations, a.logprobs):  # and both equal lm-eval's computation
            assert lp == pytest.approx(direct_logprob(engine.model, engine.tok, req.context, cont), abs=TOL)


def test_groups_that_save_little_run_with_the_other_items():
    groups = [(40, [0, 1]), (30, [2, 3, 4, 5]), (200, [6, 7])]
    kept, alone = worth_sharing(groups, [8], min_saved=64)
    assert kept == [(30, [2, 3, 4, 5]), (200, [6, 7])] and alone == [8, 0, 1]  # 40 < 64 <= 90, 200


def test_groups_below_min_saved_tokens_are_scored_unshared(engine, monkeypatch):
    import harvest.engines.hf as hf

    ctxs = [engine._encode_request(r)[0] for r in FIXED_SHOT_REQUESTS]
    (n_shared, members), = shared_prefix_groups(ctxs, hf.MIN_SHARED_TOKENS)[0]
    saved = (len(members) - 1) * n_shared
    calls = []
    score_group = HFEngine._score_group
    monkeypatch.setattr(HFEngine, "_score_group", lambda self, *a: calls.append(a) or score_group(self, *a))
    for min_saved, n_calls in ((saved, 1), (saved + 1, 0)):
        calls.clear()
        monkeypatch.setattr(hf, "MIN_SAVED_TOKENS", min_saved)
        scores = engine.score_choices(FIXED_SHOT_REQUESTS)
        assert len(calls) == n_calls and all(s is not None for s in scores)


def test_encoding_the_context_once_equals_encode_pair(engine):
    for req in REQUESTS + [ChoiceRequest("ends in two spaces  ", ("a", " b")), ChoiceRequest("", ("x y",))]:
        ctx, conts = encode_choices(engine.tok, req.context, req.continuations)
        for cont, ids in zip(req.continuations, conts):
            assert (ctx, ids) == encode_pair(engine.tok, req.context, cont)


def test_last_layer_runs_only_where_logits_are_read(engine):
    """Skipping the last layer's MLP and query/output projections at unread positions changes no
    score; they see one position per item in a context pass (all in the continuation pass)."""
    layer = engine.model.model.layers[-1]
    modules = engine._last_rowwise
    assert modules == [layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp]
    rows = {id(m): [] for m in modules}
    handles = [m.register_forward_hook(lambda m, args, _y: rows[id(m)].append(args[0].shape[:-1].numel()))
               for m in modules]
    try:
        skipped = engine.score_choices(REQUESTS)
    finally:
        for h in handles:
            h.remove()
    for m in modules:  # batch_size=3: contexts of 3 items, their continuations, then the 4th's context
        assert rows[id(m)][0] == 3 and rows[id(m)][1] > 3 and rows[id(m)][2] == 1
        assert not m._forward_hooks and not m._forward_pre_hooks  # our hooks are gone
    engine._last_rowwise = []
    try:
        full = engine.score_choices(REQUESTS)
    finally:
        engine._last_rowwise = modules
    for a, b in zip(skipped, full):
        assert a.logprobs == pytest.approx(b.logprobs, abs=TOL)


def test_lora_on_the_last_layer_equals_the_merged_weights(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                     init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    peft.merge_and_unload().save_pretrained(tmp_path / "merged")
    engine = HFEngine(ModelRef(str(tiny)), batch_size=3)  # its own: an adapter changes the model in place
    engine.tok.save_pretrained(tmp_path / "merged")
    with_adapter = engine.score_choices(REQUESTS, adapter=str(tmp_path / "adapter"))
    for a, m in zip(with_adapter, HFEngine(ModelRef(str(tmp_path / "merged"))).score_choices(REQUESTS)):
        assert a.logprobs == pytest.approx(m.logprobs, abs=TOL)


def test_keep_freed_memory_applies_on_glibc():
    import platform

    assert keep_freed_memory() == (platform.libc_ver()[0] == "glibc")


def test_batch_size_does_not_change_scores(tiny, engine):
    one = HFEngine(ModelRef(str(tiny)), batch_size=1).score_choices(REQUESTS)
    for a, b in zip(one, engine.score_choices(REQUESTS)):
        assert a.logprobs == pytest.approx(b.logprobs, abs=TOL)


def test_long_context_is_cut_on_the_left(tiny):
    eng = HFEngine(ModelRef(str(tiny)), max_length=24)
    req = ChoiceRequest("the cat sat on the mat. " * 20 + "Answer:", (" A", " B b b"))
    score = eng.score_choices([req])[0]
    for cont, lp in zip(req.continuations, score.logprobs):
        ctx, ids = encode_pair(eng.tok, req.context, cont)
        longest = max(len(encode_pair(eng.tok, req.context, c)[1]) for c in req.continuations)
        ctx = ctx[len(ctx) + longest - 1 - 24:]
        with torch.no_grad():
            lg = torch.log_softmax(eng.model(torch.tensor([ctx + ids])[:, :-1]).logits[0].float(), -1)
        assert lp == pytest.approx(sum(float(lg[len(ctx) - 1 + i, t]) for i, t in enumerate(ids)), abs=TOL)


def test_a_generation_cut_inside_a_character_drops_its_partial_bytes(engine):
    """As vLLM does: a budget that ends mid-character leaves no U+FFFD at the end of the text."""
    from harvest.engines.hf import _generated_text

    ids = engine.tok.encode("café", add_special_tokens=False)
    partial = engine.tok.decode(ids[:-1])
    assert partial.endswith("\ufffd")  # the byte-level tokenizer split 'é' into two byte tokens
    assert _generated_text(partial, ()) == "caf"
    assert _generated_text("caf\ufffd = 2 + 2", (" =",)) == "caf"


def test_greedy_generation_with_stop_strings(engine):
    prompt = "Question: What is 3 + 4?\nAnswer:"
    ids = engine.tok.encode(prompt)
    with torch.no_grad():
        for _ in range(12):  # hand-rolled greedy decoding
            ids.append(int(engine.model(torch.tensor([ids])).logits[0, -1].argmax()))
    # a partial character at the end is held back (U+FFFD stripped), as vLLM does
    full = engine.tok.decode(ids[len(engine.tok.encode(prompt)):], skip_special_tokens=True).rstrip("\ufffd")
    got = engine.generate([GenerateRequest(prompt, 12), GenerateRequest("Repeat:", 5)])
    assert got[0] == full
    stop = full[3:5]
    cut = engine.generate([GenerateRequest(prompt, 12, (stop,))])[0]
    assert cut == full[: full.find(stop)]
    # One batch mixing stop lists and budgets: each request keeps its own.
    n_prompt = len(engine.tok.encode(prompt))
    first3 = engine.tok.decode(ids[n_prompt:n_prompt + 3], skip_special_tokens=True).rstrip("\ufffd")
    mixed = engine.generate([GenerateRequest(prompt, 12, (stop,)), GenerateRequest(prompt, 12),
                             GenerateRequest(prompt, 3)])
    assert mixed == [cut, full, first3]


def test_pretraining_loss_matches_a_direct_computation(engine):
    text = "the quick brown fox jumps over the lazy dog. " * 3
    ids = engine.tok.encode(text)
    assert len(ids) <= 128
    with torch.no_grad():
        mean = float(engine.model(torch.tensor([ids]), labels=torch.tensor([ids])).loss)
    m = measure_loss(engine, [text], window=128)
    assert m.n_tokens == len(ids) - 1
    assert m.pretrain_loss == pytest.approx(mean, abs=1e-5)
    assert m.bits_per_byte == pytest.approx(mean * (len(ids) - 1) / (math.log(2) * len(text.encode())), rel=1e-6)


def test_windows_are_consecutive_and_each_predicts_all_but_its_first(engine):
    texts = ["the cat sat on the mat. " * 6, "a bird sang"]
    nll, n = engine.token_nll(texts, max_length=16)
    want, count = 0.0, 0
    for text in texts:
        ids = engine.tok.encode(text)
        for start in range(0, len(ids), 16):
            w = torch.tensor([ids[start:start + 16]])
            if w.shape[1] < 2:
                continue
            with torch.no_grad():
                want += float(engine.model(w, labels=w).loss) * (w.shape[1] - 1)
            count += w.shape[1] - 1
    assert n == count and nll == pytest.approx(want, rel=1e-5)


def test_lora_adapter_equals_the_merged_weights(tiny, engine, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny)
    torch.manual_seed(1)
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    merged = peft.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    engine.tok.save_pretrained(tmp_path / "merged")
    with_adapter = engine.score_choices(REQUESTS, adapter=str(tmp_path / "adapter"))
    plain = HFEngine(ModelRef(str(tmp_path / "merged"))).score_choices(REQUESTS)
    base_again = engine.score_choices(REQUESTS)  # adapter off again
    for a, m, b, d in zip(with_adapter, plain, base_again, engine.score_choices(REQUESTS, adapter=None)):
        assert a.logprobs == pytest.approx(m.logprobs, abs=TOL)
        assert b.logprobs == d.logprobs and a.logprobs != pytest.approx(b.logprobs, abs=1e-3)


def test_local_folder_loads_through_from_pretrained_with_revision_none(tiny):
    eng = HFEngine(ModelRef(str(tiny), revision=None))
    assert eng.model.config.model_type == "llama" and eng.version().startswith("hf transformers=")


@pytest.mark.parametrize("ref, message", [
    (ModelRef("/nonexistent/model/folder"), "folder not found"),
    (ModelRef("nobody-here/no-such-model", revision="step1"), "cannot load"),
])
def test_unloadable_checkpoint_is_a_quick_one_line_error(monkeypatch, ref, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        HFEngine(ref)
    assert message in str(info.value) and "\n" not in str(info.value) and ref.path in str(info.value)
    assert time.perf_counter() - t0 < 20


def _copy_checkpoint(tiny, folder):
    import shutil

    shutil.copytree(tiny, folder)
    return folder


def test_weights_that_do_not_match_the_config_are_one_line_with_no_load_report(tiny, tmp_path, capfd):
    folder = _copy_checkpoint(tiny, tmp_path / "resized")
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] *= 2
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as info:
        HFEngine(ModelRef(str(folder)))
    message = str(info.value)
    assert "do not match its config.json" in message and "in the file" in message and "from the config" in message
    assert "\n" not in message and str(folder) in message
    captured = capfd.readouterr()
    assert "LOAD REPORT" not in captured.err + captured.out and "not sharded" not in captured.err


def test_a_checkpoint_missing_a_weight_is_refused_not_filled_at_random(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy_checkpoint(tiny, tmp_path / "partial")
    weights = load_file(folder / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"1 weight\(s\) missing .*model\.norm\.weight.*random"):
        HFEngine(ModelRef(str(folder)))


def test_pickle_only_checkpoint_is_refused(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_text((tiny / name).read_text())
    torch.save(AutoModelForCausalLM.from_pretrained(tiny).state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cannot load .*safetensors"):
        HFEngine(ModelRef(str(folder)))


def test_the_engine_device_and_dtype_default_to_auto(tiny, monkeypatch):
    import inspect

    from harvest.engines.base import resolve_device, resolve_dtype

    assert inspect.signature(HFEngine).parameters["device"].default == "auto"
    e = HFEngine(ModelRef(str(tiny), dtype="auto"))  # on this CPU-only machine: cpu, float32
    assert e.device == "cpu" and e.ref.dtype == "float32" and next(e.model.parameters()).dtype == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1" and resolve_device("cpu") == "cpu"
    assert resolve_dtype("auto", "cuda:1") == "bfloat16" and resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("float16", "cuda") == "float16"


def test_one_line_gives_the_type_and_the_first_line():
    from emergence.errors import one_line

    assert one_line(OSError("no such file\nTraceback ...")) == "OSError: no such file"
    assert one_line(ValueError("")) == "ValueError: "
    assert one_line(RuntimeError("x" * 1000)) == "RuntimeError: " + "x" * 300


# --------------------------------------------------------------------------- GPU memory (vLLM, issue #18)

GIB = 1 << 30


def test_memory_fraction_is_what_is_free_less_a_margin_at_most_vllms_default():
    from harvest.engines.gpu_memory import MAX_FRACTION, memory_fraction

    assert memory_fraction(80 * GIB, 80 * GIB) == MAX_FRACTION == 0.9  # an idle device: vLLM's default
    # training left 20 GiB in use: 60 GiB free, margin max(1 GiB, 1.6 GiB) = 1.6 GiB
    assert memory_fraction(60 * GIB, 80 * GIB) == pytest.approx((60 - 1.6) / 80, abs=1e-3)
    assert memory_fraction(60 * GIB, 80 * GIB) <= (60 * GIB - 1.6 * GIB) / (80 * GIB)  # rounded down
    assert memory_fraction(10 * GIB, 16 * GIB) == pytest.approx((10 - 1) / 16, abs=1e-3)  # 1 GiB margin
    assert memory_fraction(GIB // 2, 16 * GIB) < 0  # nothing usable is free
    assert memory_fraction(80 * GIB, 80 * GIB, cap=0.5) == 0.5
    with pytest.raises(ValueError):
        memory_fraction(0, 0)


def test_default_utilization_measures_only_where_the_user_did_not_choose(monkeypatch):
    import harvest.engines.gpu_memory as gm

    monkeypatch.setattr(gm, "free_memory", lambda devices=1: (40 * GIB, 80 * GIB))
    assert gm.default_utilization({}) == pytest.approx((40 - 1.6) / 80, abs=1e-3)
    assert gm.default_utilization({"gpu_memory_utilization": 0.3}) is None  # the user's value wins
    assert gm.default_utilization({"kv_cache_memory_bytes": GIB}) is None
    asked = []
    monkeypatch.setattr(gm, "free_memory", lambda devices=1: asked.append(devices) or (40 * GIB, 80 * GIB))
    gm.default_utilization({"tensor_parallel_size": 4})
    assert asked == [4]  # the tightest of the devices vLLM will use
    monkeypatch.setattr(gm, "free_memory", lambda devices=1: None)  # CUDA not in use in this process
    assert gm.default_utilization({}) is None
    monkeypatch.setattr(gm, "free_memory", lambda devices=1: (2 * GIB, 80 * GIB))
    with pytest.raises(ValueError, match="only 2.0 of 80.0 GiB GPU memory is free"):
        gm.default_utilization({})


def test_nothing_creates_a_cuda_context_on_a_machine_without_one():
    import harvest.engines.gpu_memory as gm

    gm.release_cached()  # gc only
    assert gm.free_memory() is None and gm.default_utilization({}) is None
    assert not torch.cuda.is_initialized()


def test_vllm_engine_frees_cached_memory_and_sets_the_fraction_before_building_the_llm(tiny, monkeypatch):
    """The vLLM engine's loading path with a stand-in ``vllm.LLM`` (vLLM is not in this venv)."""
    import sys
    import types

    import harvest.engines.gpu_memory as gm
    import harvest.engines.vllm_engine as ve

    events = []

    class FakeLLM:
        def __init__(self, **kwargs):
            events.append(("LLM", kwargs.get("gpu_memory_utilization")))

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM))
    monkeypatch.setattr(ve, "release_cached", lambda: events.append(("release",)))
    monkeypatch.setattr(gm, "free_memory", lambda devices=1: (40 * GIB, 80 * GIB))
    ve._load_llm(ModelRef(str(tiny)), 64, 128, 0, {})
    assert events[0] == ("release",) and events[1][0] == "LLM"
    assert events[1][1] == pytest.approx((40 - 1.6) / 80, abs=1e-3)
    events.clear()
    ve._load_llm(ModelRef(str(tiny)), 64, 128, 0, {"gpu_memory_utilization": 0.25})
    assert events == [("release",), ("LLM", 0.25)]
    monkeypatch.setattr(gm, "free_memory", lambda devices=1: (GIB, 80 * GIB))
    with pytest.raises(CheckpointError, match=r"vLLM cannot load it \(only 1.0 of 80.0 GiB GPU memory is free"):
        ve._load_llm(ModelRef(str(tiny)), 64, 128, 0, {})


def test_vllm_engine_close_shuts_down_cleans_up_and_releases_once(monkeypatch):
    import sys
    import types

    import harvest.engines.vllm_engine as ve

    events = []
    core = types.SimpleNamespace(shutdown=lambda: events.append("shutdown"))
    distributed = types.ModuleType("vllm.distributed")
    distributed.cleanup_dist_env_and_memory = lambda: events.append("cleanup")
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setitem(sys.modules, "vllm.distributed", distributed)
    monkeypatch.setattr(ve, "release_cached", lambda: events.append("release"))
    engine = object.__new__(ve.VLLMEngine)
    engine.llm, engine.tok = types.SimpleNamespace(llm_engine=types.SimpleNamespace(engine_core=core)), object()
    engine.close()
    assert events == ["shutdown", "cleanup", "release"] and engine.llm is None and engine.tok is None
    engine.close()  # closing again does nothing
    assert events == ["shutdown", "cleanup", "release"]
    monkeypatch.delitem(sys.modules, "vllm.distributed")  # a vLLM without the cleanup call
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    engine.llm = types.SimpleNamespace()
    engine.close()
    assert events[3:] == ["release"]


# --------------------------------------------------------------------------- requests per call


class _CountingEngine:
    """Scores each choice by a hash of (context, choice), records how many requests each call got."""

    name = "fake"

    def __init__(self, requests_per_call="unset"):
        if requests_per_call != "unset":
            self.requests_per_call = requests_per_call
        self.calls: list[int] = []

    def score_choices(self, requests, adapter=None):
        from harvest.engines.base import ChoiceScore

        self.calls.append(len(requests))
        return [ChoiceScore(tuple(-(zlib.crc32((r.context + c).encode()) % 997) / 97 for c in r.continuations),
                            tuple(1 for _ in r.continuations)) for r in requests]

    def generate(self, requests, adapter=None):
        self.calls.append(len(requests))
        return [f"{len(r.prompt) % 7}" for r in requests]


class _CountTask:
    """A generation task whose answer is the prompt's length mod 7."""

    kind, max_new_tokens, stop, chance, version = "generation", 4, ("\n",), 0.0, "1"

    def check_generation(self, doc, text):
        return text, text == str(doc["n"] % 7)

    def gold_label(self, doc):
        return str(doc["n"] % 7)


def test_each_engine_sizes_its_calls_and_the_rows_do_not_change():
    """Issue 18: no fixed cap of 64 requests for every engine. vLLM (``requests_per_call =
    None``) gets all of a unit's requests in one call and schedules them itself; the HF engine
    keeps 64 per call (its batches inside); an engine that says nothing gets 64. The item rows
    are the same whatever the call size."""
    from polars.testing import assert_frame_equal

    from harvest.engines.vllm_engine import VLLMEngine
    from harvest.evaluate import CHUNK, TaskPlan, evaluate_task, plan_task, requests_per_call
    from harvest.spec import TaskSpec
    from harvest.tasks.fewshot import EvalItem

    assert VLLMEngine.requests_per_call is None and HFEngine.requests_per_call == CHUNK == 64
    plan = plan_task(TaskSpec(task="synthetic_arithmetic", name="arith", shots=1,
                              options={"n_train": 8, "n_test": 150}))
    prompts = [EvalItem(f"g{i}", "x" * i, None, None, {"n": i}) for i in range(130)]
    gen = TaskPlan(TaskSpec(task="count", name="count"), _CountTask(), 0, tuple(prompts), "h")
    expected = {None: [150], 64: [64, 64, 22], "unset": [64, 64, 22], 100: [100, 50], 1000: [150]}
    tables = {}
    for size, calls in expected.items():
        engine = _CountingEngine(size)
        advanced = []
        tables[size] = evaluate_task(engine, plan, "ck", advance=advanced.append)
        assert engine.calls == advanced == calls, size
        assert requests_per_call(engine, 150) == calls[0]
        engine.calls = []
        tables[(size, "gen")] = evaluate_task(engine, gen, "ck")
        step = min(calls[0], 130)
        assert engine.calls == [min(step, 130 - i) for i in range(0, 130, step)], size
    for key, table in tables.items():
        assert_frame_equal(table, tables[(None, "gen") if isinstance(key, tuple) else None])
    assert tables[None]["correct"].sum() > 0 and tables[(None, "gen")]["correct"].all()
    assert requests_per_call(_CountingEngine(None), 0) == 1  # an empty unit: no call, no zero step


def test_the_hf_engine_scores_a_unit_in_calls_of_64(tiny, monkeypatch):
    """With the real HF engine: 70 items go over in calls of 64 and 6, and each call's scores
    are what the engine gives those requests on their own (so results are unchanged)."""
    from harvest.evaluate import evaluate_task, plan_task
    from harvest.spec import TaskSpec

    plan = plan_task(TaskSpec(task="synthetic_arithmetic", name="arith", shots=0,
                              options={"n_train": 4, "n_test": 70}))
    engine = HFEngine(ModelRef(str(tiny)), batch_size=16)
    calls, real = [], engine.score_choices
    monkeypatch.setattr(engine, "score_choices", lambda reqs, adapter=None: calls.append(len(reqs)) or real(reqs, adapter))
    rows = evaluate_task(engine, plan, "ck")
    assert calls == [64, 6]
    last = real([ChoiceRequest(it.context, it.continuations) for it in plan.items[64:]])
    assert rows["choice_logprobs"].to_list()[64:] == [list(s.logprobs) for s in last]
