"""The finetuning sweep with the vLLM engine: every LoRA adapter of a checkpoint is scored in one
vLLM engine, and the finetune rows match the same sweep scored by the HF engine.

Runs in the vLLM venv (scripts/ci_vllm.sh); skips elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("vllm")
pl = pytest.importorskip("polars")
torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.vllm, pytest.mark.filterwarnings("ignore::FutureWarning")]

TOL = 2e-4  # nats per choice, as in test_vllm_engine.py

ENGINES = {
    "hf": '[engine]\nname = "hf"\nbatch_size = 16\n',
    "vllm": '[engine]\nname = "vllm"\nmax_lora_rank = 8\nmax_loras = 2\nenforce_eager = true\n'
            "gpu_memory_utilization = 0.1\n",
}


def write_spec(root: Path, engine: str) -> Path:
    """One checkpoint, two data levels, two seeds, one synthetic task: 4 LoRA cells."""
    spec = (ENGINES[engine]
            + '\n[held_out]\npath = "heldout.txt"\nwindow = 64\n\n'
            '[[checkpoints]]\nname = "tiny"\npath = "ckpt"\nfamily = "tiny"\nparams = 150000\ntokens = 1000\n\n'
            '[[tasks]]\ntask = "synthetic_arithmetic"\nshots = 2\noptions = { n_train = 24, n_test = 16 }\n\n'
            "[sweep]\nn_train = [4, 12]\nsubset_seeds = [0, 1]\n\n"
            "[sweep.recipe]\nlr = 1e-2\nbatch_size = 8\nepochs = 1\nmin_steps = 4\nmax_steps = 8\n")
    path = root / f"{engine}.toml"
    path.write_text(spec)
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    from harvest.testing import build_tiny_llama, corpus

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("vllm_sweep")
    build_tiny_llama(root / "ckpt", seed=0, train_steps=12)
    (root / "heldout.txt").write_text("".join(corpus(20, seed=1)))
    return root


def finetune_items(folder: Path) -> pl.DataFrame:
    return (pl.read_parquet(folder / "items.parquet").filter(pl.col("setting") == "finetune")
            .sort(["n_train", "subset_seed", "item_id"]))


def test_vllm_sweep_scores_all_adapters_in_one_engine_and_matches_hf(root, monkeypatch):
    import harvest.engines
    import harvest.evaluate  # binds the real load_engine: base units are not counted below
    from harvest.driver import run_sweep
    from harvest.engines.vllm_engine import VLLMEngine

    loads, calls = [], []
    real = harvest.engines.load_engine
    monkeypatch.setattr(harvest.engines, "load_engine", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    run = VLLMEngine._run
    monkeypatch.setattr(VLLMEngine, "_run", lambda self, p, q, adapters: calls.append(list(adapters)) or run(self, p, q, adapters))
    reports = {e: run_sweep(write_spec(root, e), root / e, show_progress=False) for e in ENGINES}
    assert all(r.computed == 4 and not r.failed and not r.missing for r in reports.values())
    assert loads == ["hf", "vllm"]  # one scoring engine per checkpoint for its 4 adapters
    # ... and one generate call for all 4 adapters (many LoRARequests in one batch)
    tuned = [c for c in calls if any(a is not None for a in c)]
    assert len(tuned) == 1 and len(set(tuned[0])) == 4, calls
    hf, vllm = finetune_items(root / "hf"), finetune_items(root / "vllm")
    assert hf.height == vllm.height == 4 * 16
    assert hf["prediction"].to_list() == vllm["prediction"].to_list()
    gap = max(abs(a - b) for x, y in zip(hf["choice_logprobs"], vllm["choice_logprobs"]) for a, b in zip(x, y))
    assert gap < TOL, gap
