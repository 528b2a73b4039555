"""The shipped micro-ladder (datasets_cache/microladder) still says what docs/microladder.md and
the README say of it: recomputed here from its tables, not read from its JSON alone.

If a regenerated ladder changes these, the docs' numbers are stale: update both together.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fitting.fit import EmergenceLawFit, TaskData, fit_ground_truth
from fitting.law import LAW_FORMS
from fitting.schema import load_results
from harvest.microladder.summary import curve_elbows

SHIPPED = Path(__file__).resolve().parents[1] / "datasets_cache" / "microladder"


@pytest.fixture(scope="module")
def folder():
    return load_results(SHIPPED)


@pytest.fixture(scope="module")
def elbows(folder):
    return curve_elbows(folder).filter(pl.col("task") == "ml_topic")


def test_topic_naming_emerges_at_one_loss_in_every_size(elbows):
    few_shot = elbows.filter((pl.col("n_train") == 0) & (pl.col("family") != "(all)"))
    assert few_shot.height == 4 and few_shot["elbow_loss"].null_count() == 0
    assert few_shot["elbow_loss"].max() - few_shot["elbow_loss"].min() < 0.15  # docs: 4.11-4.20


def test_pooled_elbow_rises_with_finetuning_data(elbows):
    pooled = elbows.filter(pl.col("family") == "(all)").sort("n_train")
    assert pooled["n_train"].to_list() == [0, 8, 32, 128, 512]
    assert np.all(np.diff(pooled["E"].to_numpy()) > 0)  # docs: 4.41 -> 4.44 -> 4.64 -> 4.79 -> (5.15)


@pytest.mark.parametrize("task", ["ml_topic", "ml_topic_short"])
def test_the_papers_law_on_all_checkpoints_lands_near_the_ground_truth(folder, task):
    shipped = {row["task"]: row for row in json.loads((SHIPPED / "fit.json").read_text())}[task]
    fit = EmergenceLawFit(LAW_FORMS["log_power"]).fit(TaskData.from_folder(folder, task))
    assert fit.emergence_loss_ == pytest.approx(shipped["emergence_loss"], abs=0.01)  # the JSON is this fit
    assert abs(fit.emergence_loss_ - shipped["ground_truth_loss"]) < 0.15  # docs: +0.11 and -0.03


def test_the_shipped_run_used_the_default_ladder():
    """`emergence harvest microladder` with no --config regenerates this dataset."""
    from harvest.microladder.run import LadderConfig, load_config

    assert load_config(SHIPPED / "manifest.json") == LadderConfig()


def test_a_pre_emergence_success_is_pinned_on_its_lowest_checkpoint(folder):
    """docs/microladder.md, backtest table: one of ml_topic_short's successes (7 checkpoints, the
    smallest model up to step 98) predicts the loss of its own lowest checkpoint."""
    from fitting.backtest import cutoff_values
    from fitting.predict import FitConfig, predict_data

    data = TaskData.from_folder(folder, "ml_topic_short")
    cut = next(data.select_max_flops(f) for f in cutoff_values(data, 3) if data.select_max_flops(f).n_checkpoints == 7)
    pred = predict_data(cut, FitConfig(n_boot=0, profile=False), ground_truth=fit_ground_truth(data))
    assert pred.pinned == "lowest checkpoint" and abs(pred.emergence_loss - cut.ckpt_loss.min()) <= 0.05
    assert abs(pred.emergence_loss - pred.ground_truth_loss) <= 0.1  # a success the placement of s0 step 98 gives
