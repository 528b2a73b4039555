"""LoRA finetuning (default targets) and log-likelihood scoring on tiny models of every common
decoder architecture: Llama, GPT-NeoX (Pythia), GPT-2, Qwen2 and OLMo-2, built from configs."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.harvest, pytest.mark.filterwarnings("ignore::FutureWarning")]

from harvest.engines.base import ChoiceRequest, ModelRef  # noqa: E402
from harvest.engines.hf import HFEngine  # noqa: E402
from harvest.finetune import Recipe, finetune, linear_module_names, save_finetuned  # noqa: E402
from harvest.testing import ARCHITECTURES, build_tiny_model, direct_logprob  # noqa: E402

TOL = 1e-4
REQUESTS = [ChoiceRequest("Question: What is 3 + 4?\nAnswer:", (" 7", " 8", " 12 apples")),
            ChoiceRequest("Repeat: a b c", (" a b c", " a c b"))]
EXAMPLES = [(f"Question: What is {a} + {b}?\nAnswer:", f" {a + b}") for a in range(4) for b in range(4)]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_default_lora_finetune_and_scoring_work_on_each_architecture(arch, tmp_path):
    folder = build_tiny_model(tmp_path / arch, arch)
    engine = HFEngine(ModelRef(str(folder)), batch_size=2)
    assert engine.device == "cpu" and engine.ref.dtype == "float32"
    # the engine's shared-context scoring equals one plain forward per choice
    for req, score in zip(REQUESTS, engine.score_choices(REQUESTS)):
        for cont, lp in zip(req.continuations, score.logprobs):
            assert lp == pytest.approx(direct_logprob(engine.model, engine.tok, req.context, cont), abs=TOL)
    # LoRA with the default targets: every linear layer but the output head
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    linear = set(linear_module_names(model))
    head = next(n for n, m in model.named_modules() if m is model.get_output_embeddings())
    result = finetune(model, engine.tok, EXAMPLES, Recipe(lr=1e-2, steps=4, batch_size=8), seed=0)
    wrapped = {n.removeprefix("base_model.model.") for n, m in result.model.named_modules() if hasattr(m, "lora_A")
               and not n.endswith(("lora_A", "lora_B"))}
    assert wrapped == linear - {head} and wrapped
    assert all(math.isfinite(x) for x in result.losses) and 0 < result.trainable_params < result.params
    # the saved adapter scores in the engine as the finetuned model does directly
    adapter = save_finetuned(result, engine.tok, tmp_path / "adapter")
    scores = engine.score_choices(REQUESTS[:1], adapter=str(adapter))[0].logprobs
    for cont, lp in zip(REQUESTS[0].continuations, scores):
        assert lp == pytest.approx(direct_logprob(result.model, engine.tok, REQUESTS[0].context, cont), abs=TOL)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_full_finetune_saves_weights_that_score_as_the_trained_model_on_each_architecture(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = build_tiny_model(tmp_path / arch, arch)
    model = AutoModelForCausalLM.from_pretrained(folder)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tok = HFEngine(ModelRef(str(folder)), batch_size=2).tok
    result = finetune(model, tok, EXAMPLES, Recipe(method="full", lr=1e-3, steps=4, batch_size=8), seed=0)
    assert result.trainable_params == result.params and all(math.isfinite(x) for x in result.losses)
    moved = [n for n, p in result.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(moved) == len(before)  # every weight trained
    saved = save_finetuned(result, tok, tmp_path / "full")
    engine = HFEngine(ModelRef(str(saved)), batch_size=2)
    for req, score in zip(REQUESTS, engine.score_choices(REQUESTS)):
        for cont, lp in zip(req.continuations, score.logprobs):
            assert lp == pytest.approx(direct_logprob(result.model, tok, req.context, cont), abs=TOL)
