"""``emergence backtest --method bayes``: every cutoff refitted by the hierarchical model (one
task alone per fit, PyMC's NUTS), scored against the ground truth like the MLE backtest."""

from __future__ import annotations

import json
import warnings

import pytest

pytest.importorskip("pymc")

from cli_runner import run_cli as run  # noqa: E402
from fitting.simulate import Design, TaskTruth, simulate  # noqa: E402

pytestmark = [pytest.mark.bayes, pytest.mark.slow]
warnings.filterwarnings("ignore", category=FutureWarning)

# One task that emerges inside the ladder: its few-shot elbow (2.65 nats) has three of the
# eight checkpoints (losses 2.41-3.81) past it, so the ground truth exists.
TASK = TaskTruth("t_emerges", chance=0.25, A=1.0, k=0.06, alpha=1.0, C=2.65)
DESIGN = Design(family_params=(2e8, 2e9), tokens_per_param=(2.5, 5.0, 10.0, 20.0),
                data_levels=(16, 128, 1024), subset_seeds=(1,), n_items=300, tasks=(TASK,))


def test_backtest_method_bayes_scores_each_cutoff(tmp_path, capsys):
    folder = tmp_path / "sim"
    simulate(DESIGN, seed=2, out=folder)
    code, out, err = run(["backtest", str(folder), "--method", "bayes", "--min-checkpoints", "7",
                          "--chains", "2", "--draws", "1000", "--tune", "500", "--json"], capsys)
    assert code == 0, err
    (task,) = json.loads(out)
    assert task["task"] == "t_emerges" and task["method"] == "bayes"
    truth = task["ground_truth_loss"]
    assert truth is not None and abs(truth - TASK.emergence_loss) < 0.1
    cuts = task["cutoffs"]
    assert [c["n_checkpoints"] for c in cuts] == [8, 7]
    full = cuts[0]  # every checkpoint: the gate passes and the posterior median is accurate
    assert full["converged"], full["note"]
    assert full["emergence_loss_p05"] <= full["emergence_loss"] <= full["emergence_loss_p95"]
    assert full["error"] == pytest.approx(full["emergence_loss"] - truth)
    assert full["success"] is (abs(full["error"]) <= 0.1) and full["success"]
    assert full["pinned"] is None  # the posterior's law rises on these checkpoints
    for c in cuts:  # a cutoff either has a gated prediction or says which check failed
        assert c["converged"] or "diagnostics failed" in c["note"], c
