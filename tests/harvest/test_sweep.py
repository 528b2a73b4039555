"""The finetuning sweep end to end on CPU: a tiny Llama at three checkpoints, three data levels,
two subset seeds, one synthetic task (18 cells). Local, Ray and two merged shards must give the
same tables; a SIGKILLed sweep must resume without duplicates.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from emergence.errors import SpecError

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.harvest, pytest.mark.filterwarnings("ignore::FutureWarning")]

STEPS = (0, 4, 12)  # pretraining steps of the three checkpoints
LEVELS, SEEDS = (4, 12, 32), (0, 1)
N_CELLS = len(STEPS) * len(LEVELS) * len(SEEDS)

SWEEP_TABLE = """
[sweep]
n_train = [4, 12, 32]
subset_seeds = [0, 1]
{extra}
[sweep.recipe]
lr = 1e-2
batch_size = 8
epochs = 1
min_steps = 4
max_steps = 8
"""


def build_sweep_spec(folder: Path, extra: str = "", name: str = "spec.toml") -> Path:
    """Three tiny checkpoints (0, 4, 12 training steps), held-out text, and the sweep spec."""
    from harvest.testing import build_tiny_llama, corpus

    for i, steps in enumerate(STEPS):
        if not (folder / f"ckpt{i}" / "model.safetensors").is_file():
            build_tiny_llama(folder / f"ckpt{i}", seed=0, train_steps=steps)
    (folder / "heldout.txt").write_text("".join(corpus(40, seed=1)))
    checkpoints = "".join(
        f'[[checkpoints]]\nname = "step{s}"\npath = "ckpt{i}"\nfamily = "tiny"\nparams = 150000\n'
        f"tokens = {1000 * (s + 1)}\n\n" for i, s in enumerate(STEPS))
    spec = (
        '[engine]\nname = "hf"\nbatch_size = 16\n\n[held_out]\npath = "heldout.txt"\nwindow = 64\n\n'
        + checkpoints
        + '[[tasks]]\ntask = "synthetic_arithmetic"\nshots = 2\noptions = { n_train = 48, n_test = 16 }\n'
        + SWEEP_TABLE.format(extra=extra)
    )
    (folder / name).write_text(spec)
    return folder / name


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    return build_sweep_spec(tmp_path_factory.mktemp("sweep"))


@pytest.fixture(scope="module")
def local_out(spec_path) -> Path:
    from harvest.driver import run_sweep

    out = spec_path.parent / "local"
    report = run_sweep(spec_path, out, show_progress=False)
    assert (report.computed, report.skipped, report.failed, report.missing) == (N_CELLS, 0, [], [])
    return out


def tables(folder: Path) -> dict[str, pl.DataFrame]:
    from fitting.schema import load_results

    r = load_results(folder, items=True)
    return {"checkpoints": r.checkpoints.sort("checkpoint"),
            "results": r.results.sort(["checkpoint", "setting", "n_train", "subset_seed"]),
            "items": r.items.sort(["checkpoint", "setting", "n_train", "subset_seed", "item_id"])}


def assert_same_tables(a: Path, b: Path) -> None:
    ta, tb = tables(a), tables(b)
    for name in ta:
        cols = [c for c in ta[name].columns if c not in ("path",)]  # checkpoint paths are absolute
        assert_frame_equal(ta[name].select(cols), tb[name].select(cols), check_exact=False, rel_tol=1e-5,
                           abs_tol=1e-6)


def finetune_parts(out: Path) -> list[Path]:
    folder = out / "parts" / "finetune"
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


# --------------------------------------------------------------------------- local


def test_local_sweep_writes_one_finetune_row_per_cell_with_costs(local_out):
    t = tables(local_out)
    fine = t["results"].filter(pl.col("setting") == "finetune")
    assert fine.height == N_CELLS and t["results"].filter(pl.col("setting") == "few_shot").height == len(STEPS)
    assert sorted(set(fine["n_train"])) == list(LEVELS) and sorted(set(fine["subset_seed"])) == list(SEEDS)
    assert (fine["n_items"] == 16).all() and fine["value"].is_between(0, 1).all()
    assert (fine["finetune_flops"] > 0).all() and (fine["eval_flops"] > 0).all()
    # Same tokens per step (4 steps, batch = min(8, n)): a level with a larger batch costs more.
    per_level = fine.group_by("n_train").agg(pl.col("finetune_tokens").mean()).sort("n_train")["finetune_tokens"]
    assert per_level[0] < per_level[1]
    assert t["items"].filter(pl.col("setting") == "finetune").height == N_CELLS * 16
    assert len(finetune_parts(local_out)) == N_CELLS
    assert not any((local_out / "adapters").glob("*/adapter_model.safetensors"))  # deleted by default


def test_finetuning_changes_the_scores(local_out):
    # Two subsets of the same level train on different examples: their per-item log-probabilities
    # must differ (a sweep that evaluated the base model for every cell would fail this).
    items = tables(local_out)["items"].filter((pl.col("setting") == "finetune") & (pl.col("n_train") == 32))
    by_seed = [items.filter((pl.col("checkpoint") == "step12") & (pl.col("subset_seed") == s))["choice_logprobs"]
               for s in SEEDS]
    assert by_seed[0].to_list() != by_seed[1].to_list()


def test_rerun_resumes_everything_and_changes_nothing(spec_path, local_out):
    from harvest.driver import run_sweep

    before = tables(local_out)
    report = run_sweep(spec_path, local_out, show_progress=False)
    assert (report.computed, report.skipped) == (0, N_CELLS)
    for name, frame in tables(local_out).items():
        assert_frame_equal(frame, before[name])


def test_full_finetuning_cell_saves_weights_and_counts_every_parameter(spec_path, local_out, tmp_path):
    from harvest.executors import copy_parts
    from harvest.driver import run_sweep

    full = build_sweep_spec(spec_path.parent, 'checkpoints = ["step12"]\nkeep_adapters = true\n', "full.toml")
    text = full.read_text().replace("n_train = [4, 12, 32]", "n_train = [12]").replace("[0, 1]", "[0]")
    full.write_text(text.replace("lr = 1e-2", 'method = "full"\nlr = 1e-3'))
    copy_parts(local_out, tmp_path, ("loss", "eval"))  # base units already measured
    report = run_sweep(full, tmp_path, show_progress=False)
    assert report.computed == 1 and report.tables is not None
    row = report.tables.results.filter(pl.col("setting") == "finetune").row(0, named=True)
    (weights,) = (tmp_path / "adapters").iterdir()
    assert (weights / "model.safetensors").is_file() and not list(weights.glob("*.bin"))
    from harvest.testing import n_params

    assert row["finetune_method"] == "full" and row["trainable_params"] == n_params(weights)
    assert row["finetune_flops"] == 6.0 * n_params(weights) * row["finetune_tokens"]
    lora = tables(local_out)["results"].filter((pl.col("checkpoint") == "step12") & (pl.col("n_train") == 12)
                                               & (pl.col("subset_seed") == 0))
    assert row["finetune_tokens"] == lora["finetune_tokens"][0]  # same examples, same batches


# --------------------------------------------------------------------------- shards


def test_two_shards_are_disjoint_and_merge_to_the_same_tables(spec_path, local_out):
    from harvest.driver import merge_sweep, run_sweep

    root = spec_path.parent
    reports = [run_sweep(spec_path, root / f"shard{i}", shard=(i, 2), keep_adapters=(i == 0), show_progress=False)
               for i in range(2)]
    assert sum(r.n_cells for r in reports) == N_CELLS and all(r.n_cells > 0 for r in reports)
    names = [{p.name for p in finetune_parts(root / f"shard{i}")} for i in range(2)]
    assert not names[0] & names[1] and len(names[0] | names[1]) == N_CELLS
    kept = list((root / "shard0" / "adapters").glob("*/adapter_model.safetensors"))
    assert len(kept) == reports[0].n_cells  # --keep-adapters
    merged = merge_sweep(spec_path, root / "merged", [root / "shard0", root / "shard1"])
    assert merged.missing == [] and merged.tables is not None
    assert_same_tables(local_out, root / "merged")


def test_merge_of_one_shard_says_what_is_missing(spec_path, tmp_path):
    from harvest.executors import copy_parts
    from harvest.driver import merge_sweep

    shard0 = spec_path.parent / "shard0"
    if not shard0.is_dir():
        pytest.skip("needs the shard test's output")
    report = merge_sweep(spec_path, tmp_path / "partial", [shard0])
    assert report.missing  # the other shard's units
    assert copy_parts(shard0, tmp_path / "partial") == 0  # already there: nothing copied twice


# --------------------------------------------------------------------------- ray


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_ray_sweep_gives_the_same_tables(spec_path, local_out, ray_cluster):
    from harvest.driver import run_sweep

    out = spec_path.parent / "ray"
    report = run_sweep(spec_path, out, executor="ray", show_progress=False)
    assert (report.computed, report.failed, report.missing) == (N_CELLS, [], [])
    assert_same_tables(local_out, out)
    # a checkpoint's cells run as one task (the 2-CPU cluster has 2 slots and 3 checkpoints, so
    # none is cut): its base loaded once for training, one engine scoring every adapter
    assert report.loads and all(counts == {"train": 1, "score": 1} for counts in report.loads.values())


def test_ray_pieces_keep_a_checkpoint_together_unless_the_cluster_has_more_slots(spec_path):
    from harvest.executors import ray_pieces
    from harvest.spec import load_spec
    from harvest.sweep import plan_sweep

    plan = plan_sweep(load_spec(spec_path), spec_path.parent / "unused")
    for slots in (1, 2, 3):
        pieces = ray_pieces(plan, plan.cells, slots)
        assert sorted(c.key for p in pieces for c in p) == sorted(c.key for c in plan.cells)  # disjoint, covering
        assert all(len({c.checkpoint for c in p}) == 1 for p in pieces)
        assert len(pieces) == len({c.checkpoint for c in plan.cells})  # up to as many slots as checkpoints: whole
    many = ray_pieces(plan, plan.cells, 12)  # more slots than checkpoints: cut, so every slot gets work
    assert len(many) > len({c.checkpoint for c in plan.cells})
    assert all(len({c.checkpoint for c in p}) == 1 for p in many)


@pytest.mark.ray
def test_ray_retries_a_failing_cell_then_records_its_error(spec_path, local_out, ray_cluster, tmp_path):
    import json

    from harvest.executors import copy_parts
    from harvest.sweep import SweepError
    from harvest.driver import check_report, run_sweep

    # One cell whose adapter cannot be saved (its folder's parent is a file): fails on every
    # attempt. (A bad target_modules no longer gets this far: the spec refuses it.)
    bad = build_sweep_spec(spec_path.parent, 'retries = 1\ncheckpoints = ["step0"]\n', "bad.toml")
    text = bad.read_text().replace("n_train = [4, 12, 32]", "n_train = [4]").replace("[0, 1]", "[0]")
    bad.write_text(text)
    from harvest.evaluate import EVAL_KIND, LOSS_KIND

    copy_parts(local_out, tmp_path, (EVAL_KIND, LOSS_KIND))  # the base units are already measured
    (tmp_path / "adapters").write_text("not a folder")
    report = run_sweep(bad, tmp_path, executor="ray", show_progress=False)
    assert report.computed == 0 and len(report.failed) == 1
    assert report.failed[0]["attempts"] == 2 and "adapters" in report.failed[0]["error"]
    logged = json.loads((tmp_path / "sweep-ray.json").read_text())["runs"][-1]["failed"]
    assert logged[0]["key"] == report.failed[0]["key"]
    assert report.tables is not None  # the sweep went on to write what it has
    with pytest.raises(SweepError, match="1 cell"):
        check_report(report, tmp_path)


def test_lora_targets_the_architecture_lacks_are_refused_before_any_work(spec_path, monkeypatch):
    import harvest.engines.hf as hf
    from harvest.driver import run_sweep

    monkeypatch.setattr(hf, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    bad = spec_path.parent / "bad-targets.toml"
    bad.write_text(spec_path.read_text().replace("max_steps = 8", 'max_steps = 8\ntarget_modules = ["no_such_proj"]'))
    out = spec_path.parent / "bad-targets"
    with pytest.raises(SpecError) as info:
        run_sweep(bad, out, show_progress=False)
    text = str(info.value)
    assert "bad-targets.toml: sweep.recipe.target_modules: no_such_proj" in text and "q_proj" in text
    assert "\n" not in text and not (out / "parts").exists()


# --------------------------------------------------------------------------- kill and resume


def test_sigkill_in_the_middle_resumes_without_duplicates(spec_path, local_out):
    from harvest.driver import run_sweep

    out = spec_path.parent / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "emergence", "harvest", "sweep", str(spec_path), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 150
    while len(finetune_parts(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(finetune_parts(out))
    assert 2 <= done < N_CELLS, f"kill landed outside the sweep ({done} cells done)"
    report = run_sweep(spec_path, out, show_progress=False)
    assert report.skipped == done and report.computed == N_CELLS - done
    assert not list(out.glob(".base-*")) and not list(out.rglob(".*.tmp"))  # leftovers cleared
    assert len(finetune_parts(out)) == N_CELLS
    assert_same_tables(local_out, out)  # duplicates would fail the contract's unique key


# --------------------------------------------------------------------------- bad input


def test_bad_sweep_tables_give_one_line_errors(spec_path, tmp_path):
    from harvest.spec import load_spec
    from harvest.sweep import parse_sweep, plan_sweep

    def spec_with(extra: str = "", replace: tuple[str, str] = ("", "")):
        path = spec_path.parent / "edited.toml"  # beside the checkpoints its paths name
        path.write_text(spec_path.read_text().replace(*replace) + extra)
        return load_spec(path)

    with pytest.raises(SpecError, match=r"sweep\.levels: unknown key"):
        parse_sweep(spec_with(replace=("subset_seeds", "levels = 3\nsubset_seeds")))
    with pytest.raises(SpecError, match=r"sweep\.recipe: unknown key 'learning_rate'"):
        parse_sweep(spec_with(replace=("lr = 1e-2", "learning_rate = 1e-2")))
    with pytest.raises(SpecError, match="larger than task 'synthetic_arithmetic'"):
        plan_sweep(spec_with(replace=("[4, 12, 32]", "[4, 100]")), tmp_path / "o")
    geometric = plan_sweep(spec_with(replace=("[4, 12, 32]", "{ min = 3, count = 3 }")), tmp_path / "o")
    assert sorted({c.n_train for c in geometric.cells}) == [3, 12, 48]  # up to the full train split


def test_cli_reports_a_missing_sweep_table_in_one_line(tmp_path):
    spec = tmp_path / "nosweep.toml"
    spec.write_text('[[checkpoints]]\nname = "a"\npath = "."\nfamily = "f"\nparams = 1\ntokens = 1\npretrain_loss = 3.0\n')
    proc = subprocess.run([sys.executable, "-m", "emergence", "harvest", "sweep", str(spec), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "no [sweep] table" in proc.stderr and "Traceback" not in proc.stderr
    bad_shard = subprocess.run([sys.executable, "-m", "emergence", "harvest", "sweep", str(spec), "--out",
                                str(tmp_path / "o"), "--shard", "2/2"], capture_output=True, text=True)
    assert bad_shard.returncode == 2 and "Traceback" not in bad_shard.stderr


def copy_with_a_broken_checkpoint(spec_path: Path, dest: Path) -> Path:
    """The spec's checkpoints, held-out text and spec copied into ``dest``, the middle
    checkpoint (``ckpt1``) missing a weight; returns the copied spec's path."""
    import shutil

    from safetensors.torch import load_file, save_file

    for i in range(len(STEPS)):
        shutil.copytree(spec_path.parent / f"ckpt{i}", dest / f"ckpt{i}")
    weights = load_file(dest / "ckpt1" / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, dest / "ckpt1" / "model.safetensors", metadata={"format": "pt"})
    shutil.copyfile(spec_path.parent / "heldout.txt", dest / "heldout.txt")
    shutil.copyfile(spec_path, dest / "spec.toml")
    return dest / "spec.toml"


def test_keep_going_records_a_checkpoint_that_will_not_load_and_sweeps_the_rest(spec_path, tmp_path, capsys):
    import json

    from tests.cli_runner import run_cli

    spec = copy_with_a_broken_checkpoint(spec_path, tmp_path)
    spec.write_text(spec.read_text().replace("n_train = [4, 12, 32]", "n_train = [4]")
                    .replace("subset_seeds = [0, 1]", "subset_seeds = [0]"))

    code, out, err = run_cli(["harvest", "sweep", spec, "--out", tmp_path / "stop", "-q"], capsys)
    assert code == 2 and "ckpt1" in err and "missing" in err and "Traceback" not in err
    assert not (tmp_path / "stop" / "parts" / "finetune").is_dir()  # stopped at the base units

    code, out, err = run_cli(["harvest", "sweep", spec, "--out", tmp_path / "go", "-q", "--keep-going"], capsys)
    assert code == 2 and "1 cell(s) failed" in err and "Traceback" not in err
    assert "2 computed" in out and "not in" in out  # the broken checkpoint's units are missing
    assert len(finetune_parts(tmp_path / "go")) == 2
    failed = json.loads((tmp_path / "go" / "sweep-local.json").read_text())["runs"][-1]["failed"]
    assert [f["kind"] for f in failed] == ["base"] and "step4" in failed[0]["what"]


def test_keep_going_records_a_failing_cell_and_scores_the_others(spec_path, local_out, tmp_path, monkeypatch):
    import harvest.executors as executors
    from harvest.executors import copy_parts
    from harvest.sweep import SweepError
    from harvest.driver import check_report, run_sweep

    real = executors.train_cell

    def flaky(plan, cell, *args, **kwargs):  # one cell fails, as an out-of-memory would
        if (cell.checkpoint, cell.n_train, cell.subset_seed) == ("step4", 12, 1):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(plan, cell, *args, **kwargs)

    monkeypatch.setattr(executors, "train_cell", flaky)
    copy_parts(local_out, tmp_path, ("loss", "eval"))  # base units already measured
    report = run_sweep(spec_path, tmp_path, show_progress=False, keep_going=True)
    assert report.computed == N_CELLS - 1 and report.missing and report.tables is not None
    assert [f["what"] for f in report.failed] == ["step4 · synthetic_arithmetic · n=12 · seed=1"]
    assert "out of memory" in report.failed[0]["error"]
    with pytest.raises(SweepError, match="1 cell"):
        check_report(report, tmp_path)
    monkeypatch.setattr(executors, "train_cell", real)  # the rerun computes only that cell
    again = run_sweep(spec_path, tmp_path, show_progress=False)
    assert (again.computed, again.skipped, again.failed, again.missing) == (1, N_CELLS - 1, [], [])
    assert_same_tables(local_out, tmp_path)


def test_base_units_plan_each_task_once(spec_path, monkeypatch):
    """Listing the base units builds every task's prompts once, not once per checkpoint (it
    did: compacting a 48-checkpoint micro-ladder shard took minutes of prompt building)."""
    import harvest.evaluate as evaluate
    from harvest.spec import load_spec
    from harvest.sweep import base_units

    calls, real = [], evaluate.plan_tasks
    monkeypatch.setattr(evaluate, "plan_tasks", lambda spec: calls.append(1) or real(spec))
    spec = load_spec(spec_path)
    units = base_units(spec, docs_hash="x")
    assert len(calls) == 1 and len(spec.checkpoints) == 3
    assert sum(kind == evaluate.EVAL_KIND for kind, _, _ in units) == len(spec.checkpoints) * len(spec.tasks)
