"""Multiple-choice scoring: ``emergence harvest eval`` against lm-evaluation-harness, same run.

Both sides score the same items with the same prompts on the same local model (a ~20M-parameter
Llama built from a config, never downloaded), on CPU with one thread, one after the other, each
side and task in a fresh Python process:

- ours: the real command, ``emergence harvest eval SPEC --out DIR`` (pretraining loss given in
  the spec, so only the task is measured);
- lm-eval 0.4.13: ``simple_evaluate(model="hf", ...)`` on the task as a dict over the same rows
  dumped to JSON lines (``../shared/notes/lm-eval-parity.md``).

Three tasks of 500 items, 5-shot, 4 choices:

- ``synthetic_arithmetic`` scored on the letter (one-token answers " A".." D"), shots drawn at
  random per item (lm-eval's default sampler), so prompts share no long prefix. lm-eval already
  runs a context once when every choice is one token (its "one-token continuation cache"), so
  here our gain is only work we skip: the LM head and log-softmax at context positions, most
  of the last layer where no logits are read, and page faults (``hf.keep_freed_memory``;
  ``--lm-eval-malloc`` gives lm-eval's process the same glibc setting, to see what is left);
- ``synthetic_copy`` scored on the options' own text (multi-token answers such as " q w e r t y",
  as in ARC or HellaSwag): lm-eval runs the context once per choice, we run it once per item;
- ``mmlu`` on a local MMLU-format dataset (5 subjects x 100 test rows, 5 dev rows each, questions
  taken from the synthetic tasks), letter answers, shots = the first 5 dev rows of the subject
  (lm-eval's MMLU ``first_n`` sampler, and ours): every item of a subject starts with the same
  5-shot prefix, whose KV cache we compute once per subject. lm-eval runs it as 5 task dicts
  with the MMLU template, ``description`` and ``fewshot_config: {sampler: first_n}``.

Reported per side and task: scoring time (ours: the evaluation unit's time in the manifest,
which tokenises the requests and scores them; lm-eval: time inside ``HFLM.loglikelihood``, which
does the same; its ``_loglikelihood_tokens`` part alone is printed too), whole-process wall time
(spawn to exit: imports, model load, data, prompts, scoring, writing), the same two as CPU time
of the process (one thread, so CPU time is the work done; on a shared, loaded machine wall times
depend on the CPU share each side happened to get, CPU times much less), items/s, ratios,
whether every prompt and every answer is identical, and the largest per-choice log-likelihood
difference.

    OMP_NUM_THREADS=1 python benchmarks/bench_eval_vs_lm_eval.py            # 500 items, 5-shot
    OMP_NUM_THREADS=1 python benchmarks/bench_eval_vs_lm_eval.py --items 40 --small   # smoke run
    OMP_NUM_THREADS=1 python benchmarks/bench_eval_vs_lm_eval.py --lm-eval-malloc     # fairer allocator
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

TASKS = (("synthetic_arithmetic", "letter"), ("synthetic_copy", "text"), ("mmlu", "letter"))
# What harvest.engines.hf.keep_freed_memory sets with mallopt, as glibc tunables for lm-eval's process.
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824"
MMLU_SUBJECTS = 5
MMLU_TEMPLATE = "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:"

LM_EVAL_SIDE = textwrap.dedent('''
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, configs, out, batch = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    spent = {}
    def timed(name):  # wall and CPU seconds spent in HFLM.<name>
        inner = getattr(HFLM, name)
        def wrapper(self, *a, **k):
            t0, cpu0 = time.perf_counter(), time.process_time()
            try:
                return inner(self, *a, **k)
            finally:
                wall, cpu = spent.get(name, (0.0, 0.0))
                spent[name] = (wall + time.perf_counter() - t0, cpu + time.process_time() - cpu0)
        setattr(HFLM, name, wrapper)
    timed("loglikelihood")  # tokenise the requests, then _loglikelihood_tokens (as our unit does)
    timed("_loglikelihood_tokens")
    res = simple_evaluate(model="hf", model_args=f"pretrained={model},dtype=float32", tasks=configs,
                          device="cpu", batch_size=batch, log_samples=True,
                          task_manager=TaskManager(include_defaults=False))
    samples = [s for c in configs for s in sorted(res["samples"][c["task"]], key=lambda s: s["doc_id"])]
    json.dump({"scoring_seconds": spent["loglikelihood"][0], "scoring_cpu_seconds": spent["loglikelihood"][1],
               "forward_seconds": spent["_loglikelihood_tokens"][0],
               "prompts": [s["arguments"][0][0] for s in samples],
               "logprobs": [[float(r[0][0]) for r in s["resps"]] for s in samples]}, open(out, "w"))
''')


def build_model(folder: Path, small: bool) -> dict:
    from harvest.testing import BENCH_MODEL, build_tiny_llama, describe

    if small:
        build_tiny_llama(folder, hidden=64, layers=2, heads=2, init_std=0.1)
    else:  # ~20M parameters (harvest.testing.BENCH_MODEL)
        build_tiny_llama(folder, **BENCH_MODEL)
    return describe(folder)


def write_inputs(root: Path, model: Path, name: str, answer: str, items: int, shots: int) -> list[dict]:
    """The harvest spec, and the lm-eval task configs over the same rows."""
    folder = root / f"{name}-{answer}"
    folder.mkdir()
    if name == "mmlu":
        configs, table = write_mmlu(folder, items, shots), f'data = "{folder / "data"}"'
    else:
        configs = [write_synthetic(folder, name, answer, items, shots)]
        table = f'options = {{ n_test = {items}, n_train = 256, answer = "{answer}" }}'
    (folder / "spec.toml").write_text(textwrap.dedent(f"""
        [engine]
        batch_size = 8

        [[checkpoints]]
        name = "bench"
        path = "{model}"
        family = "bench"
        params = 1
        tokens = 1
        pretrain_loss = 1.0

        [[tasks]]
        task = "{name}"
        shots = {shots}
        {table}
    """))
    return configs


def write_synthetic(folder: Path, name: str, answer: str, items: int, shots: int) -> dict:
    from harvest.tasks import get_task

    task = get_task(name, n_test=items, n_train=256, answer=answer)
    for split in ("test", "train"):
        with open(folder / f"{split}.jsonl", "w") as f:
            for d in task.docs(split):
                f.write(json.dumps({"text": task.doc_to_text(d), "choices": task.choices(d), "label": task.gold(d)}) + "\n")
    return {"task": f"bench_{name}_{answer}", "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl")}},
            "test_split": "test", "fewshot_split": "train", "output_type": "multiple_choice",
            "doc_to_text": "text", "doc_to_choice": "choices", "doc_to_target": "label",
            "num_fewshot": shots, "metric_list": [{"metric": "acc"}]}


def write_mmlu(folder: Path, items: int, shots: int) -> list[dict]:
    """MMLU columns (question, subject, choices, answer): ``MMLU_SUBJECTS`` subjects of equal size,
    test rows grouped by subject; one lm-eval task per subject, as lm-eval's MMLU."""
    from harvest.tasks import get_task

    per = items // MMLU_SUBJECTS
    rows = {"test": [], "dev": []}
    for s in range(MMLU_SUBJECTS):
        source = ("synthetic_arithmetic", "synthetic_copy")[s % 2]
        task = get_task(source, n_test=per, n_train=shots, data_seed=100 + s)
        subject = f"{source.split('_')[1]}_part_{s}"
        for split, src in (("test", "test"), ("dev", "train")):
            rows[split] += [{"question": d["question"], "subject": subject, "choices": d["choices"],
                             "answer": d["answer"]} for d in task.docs(src)]
    (folder / "data").mkdir()
    for split, docs in rows.items():
        (folder / "data" / f"{split}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    configs = []
    for subject in dict.fromkeys(d["subject"] for d in rows["test"]):
        files = {}
        for split, docs in rows.items():
            files[split] = str(folder / f"{subject}-{split}.jsonl")
            Path(files[split]).write_text("".join(json.dumps(d) + "\n" for d in docs if d["subject"] == subject))
        configs.append({"task": f"bench_mmlu_{subject}", "dataset_path": "json", "dataset_kwargs": {"data_files": files},
                        "test_split": "test", "fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"},
                        "description": f"The following are multiple choice questions (with answers) about "
                                       f"{subject.replace('_', ' ')}.\n\n",
                        "output_type": "multiple_choice", "doc_to_text": MMLU_TEMPLATE,
                        "doc_to_choice": ["A", "B", "C", "D"], "doc_to_target": "answer",
                        "num_fewshot": shots, "metric_list": [{"metric": "acc"}]})
    return configs


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_ours(folder: Path) -> dict:
    out = folder / "ours"
    t0, cpu0 = time.perf_counter(), children_cpu()
    subprocess.run([sys.executable, "-m", "emergence", "harvest", "eval", str(folder / "spec.toml"), "--out", str(out),
                    "--quiet"], env=ENV, check=True, stdout=subprocess.DEVNULL)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    import polars as pl

    manifest = json.loads((out / "manifest.json").read_text())
    unit = next(u for u in manifest["runs"][-1]["units_computed"] if u["kind"] == "eval")
    items = pl.read_parquet(out / "items.parquet")
    items = items.with_columns(pl.col("item_id").str.split("-").list.get(1).cast(pl.Int64).alias("i")).sort("i")
    return {"wall": wall, "scoring": unit["seconds"], "cpu": cpu, "scoring_cpu": unit["cpu_seconds"],
            "logprobs": items["choice_logprobs"].to_list()}


def run_lm_eval(folder: Path, model: Path, configs: list[dict], malloc: bool) -> dict:
    out = folder / "lm_eval.json"
    env = {**ENV, "GLIBC_TUNABLES": MALLOC_TUNABLES} if malloc else ENV
    t0, cpu0 = time.perf_counter(), children_cpu()
    subprocess.run([sys.executable, "-c", LM_EVAL_SIDE, str(model), json.dumps(configs), str(out), "8"],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    data = json.loads(out.read_text())
    return {"wall": wall, "scoring": data["scoring_seconds"], "cpu": cpu, "scoring_cpu": data["scoring_cpu_seconds"],
            "forward": data["forward_seconds"],
            "logprobs": data["logprobs"], "prompts": data["prompts"]}


def argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def report(label: str, n: int, shots: int, ours: dict, theirs: dict, prompt_tokens: float, prompts: list[str]) -> None:
    same = sum(argmax(a) == argmax(b) for a, b in zip(ours["logprobs"], theirs["logprobs"]))
    diff = max(abs(x - y) for a, b in zip(ours["logprobs"], theirs["logprobs"]) for x, y in zip(a, b))
    print(f"\ntask: {label}, {n} items x 4 choices, {shots}-shot, mean prompt {prompt_tokens:.0f} tokens")
    print(f"{'':24}{'ours':>12}{'lm-eval':>12}{'speed-up':>10}")
    rows = (("scoring time (s)", "scoring"), ("whole process (s)", "wall"),
            ("scoring CPU time (s)", "scoring_cpu"), ("whole-process CPU (s)", "cpu"))
    for label, key in rows:
        print(f"{label:24}{ours[key]:12.2f}{theirs[key]:12.2f}{theirs[key] / ours[key]:9.2f}x")
    for label, key in (("scoring items/s", "scoring"), ("whole-process items/s", "wall")):
        print(f"{label:24}{n / ours[key]:12.2f}{n / theirs[key]:12.2f}{theirs[key] / ours[key]:9.2f}x")
    print(f"(lm-eval scoring time without its tokenisation, in _loglikelihood_tokens: {theirs['forward']:.2f} s)")
    same_prompts = sum(a == b for a, b in zip(prompts, theirs["prompts"]))
    print(f"identical prompts: {same_prompts}/{len(theirs['prompts'])}; identical answers: {same}/{n}; "
          f"max |log-likelihood difference|: {diff:.2e} nats", flush=True)


def our_prompts(model: Path, spec: Path) -> tuple[float, list[str]]:
    """Mean prompt length in tokens, and our prompts in item order."""
    from transformers import AutoTokenizer

    from harvest.evaluate import plan_task
    from harvest.spec import load_spec

    tok = AutoTokenizer.from_pretrained(model)
    plan = plan_task(load_spec(spec).tasks[0])
    items = sorted(plan.items, key=lambda it: int(it.item_id.split("-")[1]))
    return sum(len(tok.encode(it.context)) for it in items) / len(items), [it.context for it in items]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="a 0.15M-parameter model (smoke test)")
    parser.add_argument("--tasks", nargs="*", default=[n for n, _ in TASKS], help="a subset of the tasks")
    parser.add_argument("--lm-eval-malloc", action="store_true",
                        help="run lm-eval with the glibc malloc thresholds our engine sets (no page-fault churn)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        info = build_model(root / "model", args.small)
        print(f"model: Llama, {info['params'] / 1e6:.1f}M parameters ({info['non_embedding'] / 1e6:.1f}M "
              f"non-embedding, vocabulary {info['vocab']}), float32, CPU, 1 thread, batch size 8 both sides")
        if args.lm_eval_malloc:
            print(f"lm-eval runs with GLIBC_TUNABLES={MALLOC_TUNABLES}")
        for name, answer in [t for t in TASKS if t[0] in args.tasks]:
            configs = write_inputs(root, root / "model", name, answer, args.items, args.shots)
            folder = root / f"{name}-{answer}"
            tokens, prompts = our_prompts(root / "model", folder / "spec.toml")
            ours = run_ours(folder)
            theirs = run_lm_eval(folder, root / "model", configs, args.lm_eval_malloc)
            shots = "first-n (fixed per subject)" if name == "mmlu" else "random"
            report(f"{name}, {answer} answers, {shots} shots", args.items, args.shots, ours, theirs, tokens, prompts)


if __name__ == "__main__":
    main()
