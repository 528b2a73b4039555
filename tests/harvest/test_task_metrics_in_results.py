"""The paper's metrics reach results.parquet (issue 19): CoLA gives Matthews correlation (its
primary metric, chance 0) and accuracy; GSM8K gives exact match under lm-eval's strict-match and
flexible-extract filters as two metrics. Each row is recomputed here from the item rows."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.harvest

from harvest.evaluate import evaluate_task, plan_task  # noqa: E402
from harvest.spec import TaskSpec  # noqa: E402
from harvest.store import results_from_items  # noqa: E402
from harvest.tasks.metrics import matthews_corrcoef  # noqa: E402
from harvest.testing import build_tiny_llama  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    import torch

    from harvest.engines.base import ModelRef
    from harvest.engines.hf import HFEngine

    torch.set_num_threads(1)
    model = build_tiny_llama(tmp_path_factory.mktemp("m") / "model", init_std=0.1)
    return HFEngine(ModelRef(str(model)), batch_size=8)


def _rows(engine, name: str, shots: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    plan = plan_task(TaskSpec(task=name, name=name, shots=shots, data=str(FIXTURES / name)))
    items = evaluate_task(engine, plan, "tiny")
    return items, results_from_items(items)


def test_cola_reports_mcc_first_and_accuracy(engine):
    items, results = _rows(engine, "cola", 2)
    assert results["metric"].to_list() == ["mcc", "accuracy"]
    mcc, acc = results.row(0, named=True), results.row(1, named=True)
    assert mcc["chance"] == 0.0 and acc["chance"] == 0.5
    assert mcc["value"] == pytest.approx(matthews_corrcoef(items["gold"].to_list(), items["prediction"].to_list()))
    assert acc["value"] == pytest.approx(items["correct"].mean())
    assert mcc["n_items"] == acc["n_items"] == items.height


def test_gsm8k_reports_both_answer_filters(engine):
    items, results = _rows(engine, "gsm8k", 1)
    assert results["metric"].to_list() == ["exact_match", "exact_match_flexible"]
    strict, flexible = results.row(0, named=True), results.row(1, named=True)
    assert strict["value"] == pytest.approx(items["correct"].mean())
    assert flexible["value"] == pytest.approx(items["correct_exact_match_flexible"].mean())
    assert {"prediction_exact_match_flexible", "correct_exact_match_flexible"} <= set(items.columns)


def test_a_plain_accuracy_task_is_unchanged(engine):
    items, results = _rows(engine, "commonsense_qa", 1)
    assert "metrics" not in items.columns and results["metric"].to_list() == ["accuracy"]
    assert results.row(0, named=True)["value"] == pytest.approx(items["correct"].mean())
