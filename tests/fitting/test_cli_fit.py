"""The `emergence fit`, `compare-laws` and `simulate` commands, end to end (in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from fitting.schema import CHECKPOINTS_FILE, RESULTS_FILE, load_results
from fitting.simulate import DEFAULT_TASKS


from cli_runner import run_cli as run  # noqa: E402


SIMULATE = ["--seed", "1", "--n-items", "800"]


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory) -> Path:
    """The folder ``emergence simulate DIR --seed 1 --n-items 800`` writes, made here (not by the
    first test: under pytest-xdist this module's tests may run in different processes)."""
    import contextlib
    import io
    import sys

    from emergence import cli

    out = tmp_path_factory.mktemp("sim") / "results"
    argv, sys.argv = sys.argv, ["emergence", "simulate", str(out), *SIMULATE]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            cli.main()
    finally:
        sys.argv = argv
    load_results(out)  # it was written
    return out


def test_simulate_writes_a_labelled_folder(tmp_path, capsys):
    sim_dir = tmp_path / "results"
    code, out, _ = run(["simulate", str(sim_dir), *SIMULATE], capsys)
    assert code == 0 and "SIMULATED" in out
    folder = load_results(sim_dir)
    assert folder.metadata["simulated"] is True
    assert set(folder.metadata["truth"]) == {t.name for t in DEFAULT_TASKS}
    assert folder.checkpoints.height == 12 and set(folder.results["n_items"].to_list()) == {800}
    levels = folder.results.filter(pl.col("setting") == "finetune")["n_train"].unique().sort().to_list()
    assert levels == [16, 64, 256, 1024]


def test_fit_json_is_parseable_and_complete(sim_dir, capsys):
    code, out, err = run(["fit", str(sim_dir), "--json", "--n-boot", "60", "--task", "sim_mmlu",
                          "--task", "sim_csqa"], capsys)
    assert code == 0
    records = json.loads(out)  # progress went to stderr, stdout is pure JSON
    assert [r["task"] for r in records] == ["sim_mmlu", "sim_csqa"]
    truth = load_results(sim_dir).metadata["truth"]
    for r in records:
        for key in ("emergence_loss", "emergence_loss_p05", "emergence_loss_p10", "emergence_loss_p25",
                    "emergence_loss_p50", "emergence_loss_p75", "emergence_loss_p90", "emergence_loss_p95",
                    "ground_truth_loss", "emergence_flops", "flops_multiple", "flops_extrapolated",
                    "converged", "n_checkpoints", "law", "method"):
            assert key in r, key
        assert r["converged"] and r["method"] == "mle" and r["law"] == "log_power" and r["simulated"]
        assert r["emergence_loss_p05"] <= r["emergence_loss_p50"] <= r["emergence_loss_p95"]
        assert abs(r["emergence_loss"] - truth[r["task"]]["emergence_loss"]) < 0.1
    assert "bootstrap" in err


def test_fit_table_says_simulated(sim_dir, capsys):
    code, out, _ = run(["fit", str(sim_dir), "--n-boot", "20", "--task", "sim_cola", "--law", "power"], capsys)
    assert code == 0 and "SIMULATED" in out and "sim_cola" in out


def test_fit_takes_d0_and_refuses_a_bad_one(sim_dir, capsys):
    code, out, _ = run(["fit", str(sim_dir), "--json", "--n-boot", "0", "--task", "sim_csqa", "--d0", "8"], capsys)
    assert code == 0
    (record,) = json.loads(out)
    assert record["law"] == "log_power+d0=8" and record["converged"]
    code, out, err = run(["fit", str(sim_dir), "--task", "sim_csqa", "--d0", "0.5"], capsys)
    assert code != 0 and "d0 must be a number >= 1" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


def test_fit_few_shot_only_folder(sim_dir, tmp_path, capsys):
    pl.read_parquet(sim_dir / CHECKPOINTS_FILE).write_parquet(tmp_path / CHECKPOINTS_FILE)
    pl.read_parquet(sim_dir / RESULTS_FILE).filter(pl.col("setting") == "few_shot").write_parquet(tmp_path / RESULTS_FILE)
    code, out, _ = run(["fit", str(tmp_path), "--json", "--task", "sim_mmlu"], capsys)
    assert code == 0
    (record,) = json.loads(out)
    assert record["emergence_loss"] is None and record["converged"] is False
    assert "few-shot results only" in record["note"]
    assert record["ground_truth_loss"] is not None


def test_compare_laws_command(sim_dir, capsys):
    code, out, _ = run(["compare-laws", str(sim_dir), "--task", "sim_csqa", "--form", "log_power",
                        "--form", "no_delta", "--json"], capsys)
    assert code == 0
    result = json.loads(out)["sim_csqa"]
    assert {r["form"] for r in result} == {"log_power", "no_delta"} and result[0]["delta"] == 0.0
    for row in result:  # the elbow columns: every finetuned curve and the few-shot one left out in turn
        assert set(row["elbow_errors"]) == {"0", "16", "64", "256", "1024"}
        assert row["elbow_rmse"] < 0.2 and row["few_shot_error"] == row["elbow_errors"]["0"]
    code, _, err = run(["compare-laws", str(sim_dir), "--form", "cubic"], capsys)
    assert code == 2 and "unknown law form" in err


def test_fit_one_family_and_the_per_family_elbows(capsys):
    """The shipped micro-ladder has four pretraining runs: `fit` shows each run's few-shot elbow
    beside the pooled one (and their spread); `--family` fits one run alone."""
    shipped = Path(__file__).resolve().parents[2] / "datasets_cache" / "microladder"
    code, out, _ = run(["fit", str(shipped), "--json", "--n-boot", "0", "--task", "ml_topic"], capsys)
    assert code == 0
    (pooled,) = json.loads(out)
    elbows = pooled["family_elbows"]
    assert sorted(elbows) == ["microladder-s0", "microladder-s1", "microladder-w2", "microladder-w3"]
    assert pooled["family_elbow_spread"] == pytest.approx(max(elbows.values()) - min(elbows.values()))
    gt = pooled["ground_truth"]
    assert gt["elbow_p05"] <= gt["elbow_loss"] <= gt["elbow_p95"] and gt["n_boot"] == 100
    code, out, _ = run(["fit", str(shipped), "--json", "--n-boot", "0", "--task", "ml_topic",
                        "--family", "microladder-w2"], capsys)
    assert code == 0
    (one,) = json.loads(out)
    assert one["n_checkpoints"] == 16 and one["family_elbows"] is None
    assert one["ground_truth_loss"] == pytest.approx(elbows["microladder-w2"])
    code, _, err = run(["fit", str(shipped), "--family", "w9"], capsys)
    assert code != 0 and "no family 'w9'" in err and "microladder-w2" in err and "Traceback" not in err
