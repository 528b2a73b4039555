"""The example specs in ``examples/``: each parses, and its dry run (no model loaded, no network)
counts what the paper's setup needs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.cli_runner import run_cli

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.harvest, pytest.mark.filterwarnings("ignore::FutureWarning")]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SPECS = sorted(EXAMPLES.glob("*.toml"))
PAPER_TASKS = {"mmlu", "gsm8k", "commonsense_qa", "cola"}


@pytest.fixture(autouse=True)
def _offline_and_no_model(monkeypatch):
    """Nothing is fetched (hub offline) and any model load fails the test."""
    import transformers

    import harvest.engines.hf as hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def refuse(*a, **k):
        raise AssertionError("the dry run loaded a model")

    monkeypatch.setattr(hf, "load_model", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def test_there_is_a_lora_and_a_full_finetuning_example():
    from harvest.spec import load_spec
    from harvest.sweep import parse_sweep

    methods = {parse_sweep(load_spec(p)).recipe.method: p.name for p in SPECS}
    assert set(methods) == {"lora", "full"}, methods
    assert (EXAMPLES / "README.md").is_file()


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_example_spec_follows_the_paper(path):
    from harvest.spec import load_spec
    from harvest.sweep import parse_sweep
    from harvest.tasks import TaskData, get_task

    spec = load_spec(path)
    config = parse_sweep(spec)
    assert {t.task for t in spec.tasks} == PAPER_TASKS
    assert {t.name: t.shots for t in spec.tasks}["mmlu"] == 5
    assert {t.name: t.shots for t in spec.tasks}["commonsense_qa"] == 6
    # the paper's ablations: >= 4 data levels incl. small ones, >= 2 subsets, >= 6 checkpoints
    assert len(config.levels) >= 4 and min(config.levels) <= 32
    assert len(config.subset_seeds) >= 2
    assert len(spec.checkpoints) >= 6
    assert len({c.ref.revision for c in spec.checkpoints}) >= 2
    assert all(c.ref.revision and c.ref.path.startswith("EleutherAI/") for c in spec.checkpoints)
    assert len({c.family for c in spec.checkpoints}) == 1
    assert config.train_split is None  # each task trains on its own split (MMLU: auxiliary_train)
    for ts in spec.tasks:
        task = get_task(ts.task, TaskData(ts.data, ts.dataset, ts.config), **ts.options)
        for n in config.levels:
            task.check_subset(n)  # every level fits the task's train split (one-line SpecError if not)
    runs = len(config.levels) * len(config.subset_seeds) * len(spec.checkpoints)
    assert 50 <= runs <= 100  # "roughly 50-100 finetuning runs per task"


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_example_sweep_dry_run_counts(path, capsys):
    from harvest.spec import load_spec
    from harvest.sweep import parse_sweep

    spec = load_spec(path)
    config = parse_sweep(spec)
    n_ckpt, n_task = len(spec.checkpoints), len(spec.tasks)
    n_levels, n_seeds = len(config.levels), len(config.subset_seeds)

    code, out, err = run_cli(["harvest", "sweep", str(path), "--dry-run", "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    cells = n_ckpt * n_task * n_levels * n_seeds
    assert (d["checkpoints"], d["tasks"]) == (n_ckpt, n_task) == (8, 4)
    assert d["evaluation_units"] == {"few_shot": n_ckpt * n_task, "pretraining_loss": n_ckpt,
                                     "total": n_ckpt * n_task + n_ckpt}
    assert d["finetune"]["cells"] == cells == 320
    assert d["finetune"]["method"] == config.recipe.method
    for task in d["finetune"]["tasks"].values():
        assert task["levels"] == list(config.levels)
        assert task["cells_per_checkpoint"] == n_levels * n_seeds
    scoring_loads = n_ckpt if config.recipe.method == "lora" else cells  # one engine per checkpoint / per cell
    assert d["model_loads"] == n_ckpt + n_ckpt + scoring_loads
    assert d["model_loads_ray"] == d["model_loads"]  # ray: one task per checkpoint, as local
    assert all(p["from"] == "spec" and p["params"] > 1e9 for p in d["params"].values())
    # hub data and the streamed held-out text are not read by a dry run: stated, never guessed
    assert set(d["unknown"]) == PAPER_TASKS | {"held_out"}
    assert math.isfinite(d["total_flops"])


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_example_eval_dry_run_prints_counts(path, capsys):
    code, out, err = run_cli(["harvest", "eval", str(path), "--dry-run"], capsys)
    assert code == 0, err
    assert "checkpoints: 8   tasks: 4" in out
    assert "evaluation units: 40 (32 few-shot, 8 pretraining loss)" in out
    assert "model loads: 8" in out
