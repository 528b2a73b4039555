"""Pretrain one micro-ladder model: a readable nanoGPT-style loop over a plain HF Llama.

AdamW (0.9, 0.95), linear warmup then cosine decay to ``min_lr_ratio`` of the peak; batches are
generated on the fly from ``(seed, step)`` so a resumed run sees exactly the batches it would
have seen. At log-spaced steps the model is saved in Hugging Face format (config + safetensors
+ tokenizer) under ``OUT/step_XXXXXX/``, and a resume state (optimizer, step) under
``OUT/resume/``. Every checkpoint also logs held-out losses (background-only and mixed) to
``OUT/train_log.jsonl``.

Run one size: ``python -m harvest.microladder.pretrain --size s2 --out DIR [--steps N]``.
Set ``OMP_NUM_THREADS=1``: on 2 shared cores one thread per process is fastest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from emergence.atomic import replace_folder
from harvest.microladder.corpus import SEQ_LEN, TOKEN_ID, Corpus, CorpusConfig


@dataclass(frozen=True)
class ModelSize:
    """Llama shape: width, depth, heads, MLP width."""

    name: str
    d_model: int
    n_layers: int
    n_heads: int
    d_ffn: int


SIZES = {
    "s0": ModelSize("s0", 32, 2, 2, 96),
    "s1": ModelSize("s1", 64, 2, 2, 192),
    "sm": ModelSize("sm", 80, 3, 2, 240),
    "w2": ModelSize("w2", 96, 2, 3, 288),  # two layers like s1, wider
    "w3": ModelSize("w3", 128, 2, 4, 384),  # the shipped ladder is s0, s1, w2, w3: one depth, four widths
    "w4": ModelSize("w4", 160, 2, 5, 480),  # the largest of configs/slow_warmup.json
    "s2": ModelSize("s2", 96, 3, 3, 288),
    "s3": ModelSize("s3", 128, 4, 4, 384),
    # test-only
    "t0": ModelSize("t0", 16, 1, 1, 32),
    "t1": ModelSize("t1", 24, 2, 2, 48),
}


@dataclass(frozen=True)
class TrainConfig:
    size: str = "s1"
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    n_checkpoints: int = 10
    first_checkpoint: int = 40
    seed: int = 0
    heldout_docs: int = 128  # per held-out set, for the training log only (the harvest measures its own)
    log_every: int = 25

    def checkpoint_steps(self) -> list[int]:
        """``n_checkpoints`` log-spaced steps from ``first_checkpoint`` to ``steps`` (distinct)."""
        raw = np.geomspace(self.first_checkpoint, self.steps, self.n_checkpoints)
        return sorted({int(round(s)) for s in raw} | {self.steps})


def llama_config(size: ModelSize):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(TOKEN_ID), hidden_size=size.d_model, intermediate_size=size.d_ffn,
        num_hidden_layers=size.n_layers, num_attention_heads=size.n_heads,
        num_key_value_heads=size.n_heads, max_position_embeddings=SEQ_LEN * 4,
        tie_word_embeddings=True, bos_token_id=TOKEN_ID["<s>"], eos_token_id=TOKEN_ID["</s>"],
        pad_token_id=TOKEN_ID["</s>"], initializer_range=0.02,
    )


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine to ``lr * min_lr_ratio`` at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, step])


# --------------------------------------------------------------------------- held-out loss


def heldout_ids(corpus: Corpus, n_docs: int, with_tasks: bool) -> np.ndarray:
    seed = 10_001 if with_tasks else 10_000  # the harvest's held-out files use other seeds
    rng = np.random.default_rng(seed)
    return np.asarray([[TOKEN_ID["<s>"]] + [TOKEN_ID[t] for t in corpus.document(rng, with_tasks)]
                       for _ in range(n_docs)], dtype=np.int64)


def mean_loss(model, ids: np.ndarray, batch_size: int = 32) -> float:
    """Mean next-token loss (nats) over ``ids`` of shape (docs, SEQ_LEN)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            x = torch.from_numpy(ids[i:i + batch_size])
            n = x[:, 1:].numel()
            total += float(model(input_ids=x, labels=x).loss) * n
            count += n
    model.train()
    return total / count


# --------------------------------------------------------------------------- saving / resuming


def save_checkpoint(model, tokenizer, out: Path, step: int) -> Path:
    """HF folder ``out/step_XXXXXX`` written to a temp dir then renamed (atomic)."""
    final = out / f"step_{step:06d}"
    with replace_folder(final, keep_others=False) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return final


def save_resume(model, optimizer, out: Path, step: int) -> None:
    import torch

    with replace_folder(out / "resume", keep_others=False) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        torch.save({"optimizer": optimizer.state_dict(), "step": step}, tmp / "optimizer.pt")


def load_resume(out: Path):
    """``(model, optimizer_state, next_step)`` from ``out/resume`` or ``None``."""
    import torch
    from transformers import LlamaForCausalLM

    if not (out / "resume" / "optimizer.pt").is_file():
        return None
    model = LlamaForCausalLM.from_pretrained(out / "resume")
    state = torch.load(out / "resume" / "optimizer.pt", weights_only=True)
    return model, state["optimizer"], int(state["step"]) + 1


# --------------------------------------------------------------------------- the loop


def build_optimizer(model, cfg: TrainConfig):
    import torch

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]  # matrices and embeddings
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]  # norms
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def new_model(cfg: TrainConfig):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(llama_config(SIZES[cfg.size]))


def log_line(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def train(cfg: TrainConfig, out: Path, corpus_config: CorpusConfig = CorpusConfig()) -> Path:
    """Train (or resume) one size; returns ``out``. Idempotent once finished."""
    import torch
    from transformers.utils import logging as hf_logging

    from harvest.microladder.tokenizer import build_tokenizer

    hf_logging.disable_progress_bar()  # one "Writing model shards" bar per save otherwise
    out.mkdir(parents=True, exist_ok=True)
    if (out / "done.json").is_file():
        return out
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    corpus, tokenizer = Corpus(corpus_config), build_tokenizer()
    held = {"bg": heldout_ids(corpus, cfg.heldout_docs, False), "mixed": heldout_ids(corpus, cfg.heldout_docs, True)}
    resumed = load_resume(out)
    model = resumed[0] if resumed else new_model(cfg)
    optimizer = build_optimizer(model, cfg)
    if resumed:
        optimizer.load_state_dict(resumed[1])
    start = resumed[2] if resumed else 0
    ckpt_steps, n_params = set(cfg.checkpoint_steps()), count_params(model)
    model.train()
    t0 = time.time()
    for step in range(start, cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        x = torch.from_numpy(corpus.batch_ids(batch_rng(cfg.seed, step), cfg.batch_size))
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        done = step + 1
        if done % cfg.log_every == 0:
            log_line(out / "train_log.jsonl", {"step": done, "loss": loss.item(), "lr": lr_at(step, cfg),
                                               "elapsed_s": round(time.time() - t0, 1)})
        if done in ckpt_steps:
            save_checkpoint(model, tokenizer, out, done)
            save_resume(model, optimizer, out, step)
            log_line(out / "train_log.jsonl", {
                "checkpoint": f"step_{done:06d}", "step": done, "tokens": done * cfg.batch_size * SEQ_LEN,
                "params": n_params, "heldout_bg_loss": mean_loss(model, held["bg"]),
                "heldout_mixed_loss": mean_loss(model, held["mixed"]), "elapsed_s": round(time.time() - t0, 1)})
    (out / "done.json").write_text(json.dumps({"params": n_params, "steps": cfg.steps}))
    shutil.rmtree(out / "resume", ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", required=True, choices=sorted(SIZES))
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--config", type=str, default="{}", help="JSON overrides of TrainConfig")
    parser.add_argument("--corpus", type=str, default="{}", help="JSON overrides of CorpusConfig")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = replace(TrainConfig(size=args.size), **json.loads(args.config))
    corpus_kw = json.loads(args.corpus)
    if "task_weights" in corpus_kw:
        corpus_kw["task_weights"] = tuple(tuple(tw) for tw in corpus_kw["task_weights"])
    train(cfg, args.out, CorpusConfig(**corpus_kw))


if __name__ == "__main__":
    main()
