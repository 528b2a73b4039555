"""The backtest cache (fitting.backtest_cache): ``report`` after ``backtest`` with the same
settings fits nothing and writes the same report; other settings, changed tables and
``--no-cache`` recompute; a corrupt entry is recomputed, never a crash; no pickle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fitting import backtest as backtest_mod
from fitting.backtest import AblationSpec, BacktestConfig, backtest
from fitting.backtest_cache import BacktestCache
from fitting.predict import FitConfig
from fitting.schema import load_results
from fitting.simulate import simulate
from tests.cli_runner import run_cli
from tests.designs import COLA, EMERGING

ARGS = ["--n-boot", "20", "--min-checkpoints", "10"]


@pytest.fixture
def res(tmp_path, monkeypatch, emerging_and_never_folder):
    """A copy of the session's two-task folder (tests here rewrite it), with a cache of its own."""
    monkeypatch.setenv("EMERGENCE_CACHE_DIR", str(tmp_path / "cache"))
    return Path(shutil.copytree(emerging_and_never_folder, tmp_path / "res"))


class _Counter:
    """Counts the fits the backtest runs (in this process: workers 1)."""

    def __init__(self, monkeypatch):
        self.n = 0
        real = backtest_mod.predict_data

        def counted(*a, **kw):
            self.n += 1
            return real(*a, **kw)

        monkeypatch.setattr(backtest_mod, "predict_data", counted)


def _entry_kind(path: Path) -> str:
    with np.load(path, allow_pickle=False) as npz:
        return json.loads(bytes(npz["meta"]).decode())["outcome"]["kind"]


def _fit_entries(root: Path) -> list[Path]:
    """The cache's entries of backtest fits (not ground truths)."""
    return [p for p in sorted(Path(root).rglob("*.npz")) if _entry_kind(p) != "ground_truth"]


def _report_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_report_after_backtest_fits_nothing_and_writes_the_same_report(res, tmp_path, capsys, monkeypatch):
    # the reports' "generated" line, fixed (it has minutes: two runs may straddle one)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000000")
    count = _Counter(monkeypatch)
    code, _, err = run_cli(["backtest", res, *ARGS, "--ablations", "--json"], capsys)
    assert code == 0, err
    fitted = count.n
    assert fitted > 0 and "reused 0 of" in err
    code, _, err = run_cli(["report", res, "--out", tmp_path / "a", *ARGS], capsys)
    assert code == 0, err
    assert count.n == fitted, "the report refitted what the backtest had just fitted"
    assert f"backtest cache: reused {fitted} of {fitted} fits, computed 0" in err
    code, _, err = run_cli(["report", res, "--out", tmp_path / "b", *ARGS, "--no-cache"], capsys)
    assert code == 0, err
    assert count.n == 2 * fitted and "backtest cache" not in err  # --no-cache recomputes everything
    assert _report_files(tmp_path / "a") == _report_files(tmp_path / "b")  # byte for byte
    assert b"2027-01-15 08:00 UTC" in _report_files(tmp_path / "a")["report.md"]  # SOURCE_DATE_EPOCH


def test_report_with_ablations_reuses_the_cutoffs_and_fits_only_the_ablations(res, tmp_path, capsys, monkeypatch):
    count = _Counter(monkeypatch)
    code, _, err = run_cli(["backtest", res, *ARGS, "--json"], capsys)  # no ablations
    cutoffs = count.n
    code, _, err = run_cli(["report", res, "--out", tmp_path / "a", *ARGS], capsys)  # ablations by default
    assert code == 0, err
    ablations = count.n - cutoffs
    assert ablations > 0 and f"reused {cutoffs} of {cutoffs + ablations} fits, computed {ablations}" in err


def test_other_settings_and_changed_tables_miss_the_cache(res, capsys, monkeypatch):
    count = _Counter(monkeypatch)
    run_cli(["backtest", res, *ARGS, "--json"], capsys)
    first = count.n
    run_cli(["backtest", res, *ARGS, "--json", "--seed", "1"], capsys)
    assert count.n == 2 * first
    run_cli(["backtest", res, *ARGS, "--json", "--tolerance", "0.2"], capsys)  # scoring only: reused
    assert count.n == 2 * first
    # change one few-shot result of one task: that task's fits miss, the other task's hit
    import polars as pl

    from fitting.schema import write_results

    folder = load_results(res)
    results = folder.results.with_columns(
        pl.when((pl.col("task") == COLA.name) & (pl.col("setting") == "few_shot")
                & (pl.col("checkpoint") == pl.col("checkpoint").first()))
        .then(pl.col("value") * 0.5).otherwise(pl.col("value")).alias("value"))
    meta = {k: v for k, v in folder.metadata.items() if k != "generation"}
    write_results(res, folder.checkpoints, results, folder.items, meta)
    before = count.n
    code, _, err = run_cli(["backtest", res, *ARGS, "--json"], capsys)
    assert code == 0, err
    assert 0 < count.n - before < first


def test_a_corrupt_entry_is_recomputed_not_a_crash(res, capsys, monkeypatch):
    count = _Counter(monkeypatch)
    run_cli(["backtest", res, *ARGS, "--json"], capsys)
    first = count.n
    entries = _fit_entries(res.parent / "cache")
    assert len(entries) == first
    entries[0].write_bytes(b"not an npz")
    entries[1].write_bytes(entries[1].read_bytes()[:100])  # cut short
    code, out, err = run_cli(["backtest", res, *ARGS, "--json"], capsys)
    assert code == 0, err
    assert count.n == first + 2 and "ignoring unreadable cache entry" in err
    code, out2, _ = run_cli(["backtest", res, *ARGS, "--json"], capsys)  # rewritten: all hits now
    assert count.n == first + 2 and json.loads(out2) == json.loads(out)


def test_round_trip_keeps_every_field_and_uses_no_pickle(tmp_path):
    folder = simulate(EMERGING, seed=1)
    config = BacktestConfig(fit=FitConfig(n_boot=20, n_starts=8), min_checkpoints=11,
                            ablations=AblationSpec(last_k=(4,)))
    cache = BacktestCache(tmp_path)
    (fresh,) = backtest(folder, config, cache=cache)
    (again,) = backtest(folder, config, cache=cache)
    assert cache.hits == cache.writes > 0
    assert again.to_json() == fresh.to_json()
    for a, b in zip(fresh.cutoffs, again.cutoffs):
        pa, pb = a.prediction, b.prediction
        assert pa.to_json() == pb.to_json()
        np.testing.assert_array_equal(pa.samples, pb.samples)
        np.testing.assert_array_equal(pa.profile.theta, pb.profile.theta)
        assert pa.params == pb.params and pa.emergence_loss_pct == pb.emergence_loss_pct
    for path in tmp_path.rglob("*.npz"):
        with np.load(path, allow_pickle=False) as npz:  # loads without pickle
            assert all(npz[k].dtype != object for k in npz.files)


def test_an_unwritable_cache_folder_warns_and_goes_on(tmp_path, capsys):
    folder = simulate(EMERGING, seed=1)
    (tmp_path / "file").write_text("x")
    cache = BacktestCache(tmp_path / "file")  # a file where the folder should be
    config = BacktestConfig(fit=FitConfig(n_boot=0, n_starts=8, profile=False), min_checkpoints=11)
    (r,) = backtest(folder, config, cache=cache)
    assert r.cutoffs and cache.writes == 0 and "cannot write the backtest cache" in capsys.readouterr().err


class _TruthCounter:
    """Counts the ground truths computed (FitConfig.ground_truth) in this process."""

    def __init__(self, monkeypatch):
        self.n = 0
        real = FitConfig.ground_truth

        def counted(config, data):
            self.n += 1
            return real(config, data)

        monkeypatch.setattr(FitConfig, "ground_truth", counted)


def test_fit_backtest_and_report_compute_each_ground_truth_once(res, tmp_path, capsys, monkeypatch):
    truths = _TruthCounter(monkeypatch)
    code, out, err = run_cli(["fit", res, "--n-boot", "20", "--json"], capsys)
    assert code == 0, err
    assert truths.n == 2  # one per task, stored
    gt_entries = [p for p in sorted((res.parent / "cache").rglob("*.npz")) if _entry_kind(p) == "ground_truth"]
    assert len(gt_entries) == 2
    code, bt, err = run_cli(["backtest", res, *ARGS, "--json"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["report", res, "--out", tmp_path / "r", *ARGS], capsys)
    assert code == 0, err
    assert truths.n == 2, "backtest or report recomputed a ground truth that fit had stored"
    # the cached truth is the computed one, field for field
    code, bt_fresh, err = run_cli(["backtest", res, *ARGS, "--json", "--no-cache"], capsys)
    assert code == 0 and truths.n == 4
    assert json.loads(bt_fresh) == json.loads(bt)
    # other ground-truth settings (the seed of its bootstrap) miss
    run_cli(["fit", res, "--n-boot", "20", "--json", "--seed", "3"], capsys)
    assert truths.n == 6


def test_a_corrupt_ground_truth_entry_is_recomputed(res, capsys, monkeypatch):
    truths = _TruthCounter(monkeypatch)
    code, out, _ = run_cli(["fit", res, "--n-boot", "20", "--json"], capsys)
    for path in (res.parent / "cache").rglob("*.npz"):
        if _entry_kind(path) == "ground_truth":
            path.write_bytes(path.read_bytes()[:50])
    code, out2, err = run_cli(["fit", res, "--n-boot", "20", "--json"], capsys)
    assert code == 0 and truths.n == 4 and "ignoring unreadable cache entry" in err
    assert json.loads(out2) == json.loads(out)


def test_fit_in_worker_processes_gives_the_same_records(res, capsys):
    code, one, err = run_cli(["fit", res, "--n-boot", "30", "--json", "--no-cache"], capsys)
    assert code == 0, err
    code, two, err = run_cli(["fit", res, "--n-boot", "30", "--json", "--no-cache", "--workers", "2"], capsys)
    assert code == 0, err
    assert json.loads(two) == json.loads(one)
    code, _, err = run_cli(["fit", res, "--workers", "0"], capsys)
    assert code != 0 and "--workers must be >= 1" in err and "Traceback" not in err
