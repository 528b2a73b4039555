"""The second simulator (fitting.simulate_saturating): not the project's law, same tables."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from fitting import simulate_saturating as ss
from fitting.schema import FEW_SHOT, load_results

SMALL = ss.Design(family_params=(4e8, 4e9), tokens_per_param=(3.0, 12.0, 48.0), data_levels=(16, 256),
                  n_items=400)


def test_tables_have_the_design_shape_and_validate_through_load_results(tmp_path):
    folder = ss.simulate(SMALL, seed=0, out=tmp_path / "sat")
    loaded = load_results(tmp_path / "sat")
    n_ckpt = SMALL.n_checkpoints
    assert loaded.checkpoints.height == n_ckpt == 6
    cells = 1 + len(SMALL.data_levels) * len(SMALL.subset_seeds)  # few-shot + finetune subsets
    assert loaded.results.height == len(SMALL.tasks) * cells * n_ckpt
    assert sorted(loaded.tasks) == sorted(t.name for t in SMALL.tasks)
    assert set(loaded.results["n_items"].to_list()) == {400}
    assert loaded.results.equals(folder.results)
    assert loaded.metadata["simulated"] is True and loaded.metadata["d0"] == 5.0
    assert loaded.metadata["generator"] == "fitting.simulate_saturating"


def test_same_seed_same_folder_and_another_seed_differs():
    a, b, c = ss.simulate(SMALL, seed=4), ss.simulate(SMALL, seed=4), ss.simulate(SMALL, seed=5)
    assert a.results.equals(b.results) and a.checkpoints.equals(b.checkpoints)
    assert not a.results["value"].equals(c.results["value"])
    assert not np.allclose(a.checkpoints["pretrain_loss"], c.checkpoints["pretrain_loss"])  # noisy loss


def test_accuracy_respects_the_ceiling_and_rises_with_finetuning():
    task = ss.SaturatingTask("t", chance=0.25, ceiling=0.7, width=0.1, E0=2.3, shift_max=0.4, tau=2.0)
    design = ss.Design(tasks=(task,), n_items=1000, checkpoint_sd=0.0)
    mean = task.accuracy(np.linspace(1.0, 4.0, 50), 1024, design.d0)
    assert mean.max() < 0.7 and mean.min() > 0.25
    res = ss.simulate(design, seed=0).results
    # the expected curve never exceeds 0.7; counts add item noise only (sd < 0.03 at n = 1000)
    assert res["value"].max() < 0.7 + 0.1
    few = res.filter(pl.col("setting") == FEW_SHOT)["value"].mean()
    big = res.filter(pl.col("n_train") == 1024)["value"].mean()
    assert big > few  # finetuning moves the elbow to weaker checkpoints
    assert task.elbow(5, 5.0) == pytest.approx(2.3) and task.elbow(1024, 5.0) < 2.3 + 0.4
    with pytest.raises(ValueError, match="ceiling"):
        ss.SaturatingTask("bad", chance=0.5, ceiling=1.0, width=0.1, E0=2.3, shift_max=0.4, tau=2.0)


def test_truth_is_recorded_and_is_where_few_shot_accuracy_leaves_chance():
    folder = ss.simulate(seed=1)
    truth = folder.metadata["truth"]
    assert set(truth) == {t.name for t in ss.DEFAULT_TASKS}
    for task in ss.DEFAULT_TASKS:
        t = truth[task.name]
        assert t["emergence_loss"] == pytest.approx(task.E0 + task.width * np.log(19))
        rise = task.accuracy(t["emergence_loss"], 0, 5.0) - task.chance  # few-shot at D0
        assert rise == pytest.approx(ss.EMERGENCE_FRACTION * (task.ceiling - task.chance))
        assert t["ceiling"] < 1 and t["midpoint_loss"] == task.E0
        # the default ladder has checkpoints on both sides of the emergence point
        losses = folder.checkpoints["pretrain_loss"].to_numpy()
        assert (losses < t["emergence_loss"]).sum() >= 3 and (losses > t["emergence_loss"]).sum() >= 6


def test_random_tasks_are_varied_and_valid():
    tasks = ss.random_tasks(np.random.default_rng(0), 5)
    assert len({t.name for t in tasks}) == 5
    assert all(0.6 <= t.ceiling <= 0.9 and t.ceiling > t.chance for t in tasks)
    assert all(2.19 < t.emergence_loss < 3.35 for t in tasks)


def _few_shot_dispersion(design, seeds=range(6)):
    """Pearson X^2 per few-shot row around the true expected accuracy (no jitter on few-shot)."""
    from fitting.simulate import simulate_checkpoints

    ckpts = simulate_checkpoints(design)
    true_loss = dict(zip(ckpts["checkpoint"].to_list(), ckpts["pretrain_loss"].to_list()))
    x2 = []
    for seed in seeds:
        res = ss.simulate(design, seed=seed).results.filter(pl.col("setting") == FEW_SHOT)
        for task in design.tasks:
            rows = res.filter(pl.col("task") == task.name)
            p = task.accuracy(np.array([true_loss[c] for c in rows["checkpoint"]]), design.d0, design.d0)
            n = rows["n_items"].to_numpy()
            x2.append((rows["value"].to_numpy() * n - n * p) ** 2 / (n * p * (1 - p)))
    return float(np.mean(np.concatenate(x2)))


def test_counts_are_over_dispersed_between_items_and_checkpoints():
    """The default design's counts vary more than binomially around the true curve (the items'
    beta-binomial and the checkpoint shift); with both switched off they do not."""
    quiet = ss.Design(item_concentration=1e12, checkpoint_sd=0.0)
    assert 0.75 < _few_shot_dispersion(quiet) < 1.35
    assert _few_shot_dispersion(ss.Design()) > 1.8
    assert _few_shot_dispersion(ss.Design(item_concentration=1e12)) > 1.2  # the checkpoint shift alone
