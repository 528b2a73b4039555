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

from fitting.fit import EmergenceLawFit, TaskData
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
