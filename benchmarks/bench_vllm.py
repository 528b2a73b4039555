"""The vLLM engine against the HF engine: multiple-choice scoring and greedy generation, same process.

Both engines (``harvest/engines/vllm_engine.py`` VLLMEngine, ``harvest/engines/hf.py`` HFEngine)
load the same local model (a ~20M-parameter Llama built from a config, as in
``bench_eval_vs_lm_eval.py``; never downloaded) in float32 on CPU, one after the other in this
process, and run the same requests:

- multiple choice: 400 items with contexts of 100-300 tokens (lines of
  ``harvest.testing.corpus`` ending in a question), 4 choices each; half the items have one-token
  answers (" A".." D", the MMLU case: vLLM runs the context once for all four), half have answers
  of 1-4 words (mostly multi-token, as in ARC or HellaSwag: vLLM runs the context once per
  choice and asks for ``prompt_logprobs``, which bypasses its prefix cache). Each half is one
  ``score_choices`` call, as a task is in an evaluation unit;
- generation: 100 prompts of the same kind, greedy, ``max_new_tokens`` 32, stop at a blank line
  or "Question:" (one ``generate`` call).

Each engine is loaded (timed apart: load time is reported, not counted), warmed up on a few
other requests (not timed; different texts, so vLLM's prefix cache gains nothing from them), then
timed. Reported: wall time and CPU time of the process (``time.process_time``, all threads) per
engine and workload, items/s, and the ratio HF / vLLM (> 1: vLLM faster). On a shared, loaded
machine wall times depend on the CPU share each side happened to get, CPU times much less.

Agreement: identical argmax prediction for every item, the largest per-choice log-probability
difference (nats, summed over the choice's tokens), and the share of identical greedy texts.
A differing prediction or text counts as float noise only where it is a near-tie: the HF side's
log-probabilities of the two choices (or, for generation, of the two tokens where the greedy
paths first part, checked along vLLM's token path) within ``--tol`` nats. Texts from the same
greedy tokens that decode differently are listed but are not prediction disagreements (the
random model emits stray byte tokens; an incomplete UTF-8 sequence at the end of a budget is
held back by both engines, but other decoding differences would show here). Anything else, or a log-probability
difference above ``--tol``, exits 1.

Run it in the vLLM venv (``scripts/ci_vllm.sh`` builds ``.venv-vllm``); elsewhere it stops with a
one-line message. The environment below is set before vLLM is imported (engine core in this
process, 1 GiB CPU KV cache, one OpenMP thread, vLLM logging at ERROR: its warnings about
libtcmalloc/libiomp missing from ``LD_PRELOAD`` concern speed, and neither side has them). The HF
engine's malloc setting (``hf.keep_freed_memory``) is process-wide, so vLLM runs with it too.

    OMP_NUM_THREADS=1 python benchmarks/bench_vllm.py            # 400 items, 100 generations, ~20M
    OMP_NUM_THREADS=1 python benchmarks/bench_vllm.py --small    # ~1M-parameter model, smoke run
    OMP_NUM_THREADS=1 python benchmarks/bench_vllm.py --items 100 --generations 20
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

for _key, _value in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
                     "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                     "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                     "VLLM_DO_NOT_TRACK": "1", "VLLM_LOGGING_LEVEL": "ERROR",
                     "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}.items():
    os.environ.setdefault(_key, _value)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LETTERS = (" A", " B", " C", " D")
STOP = ("\n\n", "Question:")
WARMUP_ITEMS, WARMUP_GENERATIONS = 8, 4


def check_vllm() -> str:
    """vLLM's version, or exit with one line: the benchmark means nothing without it."""
    try:
        import vllm
    except Exception as err:  # ImportError, or a broken install (e.g. a CUDA torchvision)
        first = (str(err).strip().splitlines() or [""])[0][:200]
        sys.exit(f"bench_vllm: vllm is not importable ({type(err).__name__}: {first}); run it in the "
                 f"vLLM venv (scripts/ci_vllm.sh builds .venv-vllm)")
    return vllm.__version__


def build_model(folder: Path, small: bool) -> dict:
    from harvest.testing import BENCH_MODEL, build_tiny_llama, describe

    if small:  # ~1M parameters: 4 layers of width 128 (2 heads of 64; vLLM's CPU attention wants >= 32)
        build_tiny_llama(folder, hidden=128, layers=4, heads=2, vocab_size=1024, max_positions=1024, init_std=0.1)
    else:  # ~20M parameters (harvest.testing.BENCH_MODEL)
        build_tiny_llama(folder, **BENCH_MODEL)
    return describe(folder)


# ---------------------------------------------------------------------- requests


class Texts:
    """Contexts of a drawn token length: corpus lines, then a question stem."""

    def __init__(self, tok, seed: int):
        from harvest.testing import corpus

        self.tok, self.rng = tok, random.Random(seed)
        self.lines = [line + "\n" for block in corpus(2000, seed) for line in block.split("\n")]

    def context(self, lo: int = 100, hi: int = 300) -> str:
        rng = self.rng
        a, b = rng.randrange(100), rng.randrange(100)
        stem = (f"Question: What is {a} + {b}?\nA. {a + b}\nB. {a + b + 1}\nC. {a + b - 1}\n"
                f"D. {a + b + 10}\nAnswer:")
        target = rng.randint(lo, hi) - len(self.tok.encode(stem))
        start, text = rng.randrange(len(self.lines) - 400), ""
        for line in self.lines[start:]:
            if len(self.tok.encode(text + line)) > target:
                break
            text += line
        return text + stem


def make_requests(tok, n_items: int, n_gen: int, seed: int):
    """(one-token-answer items, word-answer items, generation requests)."""
    from harvest.engines.base import ChoiceRequest, GenerateRequest
    from harvest.testing import WORDS

    texts = Texts(tok, seed)
    letters = [ChoiceRequest(texts.context(), LETTERS) for _ in range(n_items - n_items // 2)]
    words = [ChoiceRequest(texts.context(), tuple(" " + " ".join(texts.rng.choice(WORDS)
                                                                 for _ in range(texts.rng.randint(1, 4)))
                                                  for _ in range(4)))
             for _ in range(n_items // 2)]
    gens = [GenerateRequest(texts.context(), max_new_tokens=32, stop=STOP) for _ in range(n_gen)]
    return letters, words, gens


def describe_requests(tok, letters, words, gens) -> str:
    from harvest.engines.hf import encode_pair

    ctx = [len(tok.encode(r.context)) for r in letters + words]
    conts = [len(encode_pair(tok, r.context, c)[1]) for r in letters + words for c in r.continuations]
    prompt = [len(tok.encode(r.prompt)) for r in gens]
    return (f"{len(letters) + len(words)} multiple-choice items x 4 choices, context {min(ctx)}-{max(ctx)} tokens "
            f"(mean {sum(ctx) / len(ctx):.0f}): {len(letters)} with one-token answers (\" A\"..\" D\"), "
            f"{len(words)} with 1-4-word answers; choices of one token {sum(n == 1 for n in conts)}, "
            f"of 2+ tokens {sum(n > 1 for n in conts)} (longest {max(conts)})\n"
            f"{len(gens)} generation requests, prompt {min(prompt)}-{max(prompt)} tokens "
            f"(mean {sum(prompt) / len(prompt):.0f}), greedy, max_new_tokens 32, stop {list(STOP)}")


# ---------------------------------------------------------------------- timing


def timed(fn, *args):
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - t0, time.process_time() - cpu0


def run_engine(make, letters, words, gens, warm) -> dict:
    """Load (timed apart), warm up on other requests, then time each workload once."""
    engine, load_wall, load_cpu = timed(make)
    engine.score_choices(warm[0])
    engine.score_choices(warm[1])
    engine.generate(warm[2])
    res = {"engine": engine, "load": (load_wall, load_cpu)}
    res["letters"], *res["t_letters"] = timed(engine.score_choices, letters)
    res["words"], *res["t_words"] = timed(engine.score_choices, words)
    res["gens"], *res["t_gens"] = timed(engine.generate, gens)
    return res


def table(hf: dict, vl: dict, n_letters: int, n_words: int, n_gen: int) -> None:
    print(f"\n{'':40}{'HF':>10}{'vLLM':>10}{'HF/vLLM':>10}")

    def row(label, a, b, rate=False):
        ratio = b / a if rate else a / b
        print(f"{label:40}{a:10.2f}{b:10.2f}{ratio:9.2f}x")

    row("load (not counted below), wall s", hf["load"][0], vl["load"][0])
    row("load (not counted below), CPU s", hf["load"][1], vl["load"][1])
    work = (("MC, one-token answers", "t_letters", n_letters), ("MC, word answers", "t_words", n_words))
    for label, key, n in work:
        row(f"{label} ({n}), wall s", hf[key][0], vl[key][0])
        row(f"{label} ({n}), CPU s", hf[key][1], vl[key][1])
        row(f"{label}, items/s (wall)", n / hf[key][0], n / vl[key][0], rate=True)
        row(f"{label}, items/s (CPU)", n / hf[key][1], n / vl[key][1], rate=True)
    total = [sum(r[k][i] for k in ("t_letters", "t_words")) for r in (hf, vl) for i in (0, 1)]
    n = n_letters + n_words
    row(f"MC, all ({n}), wall s", total[0], total[2])
    row(f"MC, all ({n}), CPU s", total[1], total[3])
    row("MC, all, items/s (wall)", n / total[0], n / total[2], rate=True)
    row("MC, all, items/s (CPU)", n / total[1], n / total[3], rate=True)
    row(f"generation ({n_gen}), wall s", hf["t_gens"][0], vl["t_gens"][0])
    row(f"generation ({n_gen}), CPU s", hf["t_gens"][1], vl["t_gens"][1])
    row("generation, requests/s (wall)", n_gen / hf["t_gens"][0], n_gen / vl["t_gens"][0], rate=True)
    row("generation, requests/s (CPU)", n_gen / hf["t_gens"][1], n_gen / vl["t_gens"][1], rate=True)
    print("ratio: HF time / vLLM time (for rates vLLM / HF); > 1 means vLLM is faster")


# ---------------------------------------------------------------------- agreement


def argmax(xs) -> int:
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def check_choices(hf_scores, vl_scores, tol: float) -> tuple[list[str], float]:
    """Problems (beyond float noise), and the largest per-choice |difference| in nats."""
    problems, worst, same, ties = [], 0.0, 0, 0
    for i, (h, v) in enumerate(zip(hf_scores, vl_scores)):
        if h.n_tokens != v.n_tokens:
            problems.append(f"item {i}: continuation lengths {h.n_tokens} (HF) vs {v.n_tokens} (vLLM)")
        worst = max([worst] + [abs(a - b) for a, b in zip(h.logprobs, v.logprobs)])
        a, b = argmax(h.logprobs), argmax(v.logprobs)
        if a == b:
            same += 1
        elif abs(h.logprobs[a] - h.logprobs[b]) <= tol:
            ties += 1
        else:
            problems.append(f"item {i}: HF picks {a}, vLLM picks {b} (HF gap "
                            f"{h.logprobs[a] - h.logprobs[b]:.2e} nats)")
    n = len(hf_scores)
    print(f"  identical predictions {same}/{n}" + (f" ({ties} more differ at near-ties)" if ties else "")
          + f"; max |log-prob difference| {worst:.2e} nats")
    if worst > tol:
        problems.append(f"max |log-prob difference| {worst:.2e} nats exceeds --tol {tol:g}")
    return problems, worst


def generation_gap(hf, vl, req) -> tuple[str, float | None]:
    """Where two greedy texts part: the HF model's log-prob gap between its own next token and
    vLLM's, along vLLM's token path (no stop strings, so the paths are whole)."""
    import torch
    from vllm import SamplingParams

    budget = min(req.max_new_tokens, vl.max_length - 1)
    ids = vl.tok.encode(req.prompt)[-(vl.max_length - budget):]
    out = vl.llm.generate([{"prompt_token_ids": ids}], SamplingParams(temperature=0.0, max_tokens=budget),
                          use_tqdm=False)[0].outputs[0].token_ids
    with torch.inference_mode():
        logits = hf.model(torch.tensor([ids + list(out)])).logits[0, len(ids) - 1:].float()
    logp = torch.log_softmax(logits, -1)
    for k, token in enumerate(out):
        own = int(logp[k].argmax())
        if own != token:
            return f"token {k}", float(logp[k, own] - logp[k, token])
    return "same tokens", None  # the texts differ after detokenising or cutting at a stop string


def check_generations(hf, vl, gens, hf_out, vl_out, tol: float) -> list[str]:
    """Differing texts: a near-tie, the same tokens decoded differently (not a prediction
    disagreement: listed, not failed), or a problem."""
    problems, decoded, ties, same = [], [], 0, sum(a == b for a, b in zip(hf_out, vl_out))
    for i, (a, b) in enumerate(zip(hf_out, vl_out)):
        if a == b:
            continue
        where, gap = generation_gap(hf, vl, gens[i])
        if gap is None:
            decoded.append(f"generation {i}: HF ends {a[-12:]!r}, vLLM ends {b[-12:]!r}")
        elif gap <= tol:
            ties += 1
        else:
            problems.append(f"generation {i}: parts at {where}, HF gap {gap:.2e} nats: HF {a!r} vs vLLM {b!r}")
    print(f"  identical greedy texts {same}/{len(gens)} ({same / len(gens):.1%})"
          + (f"; {ties} differ at a near-tie (HF top-2 within --tol)" if ties else ""))
    if decoded:
        print(f"  same greedy tokens, different text: {len(decoded)} (the engines detokenise differently):")
        for line in decoded[:5]:
            print(f"    {line}")
    return problems


# ---------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=400, help="multiple-choice items (half one-token answers)")
    parser.add_argument("--generations", type=int, default=100, help="greedy generation requests")
    parser.add_argument("--small", action="store_true", help="a ~1M-parameter model (smoke run)")
    parser.add_argument("--tol", type=float, default=1e-3,
                        help="float noise, nats: largest allowed per-choice difference and near-tie gap")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    vllm_version = check_vllm()

    import torch
    import transformers
    from transformers import AutoTokenizer

    from harvest.engines.base import ModelRef
    from harvest.engines.hf import HFEngine
    from harvest.engines.vllm_engine import VLLMEngine

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        info = build_model(folder, args.small)
        tok = AutoTokenizer.from_pretrained(folder)
        letters, words, gens = make_requests(tok, args.items, args.generations, args.seed)
        warm = make_requests(tok, WARMUP_ITEMS, WARMUP_GENERATIONS, args.seed + 1)  # other texts
        print(f"model: Llama, {info['params'] / 1e6:.1f}M parameters ({info['non_embedding'] / 1e6:.1f}M "
              f"non-embedding, vocabulary {info['vocab']}), float32, CPU, "
              f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
        print(f"vllm {vllm_version}, torch {torch.__version__}, transformers {transformers.__version__}")
        print(describe_requests(tok, letters, words, gens))
        print(f"warm-up per engine, not timed: {WARMUP_ITEMS // 2} + {WARMUP_ITEMS // 2} other items, "
              f"{WARMUP_GENERATIONS} other prompts", flush=True)

        ref = ModelRef(str(folder))
        hf = run_engine(lambda: HFEngine(ref), letters, words, gens, warm)
        print(f"HF engine: batch_size {hf['engine'].batch_size}, torch threads {torch.get_num_threads()}", flush=True)
        # The HF model stays loaded (idle) to explain disagreements afterwards; only vLLM runs now.
        vl = run_engine(lambda: VLLMEngine(ref, gpu_memory_utilization=0.1, enforce_eager=True), letters, words,
                        gens, warm)
        sched = vl["engine"].llm.llm_engine.vllm_config.scheduler_config
        print(f"vLLM engine: in-process core, enforce_eager, max_model_len {vl['engine'].max_length + 1}, "
              f"max_num_seqs {sched.max_num_seqs}, max_num_batched_tokens {sched.max_num_batched_tokens}, "
              f"KV cache {os.environ['VLLM_CPU_KVCACHE_SPACE']} GiB, torch threads {torch.get_num_threads()}, "
              f"CPUs allowed {len(os.sched_getaffinity(0))}")
        table(hf, vl, len(letters), len(words), len(gens))

        print("\nagreement (HF engine vs vLLM engine):")
        problems = []
        for label, key in (("MC, one-token answers", "letters"), ("MC, word answers", "words")):
            print(f" {label}:")
            problems += check_choices(hf[key], vl[key], args.tol)[0]
        print(" generation:")
        problems += check_generations(hf["engine"], vl["engine"], gens, hf["gens"], vl["gens"], args.tol)
        vl["engine"].close()
        hf["engine"].close()
    if problems:
        print(f"\nFAIL: {len(problems)} disagreement(s) beyond float noise (--tol {args.tol:g} nats):")
        for p in problems[:20]:
            print(f"  {p}")
        return 1
    print(f"\nOK: the engines agree within float noise (--tol {args.tol:g} nats)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
