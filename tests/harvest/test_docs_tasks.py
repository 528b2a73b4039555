"""The task table of ``docs/harvest.md`` says what the task classes declare: splits, row counts,
default shots, metrics with their chance levels, and lm-eval's counterpart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "harvest.md"
COLUMNS = ["name", "hub dataset (config)", "finetune split (rows)", "eval split (rows)", "few-shot split",
           "default shots", "metrics, primary first (chance)", "lm-eval counterpart (metric)", "scored by"]


def _table() -> dict[str, dict[str, str]]:
    section = DOC.read_text(encoding="utf-8").split("\n## Tasks\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == COLUMNS
    rows = {}
    for line in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        rows[cells["name"].strip("`")] = cells
    return rows


def _split(cell: str) -> tuple[str, int | None]:
    """'`auxiliary_train` (99,842)' -> ('auxiliary_train', 99842); unknown count -> None."""
    name = re.match(r"`([^`]+)`", cell).group(1)
    count = re.search(r"(\d[\d,]*)\)", cell)
    return name, (int(count.group(1).replace(",", "")) if count else None)


ROWS = _table()


def test_the_table_lists_the_paper_tasks():
    assert {"mmlu", "gsm8k", "commonsense_qa", "cola"} <= set(ROWS)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_a_row_matches_its_task_class(name):
    from harvest.tasks import get_task

    task, row = get_task(name), ROWS[name]
    for column, split in (("finetune split (rows)", task.train_split), ("eval split (rows)", task.eval_split)):
        shown, rows = _split(row[column])
        assert shown == split, (name, column)
        assert rows == (task.split_sizes.get(split) if task.split_sizes else task.split_size(split)), (name, column)
    assert _split(row["few-shot split"])[0] == task.fewshot_split
    assert int(row["default shots"]) == task.default_shots
    metrics = re.findall(r"`(\w+)` \(([-\d.]+)", row["metrics, primary first (chance)"])
    assert [(m, float(c)) for m, c in metrics] == [(m.name, m.chance) for m in task.metrics()]
    counterpart = row["lm-eval counterpart (metric)"]
    if task.lm_eval_task is None:
        assert counterpart == "none"
    else:
        assert counterpart.startswith(f"`{task.lm_eval_task}` (")
        primary, *others = task.metrics()
        for metric in [primary, *(m for m in others if m.lm_eval != "acc")]:  # lm-eval's cola has no acc
            assert f"`{metric.lm_eval}`" in counterpart, (name, metric)
    hub = row["hub dataset (config)"]
    assert (hub.startswith(f"`{task.hub_dataset}`") if task.hub_dataset else hub.startswith("none"))
    if task.hub_config:
        assert f"(`{task.hub_config}`)" in hub
