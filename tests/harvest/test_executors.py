"""The local executor's worker processes (``--workers``/``--gpus``) and balanced shares.

Two CPU worker processes stand in for two GPUs: they must give the tables of one process, load
each checkpoint once per worker, and resume after the driver is SIGKILLed. The balancing is a
pure function, tested on its own. The sweep: three tiny Llama checkpoints x two data levels x
two subset seeds (12 cells), built from configs by ``tests/harvest/test_sweep.py``'s helper.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from emergence.errors import SpecError
from harvest.balance import balance, lpt

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.harvest, pytest.mark.filterwarnings("ignore::FutureWarning")]

N_CELLS = 3 * 2 * 2


@dataclass(frozen=True)
class FakeCell:
    checkpoint: str
    key: str


# --------------------------------------------------------------------------- balancing (pure)


def makespan(bins: list[list[str]], costs: dict[str, float]) -> float:
    return max(sum(costs[n] for n in b) for b in bins)


def optimum(costs: dict[str, float], n: int) -> float:
    names = list(costs)
    return min(makespan([[x for x, b in zip(names, assign) if b == i] for i in range(n)], costs)
               for assign in itertools.product(range(n), repeat=len(names)))


def test_lpt_is_deterministic_covering_and_within_four_thirds_of_the_optimum():
    costs = {"a": 7, "b": 7, "c": 6, "d": 6, "e": 5, "f": 5, "g": 4, "h": 4, "i": 4}  # skewed, 9 jobs
    for n in (2, 3, 4):
        bins = lpt(costs, n)
        assert bins == lpt(dict(reversed(costs.items())), n)  # input order does not matter
        assert sorted(x for b in bins for x in b) == sorted(costs)
        assert makespan(bins, costs) <= 4 / 3 * optimum(costs, n)
    names = sorted(costs, key=lambda k: (-costs[k], k))
    round_robin = [names[i::3] for i in range(3)]  # what cost-blind dealing gives
    assert makespan(lpt(costs, 3), costs) < makespan(round_robin, costs)
    # Equal (or zero) costs still spread: ties go to the bin with the fewest items.
    assert [len(b) for b in lpt({k: 0.0 for k in "abcde"}, 2)] == [3, 2]


def test_balance_keeps_checkpoints_whole_and_splits_only_one_too_big_for_a_fair_share():
    cells = [FakeCell(ck, f"{ck}-{i}") for ck in ("big", "s1", "s2", "s3") for i in range(4)]
    cost = {c.key: (30.0 if c.checkpoint == "big" else 10.0) for c in cells}
    base = ["big", "s1", "s2", "s3"]
    shares = balance(cells, base, cost, {name: 1.0 for name in base}, 2)
    flipped = balance(cells[::-1], base[::-1], cost, {name: 1.0 for name in base}, 2)
    assert [{c.key for c in s.cells} for s in shares] == [{c.key for c in s.cells} for s in flipped]
    keys = [c.key for s in shares for c in s.cells]
    assert sorted(keys) == sorted(c.key for c in cells) and len(set(keys)) == len(keys)  # disjoint, covering
    assert sorted(b for s in shares for b in s.base) == base  # each base unit measured once
    # big costs 121 of 244: over the fair share (122)? no, so it stays whole, on its own worker.
    assert [s.checkpoints for s in shares] == [["big"], ["s1", "s2", "s3"]]
    assert [s.cost for s in shares] == [121.0, 123.0]
    # With four workers the fair share is 61: big is cut in two pieces (each loads it once).
    four = balance(cells, base, cost, {name: 1.0 for name in base}, 4)
    holders = [s for s in four if "big" in s.checkpoints]
    assert len(holders) == 2 and sum("big" in s.base for s in four) == 1
    assert sorted(s.cost for s in four) == [41.0, 60.0, 61.0, 82.0] and sum(len(s.cells) for s in four) == 16
    for share in four:  # cells in the plan's order inside each share
        assert list(share.cells) == sorted(share.cells, key=cells.index)


def test_balance_gives_base_units_of_checkpoints_without_cells_a_worker():
    shares = balance([], ["a", "b", "c"], {}, {"a": 3.0, "b": 2.0, "c": 1.0}, 2)
    assert [s.base for s in shares] == [("a",), ("b", "c")]


# --------------------------------------------------------------------------- sweeps


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    from tests.harvest.test_sweep import build_sweep_spec

    path = build_sweep_spec(tmp_path_factory.mktemp("executors"))
    path.write_text(path.read_text().replace("n_train = [4, 12, 32]", "n_train = [4, 12]"))
    return path


@pytest.fixture(scope="module")
def one_process(spec_path):
    """The sweep in this process, every model load counted where it happens."""
    import harvest.engines.hf as hf
    import harvest.engines.loading as loading
    from harvest.driver import run_sweep

    counted: list[str] = []
    real_hf, real_loading = hf.load_model, loading.load_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hf, "load_model", lambda ref, device: counted.append(("engine", ref.path)) or real_hf(ref, device))
        mp.setattr(loading, "load_model",
                   lambda ref, device: counted.append(("train", ref.path)) or real_loading(ref, device))
        report = run_sweep(spec_path, spec_path.parent / "one", show_progress=False)
    assert (report.computed, report.failed, report.missing) == (N_CELLS, [], [])
    return spec_path.parent / "one", report, counted


def test_dry_run_counts_the_cells_and_model_loads_the_sweep_makes(spec_path, one_process):
    from harvest.dryrun import dry_run
    from harvest.spec import load_spec

    _, report, counted = one_process
    planned = dry_run(load_spec(spec_path), sweep=True)
    assert planned["finetune"]["cells"] == report.computed == N_CELLS
    assert planned["model_loads"] == len(counted) == 9  # per checkpoint: base units, training, scoring
    # The run log's counts are the loads that happened (train: training base, score: engine).
    assert sum(n for c in report.loads.values() for n in c.values()) == 6
    assert all(c == {"train": 1, "score": 1} for c in report.loads.values())


def test_two_worker_processes_give_the_tables_of_one_and_load_each_checkpoint_once(spec_path, one_process):
    from harvest.driver import run_sweep
    from tests.harvest.test_sweep import assert_same_tables, finetune_parts

    out = spec_path.parent / "two"
    report = run_sweep(spec_path, out, show_progress=False, workers=2)
    assert (report.computed, report.skipped, report.failed, report.missing) == (N_CELLS, 0, [], [])
    assert len(report.workers) == 2 and sum(w["cells"] for w in report.workers) == N_CELLS
    seen = [ck for w in report.workers for ck in w["loads"]]
    assert sorted(seen) == ["step0", "step12", "step4"]  # each checkpoint in one worker ...
    for w in report.workers:  # ... loaded once there for training and once for scoring
        assert all(counts == {"train": 1, "score": 1} for counts in w["loads"].values())
        assert sorted(w["base"]) == sorted(w["checkpoints"])
    logged = json.loads((out / "sweep-local.json").read_text())["runs"][-1]["workers"]
    assert [w["cells"] for w in logged] == [w["cells"] for w in report.workers]
    assert len(finetune_parts(out)) == N_CELLS
    assert_same_tables(one_process[0], out)
    again = run_sweep(spec_path, out, show_progress=False, workers=2)  # all done: nothing spawned
    assert (again.computed, again.skipped, again.workers) == (0, N_CELLS, [])


def test_sigkilled_driver_takes_its_workers_along_and_the_sweep_resumes(spec_path, one_process):
    from harvest.driver import run_sweep
    from tests.harvest.test_sweep import assert_same_tables, finetune_parts

    out = spec_path.parent / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "emergence", "harvest", "sweep", str(spec_path), "--out", str(out), "--quiet",
           "--workers", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while len(finetune_parts(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    children = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(finetune_parts(out))
    assert 2 <= done < N_CELLS, f"kill landed outside the sweep ({done} cells done)"
    assert children, "no worker processes were seen"
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children), "a worker outlived the killed driver"
    report = run_sweep(spec_path, out, show_progress=False, workers=2)
    assert report.skipped >= done and report.computed == N_CELLS - report.skipped and report.missing == []
    assert len(finetune_parts(out)) == N_CELLS
    assert_same_tables(one_process[0], out)  # duplicates would fail the contract's unique key


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_worker_options_are_checked_before_any_work(spec_path, tmp_path):
    from harvest.driver import run_sweep

    with pytest.raises(SpecError, match="give one of them"):
        run_sweep(spec_path, tmp_path / "a", show_progress=False, workers=2, gpus=2)
    with pytest.raises(SpecError, match="local executor"):
        run_sweep(spec_path, tmp_path / "b", show_progress=False, executor="ray", workers=2)
    with pytest.raises(SpecError, match="engine.device"):  # this spec's engine resolves to the CPU
        run_sweep(spec_path, tmp_path / "c", show_progress=False, gpus=1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c" / "parts").exists()


def test_shards_are_the_balanced_shares_of_the_whole_sweep(spec_path):
    from harvest.executors import plan_shares
    from harvest.spec import load_spec
    from harvest.sweep import plan_sweep

    plan = plan_sweep(load_spec(spec_path), spec_path.parent / "unused")
    names = [c.name for c in plan.spec.checkpoints]
    shares = plan_shares(plan, plan.cells, names, 2)
    assert shares == plan_shares(plan, plan.cells, names, 2)  # the same in every shard's process
    assert sorted(len(s.cells) for s in shares) == [4, 8]  # whole checkpoints: 2 and 1 of 3
    for share in shares:
        assert {c.checkpoint for c in share.cells} == set(share.base)


# --------------------------------------------------------------------------- harvest eval


def test_eval_with_two_workers_gives_the_tables_of_one_process(spec_path, tmp_path):
    from harvest.driver import run_eval
    from harvest.evaluate import run_harvest
    from harvest.spec import load_spec
    from tests.harvest.test_sweep import assert_same_tables

    run_harvest(load_spec(spec_path), tmp_path / "one", show_progress=False)
    manifest = run_eval(spec_path, tmp_path / "two", workers=2, show_progress=False)
    assert manifest["tables"]["checkpoints"] == 3
    assert not list((tmp_path / "two").glob(".base-*"))  # scratch folders removed
    assert_same_tables(tmp_path / "one", tmp_path / "two")


def test_eval_workers_report_a_checkpoint_that_will_not_load_in_one_line(spec_path, tmp_path, capsys):
    from tests.cli_runner import run_cli
    from tests.harvest.test_sweep import copy_with_a_broken_checkpoint

    spec = copy_with_a_broken_checkpoint(spec_path, tmp_path)

    code, out, err = run_cli(["harvest", "eval", spec, "--out", tmp_path / "go", "-q", "--workers", "2",
                              "--keep-going"], capsys)
    assert code == 2 and "1 of 3 checkpoint(s) failed (first: step4:" in err and "Traceback" not in err
    assert len(list((tmp_path / "go" / "parts" / "eval").glob("*.parquet"))) == 2  # the others measured
    assert not (tmp_path / "go" / "results.parquet").exists()
    code, out, err = run_cli(["harvest", "eval", spec, "--out", tmp_path / "stop", "-q", "--workers", "2"], capsys)
    assert code == 2 and "ckpt1" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
