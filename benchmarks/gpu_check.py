"""A short, prepared check for a GPU box: the HF engine and finetuning on a ~220M-parameter Llama.

No download and no network: the model is built from a config (random weights, the test
tokenizer of ``harvest.testing`` with the vocabulary padded to 32000 rows, as real checkpoints
pad theirs) and saved as safetensors, then loaded the way a harvest loads a checkpoint. Needs
torch, transformers and peft (vLLM is not used). Run from the repository root::

    python benchmarks/gpu_check.py                         # GPU: bfloat16, about 1-2 minutes on an H100
    python benchmarks/gpu_check.py --out gpu_check.json    # ... and the JSON in a file
    python benchmarks/gpu_check.py --smoke                 # a tiny config on the CPU, < 60 s

What it runs, each phase timed after a warm-up, with PyTorch's peak allocated GPU memory
(``torch.cuda.max_memory_allocated``, reset per phase):

1. ``HFEngine.score_choices`` on synthetic multiple-choice items: 5-shot prompts with one-token
   letter answers and shots drawn per item (no shared prefix), the same with fixed shots (the
   prefix-sharing path), and answers of 1-4 words (the KV-cache continuation path); items/s and
   tokens/s (context + choice tokens, what lm-eval would feed once per choice is not counted).
   A few items are checked against a direct forward pass (``harvest.testing.direct_logprob``):
   the largest difference is printed (bfloat16 batching moves it by ~1e-2 nats; float32 ~1e-5).
2. ``HFEngine.token_nll`` (pretraining loss) over 512-token windows and greedy ``generate``.
3. ``harvest.finetune.finetune`` with LoRA (bfloat16 frozen base, float32 adapters) and full
   finetuning (float32 master weights, bfloat16 autocast), as the sweep loads them
   (``harvest.sweep.training_ref``): tokens/s, losses, peak memory; the LoRA adapter is then
   saved (``save_finetuned``) and scored by the engine, as a sweep cell does.

The last line on stdout is one JSON object with every number. Exit status 1 when a check fails
(a non-finite or positive log-probability, a non-finite loss).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

for _key, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                     "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}.items():
    os.environ.setdefault(_key, _value)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Model sizes: (hidden, layers, heads, intermediate, padded vocabulary, positions).
SIZES = {
    "gpu": dict(hidden=1024, layers=12, heads=16, intermediate=2816, pad_vocab_to=32000, max_positions=2048),
    "smoke": dict(hidden=64, layers=2, heads=2, intermediate=128, pad_vocab_to=None, max_positions=512),
}
WORDS = ("red", "blue", "green", "stone", "river", "cloud", "paper", "seven", "tiger", "apple", "light",
         "north", "glass", "music", "table", "storm")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a tiny config, few items and steps: a CPU smoke run")
    p.add_argument("--items", type=int, default=None, help="items per multiple-choice set (default 100; smoke 8)")
    p.add_argument("--steps", type=int, default=None, help="finetuning steps per method (default 20; smoke 2)")
    p.add_argument("--batch-size", type=int, default=None, help="engine batch size (default 32; smoke 4)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bfloat16 on a GPU that has it), float32, bfloat16, float16")
    p.add_argument("--skip-full", action="store_true", help="no full finetuning")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    args.items = args.items or (8 if args.smoke else 100)
    args.steps = args.steps or (2 if args.smoke else 20)
    args.batch_size = args.batch_size or (4 if args.smoke else 32)
    return args


# --------------------------------------------------------------------------- items


def _shot(rnd: random.Random) -> tuple[str, str]:
    a, b = rnd.randrange(100), rnd.randrange(100)
    options = [a + b, a + b + 1, a + b - 1, a + b + 10]
    rnd.shuffle(options)
    letter = "ABCD"[options.index(a + b)]
    body = "".join(f"\n{l}. {o}" for l, o in zip("ABCD", options))
    return f"Question: What is {a} + {b}?{body}\nAnswer:", " " + letter


def letter_items(n: int, seed: int, fixed_shots: bool, k: int = 5):
    """5-shot arithmetic items with " A".." D" answers; shots per item, or one fixed set."""
    from harvest.engines.base import ChoiceRequest

    rnd = random.Random(seed)
    fixed = [_shot(rnd) for _ in range(k)]
    out = []
    for _ in range(n):
        shots = fixed if fixed_shots else [_shot(rnd) for _ in range(k)]
        prefix = "The following are questions about sums.\n\n" + "".join(q + a + "\n\n" for q, a in shots)
        question, _ = _shot(rnd)
        out.append(ChoiceRequest(prefix + question, (" A", " B", " C", " D")))
    return out


def word_items(n: int, seed: int):
    """Contexts of word lists, four answers of 1-4 words (multi-token continuations)."""
    from harvest.engines.base import ChoiceRequest

    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        context = " ".join(rnd.choice(WORDS) for _ in range(rnd.randrange(40, 120))) + "\nNext:"
        choices = tuple(" " + " ".join(rnd.choice(WORDS) for _ in range(rnd.randrange(1, 5))) for _ in range(4))
        out.append(ChoiceRequest(context, choices))
    return out


def train_examples(n: int, seed: int) -> list[tuple[str, str]]:
    rnd = random.Random(seed)
    return [_shot(rnd) for _ in range(n)]


# --------------------------------------------------------------------------- measuring


class Meter:
    """Wall time (CUDA synchronised) and peak allocated GPU memory of one phase."""

    def __init__(self, device: str):
        import torch

        self.torch, self.cuda = torch, str(device).startswith("cuda")

    def __enter__(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        self.peak_gib = self.torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None
        return False


def item_tokens(tok, items) -> int:
    from harvest.engines.loading import encode_choices

    total = 0
    for it in items:
        ctx, conts = encode_choices(tok, it.context, it.continuations)
        total += len(ctx) + sum(len(c) for c in conts)
    return total


def direct_logprob(model, tok, context: str, continuation: str, device: str) -> float:
    """log p(continuation | context) from one unbatched forward pass (``harvest.testing.direct_logprob``
    on ``device``): the reference the engine's batching, sharing and skipping must agree with."""
    import torch

    from harvest.engines.loading import encode_pair

    ctx, cont = encode_pair(tok, context, continuation)
    with torch.inference_mode():
        logits = model(torch.tensor([ctx + cont], device=device)[:, :-1]).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return sum(float(lp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))


def score_set(engine, name: str, items, failures: list[str], adapter: str | None = None) -> dict:
    with Meter(engine.device) as m:
        scores = engine.score_choices(items, adapter=adapter)
    tokens = item_tokens(engine.tok, items)
    bad = sum(1 for s in scores for lp in s.logprobs if not (math.isfinite(lp) and lp <= 0))
    if bad:
        failures.append(f"{name}: {bad} log-probabilities not finite or positive")
    row = {"items": len(items), "tokens": tokens, "seconds": round(m.seconds, 4),
           "items_per_s": round(len(items) / m.seconds, 1), "tokens_per_s": round(tokens / m.seconds, 1),
           "peak_gib": _round(m.peak_gib)}
    print(f"  {name:<24} {row['items']:>5} items {row['tokens']:>8} tokens {m.seconds:8.3f} s "
          f"{row['items_per_s']:>9.1f} items/s {row['tokens_per_s']:>11.1f} tokens/s  peak {_gib(m.peak_gib)}")
    return row


def _round(x):
    return None if x is None else round(x, 3)


def _gib(x) -> str:
    return "-" if x is None else f"{x:.2f} GiB"


def release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- phases


def build(folder: Path, size: dict) -> dict:
    from harvest.testing import build_tiny_llama, describe

    start = time.perf_counter()
    build_tiny_llama(folder, hidden=size["hidden"], layers=size["layers"], heads=size["heads"],
                     intermediate=size["intermediate"], pad_vocab_to=size["pad_vocab_to"],
                     max_positions=size["max_positions"], seed=0)
    info = {"params": describe(folder)["params"], "build_seconds": round(time.perf_counter() - start, 2), **size}
    print(f"model: Llama {info['params'] / 1e6:.1f}M parameters (hidden {size['hidden']}, {size['layers']} layers, "
          f"{size['heads']} heads), built and saved in {info['build_seconds']} s")
    return info


def evaluate(folder: Path, args, failures: list[str]) -> dict:
    import torch

    from harvest.engines.base import GenerateRequest, ModelRef
    from harvest.engines.hf import HFEngine
    from harvest.testing import corpus

    start = time.perf_counter()
    engine = HFEngine(ModelRef(str(folder), dtype=args.dtype), batch_size=args.batch_size, device=args.device)
    out = {"device": engine.device, "dtype": engine.ref.dtype, "load_seconds": round(time.perf_counter() - start, 2)}
    print(f"engine: hf on {engine.device} in {engine.ref.dtype}, batch {args.batch_size}, "
          f"loaded in {out['load_seconds']} s")
    sets = {"letters_random_shots": letter_items(args.items, 1, fixed_shots=False),
            "letters_fixed_shots": letter_items(args.items, 2, fixed_shots=True),
            "word_answers": word_items(args.items, 3)}
    engine.score_choices(letter_items(4, 9, False) + word_items(4, 9))  # warm-up: kernels, allocator
    out["scoring"] = {name: score_set(engine, name, items, failures) for name, items in sets.items()}
    total_items = sum(r["items"] for r in out["scoring"].values())
    total_tokens = sum(r["tokens"] for r in out["scoring"].values())
    total_s = sum(r["seconds"] for r in out["scoring"].values())
    out["scoring_total"] = {"items": total_items, "tokens": total_tokens, "seconds": round(total_s, 3),
                            "items_per_s": round(total_items / total_s, 1), "tokens_per_s": round(total_tokens / total_s, 1)}

    check = sets["letters_random_shots"][:2] + sets["word_answers"][:2]
    got = engine.score_choices(check)
    diff = max(abs(lp - direct_logprob(engine.model, engine.tok, r.context, c, engine.device))
               for r, s in zip(check, got) for c, lp in zip(r.continuations, s.logprobs))
    out["max_diff_vs_direct_nats"] = round(diff, 6)
    print(f"  largest |engine - direct forward| over {len(check)} items: {diff:.2e} nats")
    if not math.isfinite(diff) or diff > (0.25 if engine.ref.dtype != "float32" else 1e-3):
        failures.append(f"engine vs direct forward: {diff:.3g} nats")

    texts = ["".join(corpus(40, seed=s)) for s in range(4 if args.smoke else 16)]
    window = 128 if args.smoke else 512
    with Meter(engine.device) as m:
        nll, n = engine.token_nll(texts, window)
    out["token_nll"] = {"tokens": n, "window": window, "seconds": round(m.seconds, 4),
                        "tokens_per_s": round(n / m.seconds, 1), "loss": round(nll / n, 4), "peak_gib": _round(m.peak_gib)}
    print(f"  {'token_nll':<24} {n:>8} tokens in {window}-token windows {m.seconds:8.3f} s "
          f"{n / m.seconds:>11.1f} tokens/s  loss {nll / n:.3f}  peak {_gib(m.peak_gib)}")
    if not math.isfinite(nll / n):
        failures.append("token_nll: not finite")

    prompts = [GenerateRequest(q, max_new_tokens=8 if args.smoke else 32, stop=("\n\n",))
               for q, _ in train_examples(4 if args.smoke else 32, 5)]
    with Meter(engine.device) as m:
        texts_out = engine.generate(prompts)
    new = sum(len(engine.tok.encode(t, add_special_tokens=False)) for t in texts_out)
    out["generate"] = {"requests": len(prompts), "new_tokens": new, "seconds": round(m.seconds, 4),
                       "tokens_per_s": round(new / m.seconds, 1), "peak_gib": _round(m.peak_gib)}
    print(f"  {'generate':<24} {len(prompts):>5} prompts {new:>6} new tokens {m.seconds:8.3f} s "
          f"{new / m.seconds:>11.1f} tokens/s  peak {_gib(m.peak_gib)}")
    engine.close()
    del engine
    release()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["memory_after_close_gib"] = round(torch.cuda.memory_allocated() / 2**30, 3)
    return out


def train(folder: Path, method: str, args, dtype: str, device: str, failures: list[str], adapter_dir: Path) -> dict:
    from dataclasses import replace

    from harvest.engines.base import ModelRef
    from harvest.engines.loading import load_model
    from harvest.finetune import Recipe, finetune, save_finetuned

    ref = ModelRef(str(folder), dtype=dtype)
    if method == "full":  # as harvest.sweep.training_ref: full finetuning trains float32 master weights
        ref = replace(ref, dtype="float32")
    model, tok = load_model(ref, device)
    batch = 4 if args.smoke else 16
    recipe = Recipe(method=method, steps=args.steps, batch_size=batch, max_length=256,
                    gradient_checkpointing=False)
    examples = train_examples(batch * args.steps, 11)
    finetune(model, tok, examples[:batch], Recipe(method=method, steps=1, batch_size=batch), dtype=dtype)  # warm-up
    del model
    release()
    model, tok = load_model(ref, device)
    with Meter(device) as m:
        result = finetune(model, tok, examples, recipe, dtype=dtype)
    losses = result.losses
    row = {"method": method, "steps": result.steps, "batch_size": result.batch_size, "tokens": result.tokens,
           "seconds": round(m.seconds, 3), "tokens_per_s": round(result.tokens / m.seconds, 1),
           "trainable_params": result.trainable_params, "first_loss": round(losses[0], 4),
           "last_loss": round(losses[-1], 4), "peak_gib": _round(m.peak_gib), "load_dtype": ref.dtype,
           "compute_dtype": dtype}
    print(f"  {method + ' finetune':<24} {result.steps:>3} steps x {result.batch_size} {result.tokens:>8} tokens "
          f"{m.seconds:8.3f} s {row['tokens_per_s']:>11.1f} tokens/s  loss {losses[0]:.3f} -> {losses[-1]:.3f}  "
          f"peak {_gib(m.peak_gib)}")
    if not all(math.isfinite(x) for x in losses):
        failures.append(f"{method} finetune: non-finite loss")
    if method == "lora":
        save_finetuned(result, tok, adapter_dir)
    del model, result
    release()
    return row


def score_adapter(folder: Path, adapter: Path, args, failures: list[str]) -> dict:
    from harvest.engines.base import ModelRef
    from harvest.engines.hf import HFEngine

    engine = HFEngine(ModelRef(str(folder), dtype=args.dtype), batch_size=args.batch_size, device=args.device)
    items = letter_items(args.items, 4, fixed_shots=False)
    engine.score_choices(items[:4], adapter=str(adapter))  # warm-up: loads the adapter
    row = score_set(engine, "letters with LoRA", items, failures, adapter=str(adapter))
    engine.close()
    del engine
    release()
    return row


def _rows(tree):
    """Every dict inside ``tree`` (the report), depth first."""
    if isinstance(tree, dict):
        yield tree
        for value in tree.values():
            yield from _rows(value)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import transformers

    from harvest.engines.base import resolve_device, resolve_dtype

    if args.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    args.device = resolve_device(args.device)
    args.dtype = resolve_dtype(args.dtype, args.device)
    cuda = args.device.startswith("cuda")
    report: dict = {"smoke": args.smoke, "torch": torch.__version__, "transformers": transformers.__version__,
                    "gpu": torch.cuda.get_device_name(args.device) if cuda else None}
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {args.device}"
          + (f" ({report['gpu']})" if cuda else "") + f", dtype {args.dtype}")
    failures: list[str] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        folder = Path(tmp) / "llama"
        report["model"] = build(folder, SIZES["smoke" if args.smoke else "gpu"])
        print("scoring (HF engine):")
        report["eval"] = evaluate(folder, args, failures)
        print("finetuning (harvest.finetune):")
        adapter = Path(tmp) / "lora"
        report["finetune"] = {"lora": train(folder, "lora", args, args.dtype, args.device, failures, adapter)}
        if not args.skip_full:
            report["finetune"]["full"] = train(folder, "full", args, args.dtype, args.device, failures, adapter)
        report["eval"]["lora_adapter"] = score_adapter(folder, adapter, args, failures)
    report["seconds"] = round(time.perf_counter() - start, 1)
    peaks = [r["peak_gib"] for r in _rows(report) if r.get("peak_gib") is not None]
    report["peak_gib_overall"] = max(peaks) if peaks else None
    report["failures"] = failures
    print(f"{'FAILED: ' + '; '.join(failures) if failures else 'all checks passed'} in {report['seconds']} s")
    line = json.dumps(report, sort_keys=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    print(line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
