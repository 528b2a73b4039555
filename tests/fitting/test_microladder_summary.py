"""The micro-ladder summary's law-free views, checked on simulated data with known elbows.

No torch needed: the summary reads the data contract only.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from fitting import law as law_
from fitting.simulate import Design, TaskTruth, simulate
from harvest.microladder.summary import accuracy_table, curve_elbows, curves, family_fits, first_above

TRUTH = TaskTruth("sim_task", chance=0.25, A=1.0, k=0.06, alpha=1.0, C=2.50)  # few-shot elbow 2.50
# Three families whose losses (2.99-2.39, 2.81-2.29, 2.60-2.17) all straddle the few-shot elbow.
DESIGN = Design(family_params=(1.2e9, 2e9, 4e9), tokens_per_param=(2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0),
                tasks=(TRUTH,), n_items=400)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return [simulate(DESIGN, seed=s, out=tmp_path_factory.mktemp(f"sim{s}")) for s in range(4)]


@pytest.mark.slow
def test_curve_elbows_recover_each_levels_true_elbow(folders):
    """Each curve's elbow, fitted alone, lands on the law's E(D) (few-shot: C), over 4 datasets;
    and E rises with D, as the law says."""
    errors = []
    for folder in folders:
        pooled = curve_elbows(folder).filter(pl.col("family") == "(all)").sort("n_train")
        for row in pooled.iter_rows(named=True):
            d = max(row["n_train"], 1)  # few-shot is the law at D0 = 1
            truth = float(law_.elbow(d, TRUTH.k, TRUTH.alpha, TRUTH.C))
            errors.append(row["E"] - truth)
        assert np.all(np.diff(pooled["E"].to_numpy()) > 0)
    assert np.abs(errors).max() < 0.08 and abs(np.mean(errors)) < 0.03


@pytest.mark.slow
def test_family_fits_agree_when_loss_is_the_axis(folders):
    """Simulated emergence happens at one loss in every family: the law fitted on each family
    alone, and pooled, predicts the few-shot elbow within the paper's 0.1 nats, and every
    per-family ground truth that the data locate lies near it."""
    for folder in folders:
        # a hinge law's own elbow is measured by the whole-curve hinge (docs/law.md: the onset rule
        # lags it by up to a checkpoint and 3 standard errors of the rise)
        fits = family_fits(folder, forms=("log_power",), rule="hinge")
        assert fits["family"].to_list() == ["(all)", "sim-1200M", "sim-2000M", "sim-4000M"]
        assert (fits["log_power"] - TRUTH.C).abs().max() < 0.1
        pooled = fits.row(0, named=True)
        assert abs(pooled["ground_truth"] - TRUTH.C) < 0.05
        assert (fits["ground_truth"].drop_nulls() - TRUTH.C).abs().max() < 0.1


def test_accuracy_table_has_one_row_per_checkpoint_and_curves_in_order(folders):
    table = accuracy_table(folders[0], TRUTH.name)
    assert table.height == DESIGN.n_checkpoints
    assert table.columns == ["checkpoint", "pretrain_loss", "few-shot", "D=16", "D=64", "D=256", "D=1024"]
    assert table["pretrain_loss"].is_sorted(descending=True)


def test_family_fits_of_a_task_without_finetune_rows_give_the_ground_truth_only(folders):
    """A few-shot-only folder (a ladder before its sweep) is summarised, not refused."""
    folder = folders[0]
    few_shot_only = replace(folder, results=folder.results.filter(pl.col("setting") == "few_shot"))
    fits = family_fits(few_shot_only, forms=("log_power",), rule="hinge")
    assert fits["log_power"].is_null().all()
    assert abs(fits.row(0, named=True)["ground_truth"] - TRUTH.C) < 0.05


def test_first_above_per_family_splits_the_pooled_curve(folders):
    """One row per family; the pooled curve's highest loss above chance + margin is the highest
    of the families' (the same rule on a union of checkpoints)."""
    curve = curves(folders[0]).filter(pl.col("setting") == "few_shot")
    pooled = first_above(curve, 0.1)
    split = first_above(curve, 0.1, per_family=True)
    assert split["family"].to_list() == ["sim-1200M", "sim-2000M", "sim-4000M"]
    assert pooled["highest_loss_above"].item() == split["highest_loss_above"].max()
