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
    assert d["model_loads"] == 2 + 2 + 2 and d["model_loads_ray"] == 2 + 2 * 12
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
