"""Tiny local Llama checkpoints for tests and benchmarks: built from a config, never downloaded.

``build_tiny_llama(folder)`` trains a byte-level BPE tokenizer with ``tokenizers`` on a small
built-in corpus (so any text encodes: digits, letters, punctuation), wraps it in a real
``PreTrainedTokenizerFast`` (adds BOS, like Llama), builds a ``LlamaForCausalLM`` from a
``LlamaConfig`` with seeded weights (a larger ``init_std`` or a few ``train_steps`` make
predictions peaked rather than near-ties, which parity comparisons need), and saves both with safetensors. Sizes: the defaults give ~0.15M
parameters; ``BENCH_MODEL`` gives ~20M (the benchmarks' model).
"""

from __future__ import annotations

import random
import string
from pathlib import Path

# The benchmarks' ~20M-parameter model: 6 layers of width 320 (5 heads of 64), MLP 1280, and a
# vocabulary of 16384 (2048 trained BPE tokens, padded to a realistic LM-head size).
BENCH_MODEL = {"hidden": 320, "layers": 6, "heads": 5, "intermediate": 1280, "vocab_size": 2048,
               "pad_vocab_to": 16384, "max_positions": 2048, "init_std": 0.05}

WORDS = ("the quick brown fox jumps over the lazy dog a cat sat on mat bird sang in tall tree "
         "Question What is Answer Repeat Does this sentence make sense yes no true false "
         "following are multiple choice questions with answers about").split()


def corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    """Lines in the style of the tasks' prompts: words, letters, sums, 'Question:' / 'Answer:'."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        a, b = rng.randrange(100), rng.randrange(100)
        letters = " ".join(rng.choice(string.ascii_lowercase) for _ in range(6))
        words = " ".join(rng.choice(WORDS) for _ in range(8))
        lines.append(f"Question: What is {a} + {b}?\nA. {a + b}\nB. {a + b + 1}\nAnswer: {rng.choice('ABCD')}\n\n"
                     f"Repeat: {letters}\n{words}. #### {a + b}\n")
    return lines


def build_tokenizer(folder: Path, vocab_size: int = 512):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with <s> (BOS, added by default) and </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(folder)
    return fast


def char_tokenizer():
    """Printable-ASCII character tokenizer (no download): each character one token, ids 3..98."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_tiny_llama(folder: str | Path, *, hidden: int = 64, layers: int = 2, heads: int = 2,
                     vocab_size: int = 512, intermediate: int | None = None, max_positions: int = 1024,
                     seed: int = 0, train_steps: int = 0, init_std: float = 0.02,
                     pad_vocab_to: int | None = None) -> Path:
    """Save a seeded tiny Llama and its tokenizer (safetensors) in ``folder``; returns it.

    ``pad_vocab_to`` gives the model a realistic vocabulary size (e.g. 32000) with rows the small
    tokenizer never emits, as Pythia pads 50277 tokens to 50304.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(folder, vocab_size)
    config = LlamaConfig(
        vocab_size=max(len(tok), pad_vocab_to or 0), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False, initializer_range=init_std,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if train_steps:
        _train(model, tok, train_steps, seed)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


ARCHITECTURES = ("llama", "gpt_neox", "gpt2", "qwen2", "olmo2")


def tiny_config(arch: str, tok, *, hidden: int = 32, layers: int = 2, heads: int = 2,
                max_positions: int = 256, init_std: float = 0.1):
    """A tiny config of ``arch`` (one of :data:`ARCHITECTURES`) for ``tok``'s vocabulary."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Olmo2Config, Qwen2Config

    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    vocab = len(tok)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions,
                          initializer_range=init_std, **ids)
    if arch == "gpt_neox":
        return GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                             intermediate_size=2 * hidden, max_position_embeddings=max_positions,
                             initializer_range=init_std, tie_word_embeddings=False, **ids)
    classes = {"llama": LlamaConfig, "qwen2": Qwen2Config, "olmo2": Olmo2Config}
    if arch not in classes:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    return classes[arch](vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_positions,
                         initializer_range=init_std, tie_word_embeddings=False, **ids)


def build_tiny_model(folder: str | Path, arch: str = "llama", *, seed: int = 0, **sizes) -> Path:
    """Save a seeded tiny causal LM of architecture ``arch`` (Llama, GPT-NeoX/Pythia, GPT-2,
    Qwen2, OLMo-2) with :func:`build_tokenizer`'s tokenizer in ``folder``; returns it."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(folder, 256)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, tok, **sizes))
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def _train(model, tok, steps: int, seed: int) -> None:
    """A few AdamW steps on the corpus so next-token predictions are peaked."""
    import torch

    torch.manual_seed(seed)
    train_briefly(model, tok, corpus()[:64], steps, lr=3e-3)


def train_briefly(model, tok, texts: list[str], steps: int, lr: float) -> None:
    """``steps`` full-batch AdamW steps on ``texts`` (padding masked out of the loss), then eval
    mode: a tiny test model whose next-token predictions are peaked, not uniform."""
    import torch

    batch = tok(texts, return_tensors="pt", padding="longest")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optim = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
    model.eval()


def hub_cache(root: str | Path, repo: str, revisions: dict[str, str | Path]) -> Path:
    """Lay local model folders out as the Hugging Face hub cache holds a download of ``repo`` at
    each revision (``models--org--name/refs/<revision>`` naming ``snapshots/<commit>/``), so
    ``from_pretrained(repo, revision=...)`` resolves them offline with ``HF_HUB_CACHE=root``."""
    import hashlib
    import shutil

    repo_dir = Path(root) / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    for revision, folder in revisions.items():
        commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
        shutil.copytree(folder, repo_dir / "snapshots" / commit)
        (repo_dir / "refs" / revision).write_text(commit)
    return Path(root)


def n_params(folder: str | Path) -> int:
    """Parameters stored in ``folder/model.safetensors``."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(Path(folder) / "model.safetensors"), "pt") as f:
        for key in f.keys():
            total += _prod(f.get_slice(key).get_shape())
    return total


def describe(folder: str | Path) -> dict[str, int]:
    """Parameters, vocabulary and non-embedding parameters (untied input and output embeddings)."""
    import json

    config = json.loads((Path(folder) / "config.json").read_text())
    total = n_params(folder)
    return {"params": total, "vocab": config["vocab_size"],
            "non_embedding": total - 2 * config["vocab_size"] * config["hidden_size"]}


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def direct_logprob(model, tok, context: str, continuation: str) -> float:
    """lm-eval's computation of log p(continuation | context): one forward of context +
    continuation, no sharing, no batching (the reference the engines are tested against)."""
    import torch

    from harvest.engines.loading import encode_pair

    ctx, cont = encode_pair(tok, context, continuation)
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont])[:, :-1]).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return sum(float(lp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
