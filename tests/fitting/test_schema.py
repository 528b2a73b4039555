"""Every bad input of the data contract, through the library and through the CLI.

Through the CLI each case must give exit code 2 and exactly one line on stderr naming the
file (and column and row where there is one), with no traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from emergence.errors import ContractError
from fitting.schema import CHECKPOINTS_FILE, RESULTS_FILE, load_results


@pytest.fixture(scope="module")
def good(two_level_folder) -> Path:
    """A valid folder (tests/conftest.py); the tests edit copies of it."""
    return two_level_folder


def _copy_with(good: Path, tmp: Path, file: str, edit) -> Path:
    """A copy of the good folder with ``file``'s table replaced by ``edit(table)``."""
    for name in (CHECKPOINTS_FILE, RESULTS_FILE):
        df = pl.read_parquet(good / name)
        (edit(df) if name == file else df).write_parquet(tmp / name)
    return tmp


from cli_runner import run_cli as _run_cli  # noqa: E402


BAD = {
    "missing column": (RESULTS_FILE, lambda df: df.drop("value"), ["results.parquet", "'value'", "missing"]),
    "wrong type": (RESULTS_FILE, lambda df: df.with_columns(pl.col("value").cast(pl.String)), ["'value'", "type"]),
    "wrong type in checkpoints": (CHECKPOINTS_FILE, lambda df: df.with_columns(pl.col("params").cast(pl.String)),
                                  ["checkpoints.parquet", "'params'"]),
    "NaN": (RESULTS_FILE, lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(float("nan")).otherwise(pl.col("value")).alias("value")),
        ["'value'", "row 7", "not finite"]),
    "null": (CHECKPOINTS_FILE, lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 2).then(None).otherwise(pl.col("family")).alias("family")),
        ["'family'", "row 2", "null"]),
    "accuracy above 1": (RESULTS_FILE, lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(1.2).otherwise(pl.col("value")).alias("value")),
        ["'value'", "row 3", "[0, 1]"]),
    "accuracy below 0": (RESULTS_FILE, lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(-0.1).otherwise(pl.col("value")).alias("value")),
        ["row 0", "[0, 1]"]),
    "duplicate result key": (RESULTS_FILE, lambda df: pl.concat([df, df.head(1)]), ["duplicate key"]),
    "duplicate checkpoint": (CHECKPOINTS_FILE, lambda df: pl.concat([df, df.head(1)]), ["duplicate key"]),
    "unknown checkpoint": (RESULTS_FILE, lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 5).then(pl.lit("ghost")).otherwise(pl.col("checkpoint")).alias("checkpoint")),
        ["'checkpoint'", "row 5", "not in checkpoints.parquet"]),
    "bad setting": (RESULTS_FILE, lambda df: df.with_columns(pl.lit("zero_shot").alias("setting")), ["'setting'"]),
    "negative items": (RESULTS_FILE, lambda df: df.with_columns(pl.lit(-3).alias("n_items")), ["'n_items'", "positive"]),
    "infinite flops": (CHECKPOINTS_FILE, lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(float("inf")).otherwise(pl.col("flops")).alias("flops")),
        ["'flops'", "row 3", "finite"]),
    "no results": (RESULTS_FILE, lambda df: df.head(0), ["no rows"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_library_refuses_bad_table(good, tmp_path, case):
    file, edit, words = BAD[case]
    folder = _copy_with(good, tmp_path, file, edit)
    with pytest.raises(ContractError) as err:
        load_results(folder)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("case", list(BAD))
def test_cli_refuses_bad_table_with_one_line(good, tmp_path, case, capsys):
    file, edit, words = BAD[case]
    folder = _copy_with(good, tmp_path, file, edit)
    code, out, err = _run_cli(["fit", str(folder), "--n-boot", "0"], capsys)
    _assert_one_line_error(code, out, err, [file, *words])


def _assert_one_line_error(code, out, err, words):
    assert code == 2
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0]


def test_cli_missing_file(good, tmp_path, capsys):
    pl.read_parquet(good / CHECKPOINTS_FILE).write_parquet(tmp_path / CHECKPOINTS_FILE)
    code, out, err = _run_cli(["fit", str(tmp_path)], capsys)
    _assert_one_line_error(code, out, err, ["results.parquet", "not found"])


def test_cli_missing_folder(tmp_path, capsys):
    code, out, err = _run_cli(["fit", str(tmp_path / "nowhere")], capsys)
    _assert_one_line_error(code, out, err, ["nowhere", "not found"])


def test_cli_corrupt_parquet(good, tmp_path, capsys):
    pl.read_parquet(good / CHECKPOINTS_FILE).write_parquet(tmp_path / CHECKPOINTS_FILE)
    (tmp_path / RESULTS_FILE).write_bytes(b"not parquet at all")
    code, out, err = _run_cli(["fit", str(tmp_path)], capsys)
    _assert_one_line_error(code, out, err, ["results.parquet", "not a readable Parquet file"])


def test_cli_unknown_task_suggests(good, capsys):
    code, out, err = _run_cli(["fit", str(good), "--task", "sim_mmlx", "--n-boot", "0"], capsys)
    _assert_one_line_error(code, out, err, ["unknown task 'sim_mmlx'", "did you mean sim_mmlu"])


@pytest.mark.parametrize("option,value,word", [("--law", "cubic", "unknown law"),
                                               ("--likelihood", "poisson", "likelihood"),
                                               ("--method", "magic", "method"),
                                               ("--items", "some", "items"),
                                               ("--n-boot", "-5", "n_boot"),
                                               ("--seed", "-1", "seed")])
def test_cli_bad_option_values(good, capsys, option, value, word):
    code, out, err = _run_cli(["fit", str(good), option, value], capsys)
    _assert_one_line_error(code, out, err, [word])


def test_cli_gaussian_needed_for_non_proportion_metric(good, tmp_path, capsys):
    folder = _copy_with(good, tmp_path, RESULTS_FILE, lambda df: df.with_columns(pl.lit("bleu").alias("metric")))
    code, out, err = _run_cli(["fit", str(folder), "--n-boot", "0", "--json"], capsys)
    _assert_one_line_error(code, out, err, ["'bleu'", "--likelihood gaussian"])
    code, out, err = _run_cli(["fit", str(folder), "--n-boot", "0", "--likelihood", "gaussian", "--json"], capsys)
    assert code == 0 and '"likelihood": "gaussian"' in out


def test_real_process_one_line_no_traceback(good, tmp_path):
    folder = _copy_with(good, tmp_path, RESULTS_FILE, lambda df: df.drop("n_items"))
    proc = subprocess.run([sys.executable, "-m", "emergence", "fit", str(folder)], capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "80"})
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "results.parquet" in lines[0] and "'n_items'" in lines[0] and proc.stdout == ""
