"""The cost block (issue 18): finetuning and evaluation FLOPs behind a prediction, against
pretraining FLOPs, in `fit`, `backtest` and the report."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from fitting.cost import task_cost
from fitting.schema import load_results

SHIPPED = Path(__file__).resolve().parents[2] / "datasets_cache" / "microladder"


def test_the_shipped_ladders_cost_is_the_sum_of_its_recorded_flops():
    folder = load_results(SHIPPED)
    raw = pl.read_parquet(SHIPPED / "results.parquet").filter(pl.col("task") == "ml_topic")
    cost = task_cost(folder, "ml_topic", emergence_flops=1e12)
    assert cost.finetune_flops == pytest.approx(raw["finetune_flops"].sum())
    assert cost.eval_flops == pytest.approx(raw["eval_flops"].sum())
    largest = pl.read_parquet(SHIPPED / "checkpoints.parquet")
    assert cost.largest_pretraining_flops == pytest.approx(folder.checkpoints["flops"].max())
    assert largest.height == folder.checkpoints.height
    j = cost.to_json()
    assert j["vs_largest_pretraining"] == pytest.approx(cost.total / cost.largest_pretraining_flops)
    assert j["vs_emergence"] == pytest.approx(cost.total / 1e12)
    assert cost.rows == raw.height and cost.rows_without == int((raw["finetune_flops"].is_null()
                                                                  & raw["eval_flops"].is_null()).sum())
    assert "x the largest checkpoint's pretraining" in cost.text()


def test_results_without_cost_columns_say_so_rather_than_zero(simulated):
    folder = simulated  # the session's default simulated folder (tests/fitting/conftest.py)
    task = folder.tasks[0]
    cost = task_cost(folder, task)
    assert not cost.known and cost.to_json()["total_flops"] is None
    assert cost.text().startswith("cost: not recorded")


def test_fit_json_carries_the_cost(capsys):
    import json

    from cli_runner import run_cli as run

    code, out, _ = run(["fit", str(SHIPPED), "--json", "--n-boot", "0", "--task", "ml_topic_short"], capsys)
    assert code == 0
    (record,) = json.loads(out)
    assert record["cost"]["total_flops"] > 0 and record["cost"]["vs_largest_pretraining"] > 0
