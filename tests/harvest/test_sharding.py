"""Full finetuning sharded with FSDP2 over two CPU processes (gloo) equals one process."""

from __future__ import annotations

import json

import pytest

from emergence.errors import SpecError
from harvest.sharding import rank_parts

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.harvest, pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]

# Prompts and targets of different lengths: ranks hold different numbers of target tokens, so a
# wrong weighting of their losses would show.
EXAMPLES = [(f"{a} plus {b ** 3} is", f" {a + b ** 3}") for a in range(6) for b in range(1, 7)]


@pytest.mark.parametrize("n,size,micro", [(8, 2, 2), (5, 2, 2), (1, 2, 4), (7, 3, 1), (32, 4, 32)])
def test_rank_parts_cover_the_batch_once_with_the_same_count_on_every_rank(n, size, micro):
    idx = list(range(100, 100 + n))
    parts = [rank_parts(idx, micro, r, size) for r in range(size)]
    assert len({len(p) for p in parts}) == 1  # every backward is a collective: same count everywhere
    real = [i for p in parts for chunk, ok in p if ok for i in chunk]
    assert sorted(real) == idx  # each example once
    assert all(len(chunk) <= micro and chunk for p in parts for chunk, _ in p)


def test_sharding_is_refused_for_lora_and_unknown_values():
    from harvest.finetune import Recipe

    with pytest.raises(ValueError, match="sharding"):
        Recipe(method="lora", sharding="fsdp")
    with pytest.raises(SpecError, match="sharding"):
        Recipe.from_dict({"method": "full", "sharding": "zero"})
    assert "sharding" not in Recipe(method="full", sharding="fsdp").key_dict()  # execution, not content


def test_memory_estimate_divides_the_training_state_over_the_ranks():
    from harvest.memory import GB, Shape, training_memory

    seven = Shape(params=7_000_000_000, layers=32, hidden=4096, vocab=32000, source="test")
    size = dict(micro_batch=1, seq_len=512, mixed=True, checkpointing=True)
    one, eight = (training_memory(seven, "full", ranks=r, **size) for r in (1, 8))
    assert one["total"] > 80 * GB > eight["total"]  # 7B full finetuning: not on one 80 GB GPU, on 8 sharded
    assert eight["weights_and_optimizer"] < one["weights_and_optimizer"] / 7


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("arch,n,micro", [("llama", 12, 2), ("llama", 1, None), ("gpt2", 9, 3)])
def test_fsdp_over_two_cpu_processes_matches_one_process(tmp_path, arch, n, micro):
    """Two gloo ranks, each with half of every weight, make the single-process update: the saved
    weights agree within float32 summation order, and so do the recorded losses and counts.
    n=1 leaves rank 1 with only its zero-weight stand-in; gpt2 ties its embeddings."""
    from harvest.engines.base import ModelRef
    from harvest.engines.loading import load_model
    from harvest.finetune import Recipe, finetune, read_stats, save_finetuned
    from harvest.distributed import train_ranks
    from harvest.testing import build_tiny_model

    ckpt = build_tiny_model(tmp_path / "ckpt", arch, seed=1)
    config = json.loads((ckpt / "config.json").read_text())
    if arch == "gpt2":  # dropout draws differ between one process and two: compare without it
        config.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        (ckpt / "config.json").write_text(json.dumps(config))
    assert config.get("tie_word_embeddings", False) == (arch == "gpt2")
    ref = ModelRef(path=str(ckpt), dtype="float32")
    recipe = Recipe(method="full", steps=4, batch_size=6, micro_batch_size=micro, lr=1e-3, max_length=32,
                    warmup_fraction=0.0)
    examples = EXAMPLES[:n]
    torch.set_num_threads(1)
    model, tok = load_model(ref, "cpu")
    save_finetuned(finetune(model, tok, examples, recipe, seed=3), tok, tmp_path / "one")

    from dataclasses import replace

    train_ranks(ref, examples, replace(recipe, sharding="fsdp"), 3, None, "cpu", tmp_path / "two", [None, None])

    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert one.keys() == two.keys()
    start = _weights(ckpt)
    # Adam moves a weight at most about lr per step, whatever its gradient, so a near-zero
    # gradient summed in another order can move by a visible fraction of that: per weight, the
    # bound is a fraction of lr * steps; over the whole model, the two runs' moves agree closely.
    bound = recipe.lr * recipe.steps
    diffs = {k: (one[k] - two[k]).abs().max().item() for k in one}
    assert max(diffs.values()) <= 0.02 * bound, max(diffs.items(), key=lambda kv: kv[1])
    moved = torch.cat([(one[k] - start[k]).flatten() for k in one])
    apart = torch.cat([(one[k] - two[k]).flatten() for k in one])
    assert moved.norm() > 0.1 * bound  # it did train
    assert apart.norm() <= 1e-3 * moved.norm(), (apart.norm().item(), moved.norm().item())
    s1, s2 = read_stats(tmp_path / "one"), read_stats(tmp_path / "two")
    assert s2["ranks"] == 2 and s1["ranks"] == 1
    for key in ("tokens", "target_tokens", "steps", "params", "flops"):
        assert s1[key] == s2[key], key
    assert s2["final_loss"] == pytest.approx(s1["final_loss"], rel=1e-4)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["model_type"] == json.loads(
        (ckpt / "config.json").read_text())["model_type"]


def test_a_failing_rank_fails_the_run_with_one_line(tmp_path):
    from emergence.errors import EmergenceError
    from harvest.engines.base import ModelRef
    from harvest.finetune import Recipe
    from harvest.distributed import train_ranks

    recipe = Recipe(method="full", steps=1, sharding="fsdp")
    with pytest.raises(EmergenceError, match="folder not found"):
        train_ranks(ModelRef(path=str(tmp_path / "missing")), EXAMPLES[:2], recipe, 0, None, "cpu",
                    tmp_path / "out", [None, None])
    assert not (tmp_path / "out").exists()


def test_sweep_with_fsdp_over_two_workers_gives_the_tables_of_one_process(tmp_path):
    """``sharding = "fsdp"`` with ``--workers 2``: the base units in two workers, the full
    finetuning of each cell by both (two gloo ranks), scored in the driver: the tables of one
    process, the finetuned scores within what summation order moves them."""
    import polars as pl

    from harvest.driver import run_sweep
    from tests.harvest.test_sweep import build_sweep_spec, tables

    def spec(name: str, sharding: str):
        path = build_sweep_spec(tmp_path, 'checkpoints = ["step4", "step12"]\n', name)
        text = path.read_text().replace("n_train = [4, 12, 32]", "n_train = [12]").replace("[0, 1]", "[0]")
        path.write_text(text.replace("lr = 1e-2", f'method = "full"\nlr = 1e-3\nsharding = "{sharding}"'))
        return path

    from harvest.dryrun import dry_run
    from harvest.spec import load_spec

    torch.set_num_threads(1)
    one = run_sweep(spec("one.toml", "none"), tmp_path / "one", show_progress=False)
    two = run_sweep(spec("two.toml", "fsdp"), tmp_path / "two", show_progress=False, workers=2)
    assert (one.computed, two.computed, two.failed) == (2, 2, [])
    # loads: each cell's checkpoint once per rank for training, once for scoring; the dry run agrees
    assert two.loads == {"step4": {"train": 2, "score": 1}, "step12": {"train": 2, "score": 1}}
    planned = dry_run(load_spec(tmp_path / "two.toml"), sweep=True, devices=2)
    assert planned["model_loads"] == planned["checkpoints"] + sum(n for c in two.loads.values() for n in c.values())
    a, b = tables(tmp_path / "one"), tables(tmp_path / "two")
    keys = ["checkpoint", "setting", "n_train", "subset_seed", "item_id"]
    assert a["checkpoints"].drop("path").equals(b["checkpoints"].drop("path"))
    base = pl.col("setting") != "finetune"
    assert a["items"].filter(base).select(keys, "choice_logprobs").equals(b["items"].filter(base).select(keys, "choice_logprobs"))
    fa = a["items"].filter(~base).explode("choice_logprobs")["choice_logprobs"].to_numpy()
    fb = b["items"].filter(~base).explode("choice_logprobs")["choice_logprobs"].to_numpy()
    base_lp = a["items"].filter(base & (pl.col("checkpoint") == "step12")).explode("choice_logprobs")["choice_logprobs"]
    assert len(fa) == len(fb) > 0 and abs(fa - fb).max() < 0.01 * abs(fa.mean() - base_lp.mean()) + 1e-4
    ra, rb = (t["results"].filter(~base).sort("checkpoint") for t in (a, b))
    assert ra["finetune_tokens"].to_list() == rb["finetune_tokens"].to_list()
    assert ra["finetune_flops"].to_list() == rb["finetune_flops"].to_list()


def test_gpu_ranks_need_a_gpu_each(tmp_path):
    from harvest.distributed import train_ranks
    from harvest.engines.base import ModelRef
    from harvest.finetune import Recipe

    recipe = Recipe(method="full", steps=1, sharding="fsdp")
    with pytest.raises(SpecError, match="--gpus N"):
        train_ranks(ModelRef(path=str(tmp_path)), EXAMPLES[:2], recipe, 0, None, "cuda", tmp_path / "out", [None, None])
