"""A tiny Llama (0.12M parameters), its tokenizer and LoRA adapters, built offline.

Nothing is downloaded: the byte-level BPE tokenizer is trained with ``tokenizers`` on a small
corpus, the model is trained for a few seconds on the same corpus so that its predictions are
peaked (random weights give near-ties that no two engines need to order alike), and everything
is saved with safetensors. head_dim is 32, the smallest vLLM's CPU attention accepts.
"""

from __future__ import annotations

from pathlib import Path

SENTENCES = (
    "the quick brown fox jumps over the lazy dog.",
    "the cat sat on the mat.",
    "a bird sang in the tall tree.",
    "Question: what is two plus three? Answer: five.",
    "Question: what colour is the sky? Answer: blue.",
    "Question: what do cows drink? Answer: water.",
    "yes no true false A B C D",
)


def corpus() -> list[str]:
    """Every sentence followed by every other one: 49 short lines."""
    return [f"{a} {b}\n" for a in SENTENCES for b in SENTENCES]


def build_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    bos = tok.token_to_id("<s>")
    # BOS added by default, as Llama tokenizers do: the lm-eval split must cope with it.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out)
    return fast


def build_model(out: Path, steps: int = 60, seed: int = 0) -> Path:
    """Train a 2-layer Llama (hidden 64, 2 heads of 32) on the corpus; save it to ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    _train(model, tok, steps)
    model.save_pretrained(out, safe_serialization=True)
    return out


def _train(model, tok, steps: int) -> None:
    from harvest.testing import train_briefly

    tok.pad_token = tok.eos_token  # in memory only: the saved tokenizer has no pad token
    train_briefly(model, tok, corpus(), steps, lr=1e-2)  # [49, T] in one batch


def build_lora(base: Path, out: Path, rank: int = 8, seed: int = 1, scale: float = 0.5) -> Path:
    """A PEFT LoRA on q/k/v/o and the MLP with a random non-zero B, so it changes every score."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT initialises B to zero: the adapter would be a no-op
                param.copy_(torch.randn(param.shape, generator=gen) * scale / rank)
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


def merge_lora(base: Path, adapter: Path, out: Path) -> Path:
    """The same adapter folded into the weights (``merge_and_unload``), saved as a model."""
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base / name, out / name)
    return out
