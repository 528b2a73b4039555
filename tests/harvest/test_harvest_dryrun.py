"""``emergence harvest eval|sweep --dry-run``: counts and cost estimates from the spec alone."""

from __future__ import annotations

import json

import pytest

from tests.cli_runner import run_cli

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.harvest, pytest.mark.filterwarnings("ignore::FutureWarning")]

SPEC = """
[engine]
name = "hf"

[held_out]
path = "heldout.txt"
window = 64

[[checkpoints]]
name = "a"
path = "a"
family = "tiny"
params = 1
tokens = 1000

[[checkpoints]]
name = "b"
path = "b"
family = "tiny"
params = 1
tokens = 2000
pretrain_loss = 3.0

[[tasks]]
task = "synthetic_arithmetic"
shots = 2
options = { n_train = 40, n_test = 10 }

[[tasks]]
task = "mmlu"
shots = 5
dataset = "cais/mmlu"

[sweep]
n_train = [4, 8]
subset_seeds = [0, 1, 2]
tasks = ["synthetic_arithmetic"]
"""


@pytest.fixture
def spec(tmp_path, monkeypatch):
    import transformers

    import harvest.engines.hf as hf
    from harvest.testing import build_tiny_model, corpus, describe

    for name in "ab":
        build_tiny_model(tmp_path / name, "llama")
    (tmp_path / "heldout.txt").write_text("".join(corpus(10)))
    (tmp_path / "spec.toml").write_text(SPEC)

    def refuse(*a, **k):
        raise AssertionError("the dry run loaded a model")

    monkeypatch.setattr(hf, "load_model", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    return tmp_path / "spec.toml", describe(tmp_path / "a")["params"]


def test_eval_dry_run_prints_counts_and_costs_without_loading_a_model(spec, capsys):
    path, params = spec
    code, out, err = run_cli(["harvest", "eval", str(path), "--dry-run"], capsys)
    assert code == 0, err
    assert "checkpoints: 2   tasks: 2" in out
    assert "evaluation units: 5 (4 few-shot, 1 pretraining loss)" in out
    assert "model loads: 2" in out and f"params a: {params:,} (from config.json)" in out
    assert "unknown (data not local, counted as 0): mmlu" in out
    assert "at an assumed 200 TFLOP/s effective" in out
    assert not (path.parent / "parts").exists()


def test_sweep_dry_run_as_json(spec, capsys):
    path, params = spec
    code, out, err = run_cli(["harvest", "sweep", str(path), "--dry-run", "--json", "--tflops", "100"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert (d["checkpoints"], d["tasks"], d["evaluation_units"]["total"]) == (2, 2, 5)
    assert d["finetune"]["cells"] == 2 * 2 * 3 and d["finetune"]["target_modules"] == "all-linear"
    assert d["model_loads"] == 2 + 2 + 2 and d["model_loads_ray"] == d["model_loads"]  # one task per checkpoint
    assert d["params"]["a"] == {"params": params, "from": "config.json"}
    assert d["items"] == {"synthetic_arithmetic": 10, "mmlu": "unknown"}
    assert d["engine"] == {"name": "hf", "device": "cpu", "dtype": "float32", "dtype_setting": "auto"}
    tokens = d["eval_tokens_per_checkpoint"]["synthetic_arithmetic"]
    assert tokens > 0 and d["eval_tokens_per_checkpoint"]["mmlu"] == "unknown"
    expected_eval = 2 * params * tokens * 2 + 2 * params * d["eval_tokens_per_checkpoint"]["held_out"]
    assert d["eval_flops"] == pytest.approx(expected_eval + d["finetune"]["eval_flops"])
    assert d["finetune"]["train_flops"] > 0
    assert d["gpu_hours"] == pytest.approx(d["total_flops"] / 100e12 / 3600)
    assert d["assumptions"]["tflops_effective"] == 100


def test_out_is_required_without_dry_run(spec, capsys):
    path, _ = spec
    code, out, err = run_cli(["harvest", "eval", str(path)], capsys)
    assert code == 2 and "--out" in err


def test_sweep_dry_run_says_whether_training_fits_one_gpu(spec, capsys):
    path, _ = spec
    code, out, err = run_cli(["harvest", "sweep", str(path), "--dry-run"], capsys)
    assert code == 0, err
    line = next(x for x in out.splitlines() if "training memory per GPU" in x)
    assert "(a, lora, micro-batch 8 x " in line and "float32" in line and 'gradient_checkpointing = "auto": off' in line
    assert "verdict: fits one 80 GB GPU" in out
    code, out, err = run_cli(["harvest", "sweep", str(path), "--dry-run", "--json", "--gpu-memory-gb", "0.5"], capsys)
    m = json.loads(out)["training_memory"]
    assert (m["gpu_memory_gb"], m["fits"], m["micro_batch"]) == (0.5, False, 8)  # the overhead alone is 1.5 GB
    assert m["checkpointing_on"]  # "auto" switches it on when the estimate without it does not fit
    assert m["needed_gb"] == m["with_checkpointing_gb"] < m["without_checkpointing_gb"]


def test_training_memory_of_a_7b_full_finetune(spec):
    """7B parameters, full finetuning in bfloat16 mixed precision: 16 B/param of weights,
    gradients and Adam moments (112 GB) fit no 80 GB GPU; "auto" checkpointing is on (> 1B)."""
    from dataclasses import replace

    from harvest.dryrun import training_memory_estimate
    from harvest.spec import load_spec

    path, _ = spec
    full = path.parent / "full.toml"
    full.write_text(path.read_text().replace("[sweep]", '[sweep]\nrecipe = { method = "full", micro_batch_size = 1 }'))
    loaded = load_spec(full)
    loaded = replace(loaded, engine=replace(loaded.engine, dtype="bfloat16"))
    configs = {"a": (7_000_000_000, "spec", None), "b": (1_000, "spec", None)}
    m = training_memory_estimate(loaded, configs, {"largest_level": 8, "longest_example_tokens": 200}, 80.0)
    assert (m["checkpoint"], m["method"], m["shape_from"], m["micro_batch"], m["seq_len"]) == ("a", "full", "params", 1, 200)
    assert m["mixed_precision"] and m["checkpointing_on"] and not m["fits"]
    assert 112 < m["with_checkpointing_gb"] < m["without_checkpointing_gb"]
    from harvest.dryrun import _memory_lines

    lines = _memory_lines(m)
    assert "bfloat16 mixed precision" in lines[0] and lines[1].startswith("  verdict: does not fit one 80 GB GPU")
