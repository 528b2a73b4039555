"""Finetuning throughput of harvest.finetune against a plain Hugging Face ``Trainer``, and the
wall time of the test sweep with where its time goes.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_finetune.py`` (one torch thread per process:
on 2 shared cores, 2 threads are many times slower when another process runs).

Part 1, same run, same model, same data, same batches of padded examples, same optimiser
steps: tokens/s (non-padding tokens processed) of our loop and of ``Trainer.train()``, for LoRA
and for full finetuning; ratio = ours / Trainer. Our time includes tokenising and wrapping the
model in its adapter; Trainer's counts ``train()`` only (a conservative comparison for us).

Part 2: the sweep of ``tests/harvest/test_sweep.py`` (3 checkpoints x 3 data levels x 2 seeds, one
synthetic task) run locally in this process, with its time split by phase.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from harvest.finetune import Recipe, batch_size_for, collate, encode_examples, finetune, steps_for  # noqa: E402
from harvest.testing import char_tokenizer  # noqa: E402


def llama(hidden: int, layers: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 64), max_position_embeddings=256)
    return LlamaForCausalLM(config)


def examples(n: int) -> list[tuple[str, str]]:
    """Prompts of ~60 characters (tokens) with a short target: a copy-the-key task."""
    import random

    rnd = random.Random(0)
    out = []
    for _ in range(n):
        words = ["".join(rnd.choice("abcdefghij") for _ in range(4)) for _ in range(10)]
        key = rnd.randrange(10)
        out.append((" ".join(words) + f" | {key} ->", " " + words[key]))
    return out


# --------------------------------------------------------------------------- part 1


def run_ours(model, tok, data, recipe):
    result = finetune(model, tok, data, recipe, seed=0)
    return result.tokens, result.seconds


def run_trainer(model, tok, data, recipe):
    """Plain Trainer: same padded batches (our collate), same steps, AdamW, cosine schedule."""
    from transformers import Trainer, TrainingArguments

    from harvest.finetune import prepare_model

    encoded = encode_examples(tok, data, recipe.max_length)
    model = prepare_model(model, recipe, seed=0)
    counted = {"tokens": 0}

    def collator(rows):
        batch = collate([r["e"] for r in rows], tok.pad_token_id)
        counted["tokens"] += int(batch["attention_mask"].sum())
        return batch

    steps, batch = steps_for(recipe, len(data)), batch_size_for(recipe, len(data))
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, max_steps=steps,
        learning_rate=recipe.peak_lr, lr_scheduler_type="cosine", warmup_steps=int(0.1 * steps),
        weight_decay=0.0, max_grad_norm=recipe.grad_clip, logging_strategy="no", save_strategy="no",
        eval_strategy="no", report_to="none", use_cpu=True, dataloader_num_workers=0,
        disable_tqdm=True, remove_unused_columns=False, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=[{"e": e} for e in encoded], data_collator=collator)
    start = time.perf_counter()
    trainer.train()
    return counted["tokens"], time.perf_counter() - start


def throughput(method: str, hidden: int, layers: int, n: int, steps: int, repeats: int) -> None:
    tok, data = char_tokenizer(), examples(n)
    recipe = Recipe(method=method, steps=steps, batch_size=16, lr=1e-4)
    best = {"ours": 0.0, "trainer": 0.0}
    for _ in range(repeats):  # alternate, keep each side's best (the machine is shared)
        for name, fn in (("ours", run_ours), ("trainer", run_trainer)):
            tokens, seconds = fn(llama(hidden, layers), tok, data, recipe)
            best[name] = max(best[name], tokens / seconds)
    params = sum(p.numel() for p in llama(hidden, layers).parameters())
    print(f"{method:5s} model {params / 1e6:5.2f}M params, batch 16, {steps} steps: "
          f"ours {best['ours']:8.0f} tok/s   Trainer {best['trainer']:8.0f} tok/s   "
          f"ratio {best['ours'] / best['trainer']:.2f}x")


# --------------------------------------------------------------------------- part 2


PHASES = {
    "finetune": "training steps (harvest.finetune)",
    "eval": "scoring the finetuned models (HF engine, adapter applied)",
    "save": "writing adapters (safetensors) and their stats",
    "load": "loading / copying base weights for training",
    "base": "pretraining loss and few-shot of each checkpoint (harvest.evaluate)",
    "eval_load": "loading the scoring engine and tokenizer",
    "write": "writing one Parquet part per cell",
    "plan": "reading the spec, building prompts, drawing cells",
    "compact": "compacting parts into the tables, manifest",
    "other": "not in a phase (progress bars, Python)",
}


def sweep_timing() -> None:
    """The test sweep, locally, with its phase breakdown (see harvest.sweep)."""
    from tests.harvest.test_sweep import build_sweep_spec  # the test's own spec builder (repo root on sys.path)

    from harvest.driver import run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        spec_path = build_sweep_spec(Path(tmp))
        start = time.perf_counter()
        report = run_sweep(spec_path, Path(tmp) / "out")
        wall = time.perf_counter() - start
    print(f"test sweep: {report.n_cells} cells (3 checkpoints x 3 levels x 2 seeds), wall {wall:.1f} s")
    phases = dict(report.phase_seconds)
    phases["other"] = wall - sum(phases.values())
    for phase, seconds in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"  {phase:10s} {seconds:7.2f} s  {100 * seconds / wall:5.1f}%  {PHASES.get(phase, '')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for method in ("lora", "full"):
        throughput(method, hidden=256, layers=4, n=256, steps=args.steps, repeats=args.repeats)
    throughput("lora", hidden=64, layers=2, n=256, steps=args.steps, repeats=args.repeats)
    if not args.skip_sweep:
        sweep_timing()


if __name__ == "__main__":
    main()
