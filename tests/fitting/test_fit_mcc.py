"""A metric whose chance is 0 on [-1, 1] (CoLA's Matthews correlation) through the fitting side:
schema, fit, backtest and report with the Gaussian likelihood; accuracy-like metrics unchanged."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from emergence.errors import ContractError
from fitting.schema import load_results, write_results
from fitting.simulate import Design, TaskTruth, simulate
from tests.cli_runner import run_cli

TRUTH = TaskTruth("cola", chance=0.0, A=0.6, k=0.05, alpha=1.1, C=2.45)


def _mcc_folder(path, noise_sd=0.02, seed=3):
    """A simulated CoLA-like task scored as MCC: at chance it scatters around 0 (below 0 too)."""
    sim = simulate(Design(tasks=(TRUTH,), n_items=1000), seed=seed)
    noise = np.random.default_rng(seed).normal(0.0, noise_sd, sim.results.height)
    results = sim.results.with_columns(pl.lit("mcc").alias("metric"),
                                       (pl.col("value") + noise).clip(-1.0, 1.0).alias("value"))
    assert results["value"].min() < 0 and (results["chance"] == 0).all()
    write_results(path, sim.checkpoints, results)
    return path


@pytest.fixture(scope="module")
def mcc(tmp_path_factory):
    return _mcc_folder(tmp_path_factory.mktemp("mcc") / "results")


def test_backtest_of_an_mcc_task_with_the_gaussian_likelihood(mcc, capsys):
    code, out, err = run_cli(["backtest", mcc, "--metric", "mcc", "--likelihood", "gaussian", "--n-boot", "0",
                              "--no-profile", "--no-cache", "--json"], capsys)
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["task"] == "cola" and abs(row["ground_truth_loss"] - TRUTH.emergence_loss) < 0.1
    full = row["cutoffs"][0]  # every checkpoint: the elbow is seen
    assert full["converged"] and abs(full["emergence_loss"] - TRUTH.emergence_loss) < 0.1


def test_ablate_and_report_take_the_likelihood(mcc, tmp_path, capsys):
    code, out, err = run_cli(["ablate", mcc, "--metric", "mcc", "--likelihood", "gaussian", "--last-k", "6",
                              "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)[0]["ablations"]
    code, out, err = run_cli(["report", mcc, "--out", tmp_path / "report", "--metric", "mcc", "--likelihood",
                              "gaussian", "--n-boot", "0", "--no-ablations", "--no-profile", "--no-cache"], capsys)
    assert code == 0, err
    assert "gaussian likelihood" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.parametrize("command", ["fit", "backtest", "ablate"])
def test_mcc_without_the_gaussian_likelihood_is_one_line(mcc, capsys, command):
    code, out, err = run_cli([command, mcc, "--metric", "mcc"], capsys)
    assert code == 2 and "'mcc' is not a proportion" in err and "--likelihood gaussian" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_mcc_outside_minus_one_one_is_refused(tmp_path):
    folder = _mcc_folder(tmp_path / "bad")
    results = pl.read_parquet(folder / "results.parquet")
    results.with_columns(pl.when(pl.int_range(pl.len()) == 5).then(-1.5).otherwise(pl.col("value"))
                         .alias("value")).write_parquet(folder / "results.parquet")
    with pytest.raises(ContractError, match=r"column 'value', row 5: mcc must lie in \[-1, 1\] \(got -1.5\)"):
        load_results(folder)


def test_exact_match_flexible_is_a_proportion_fitted_binomially(tmp_path, capsys):
    """GSM8K's second filter (harvest writes it as its own metric) keeps the binomial default."""
    sim = simulate(Design(tasks=(TaskTruth("gsm8k", chance=0.0, A=0.8, k=0.05, alpha=1.2, C=2.35),),
                          data_levels=(16, 256), subset_seeds=(1,)), seed=0)
    both = pl.concat([sim.results.with_columns(pl.lit(m).alias("metric")) for m in ("exact_match", "exact_match_flexible")])
    write_results(tmp_path / "gsm", sim.checkpoints, both)
    code, out, err = run_cli(["fit", tmp_path / "gsm", "--metric", "exact_match_flexible", "--n-boot", "0",
                              "--json"], capsys)
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["likelihood"] == "binomial" and row["emergence_loss"] is not None
    flexible = pl.col("metric") == "exact_match_flexible"
    both.with_columns(pl.when(flexible).then(1.2).otherwise(pl.col("value")).alias("value")) \
        .write_parquet(tmp_path / "gsm" / "results.parquet")
    with pytest.raises(ContractError, match=r"must lie in \[0, 1\] \(got 1.2\)"):
        load_results(tmp_path / "gsm")


def test_a_harvested_gsm8k_fits_exact_match_by_default(tmp_path, capsys):
    """Harvest writes GSM8K's two filters as two metrics: a plain fit takes exact_match (strict)."""
    sim = simulate(Design(tasks=(TaskTruth("gsm8k", chance=0.0, A=0.8, k=0.05, alpha=1.2, C=2.35),),
                          data_levels=(16, 256), subset_seeds=(1,)), seed=0)
    flexible = sim.results.with_columns(pl.lit("exact_match_flexible").alias("metric"),
                                        (pl.col("value") * 0.9).alias("value"))
    write_results(tmp_path / "gsm", sim.checkpoints,
                  pl.concat([sim.results.with_columns(pl.lit("exact_match").alias("metric")), flexible]))
    from fitting.data import TaskData

    folder = load_results(tmp_path / "gsm")
    assert TaskData.from_folder(folder, "gsm8k").metric == "exact_match"
    assert TaskData.from_folder(folder, "gsm8k", "exact_match_flexible").metric == "exact_match_flexible"
    code, out, err = run_cli(["fit", tmp_path / "gsm", "--n-boot", "0", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)[0]["emergence_loss"] is not None
