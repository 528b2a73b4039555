"""A task's own ``train_split`` in the spec is what its finetuning cells draw from (it overrides
``[sweep] train_split``), in the sweep's plan and in its dry run."""

from __future__ import annotations

import json

import pytest

from tests.cli_runner import run_cli

pytest.importorskip("torch")
pytestmark = [pytest.mark.harvest, pytest.mark.filterwarnings("ignore::FutureWarning")]

SPEC = """
[[checkpoints]]
name = "c"
path = "c"
family = "f"
params = 1000
tokens = 1000
pretrain_loss = 3.0

[[tasks]]
task = "synthetic_arithmetic"
name = "own"
train_split = "test"                 # 10 rows
options = {{ n_train = 40, n_test = 10 }}

[[tasks]]
task = "synthetic_arithmetic"
name = "default"
options = {{ n_train = 40, n_test = 10 }}

[sweep]
n_train = {{ min = 4, count = 2 }}   # 4 and the whole pool
{sweep_split}
"""


@pytest.mark.parametrize("sweep_split,default_pool", [("", 40), ('train_split = "test"', 10)])
def test_a_task_trains_on_its_own_train_split(tmp_path, capsys, sweep_split, default_pool):
    from harvest.spec import load_spec
    from harvest.sweep import plan_sweep

    (tmp_path / "spec.toml").write_text(SPEC.format(sweep_split=sweep_split))
    plan = plan_sweep(load_spec(tmp_path / "spec.toml"), tmp_path / "out")
    assert {name: len(pool) for name, pool in plan.pools.items()} == {"own": 10, "default": default_pool}
    assert sorted({(c.task, c.n_train) for c in plan.cells}) == [
        ("default", 4), ("default", default_pool), ("own", 4), ("own", 10)]
    code, out, err = run_cli(["harvest", "sweep", tmp_path / "spec.toml", "--dry-run", "--json"], capsys)
    assert code == 0, err
    tasks = json.loads(out)["finetune"]["tasks"]
    assert tasks["own"]["levels"] == [4, 10] and tasks["default"]["levels"] == [4, default_pool]
