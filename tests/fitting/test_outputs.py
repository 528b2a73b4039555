"""Output paths: a bad --out fails at once with one line (before any work), and no command
replaces a results folder it did not make unless told to."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from cli_runner import run_cli
from fitting.schema import CHECKPOINTS_FILE, ITEMS_FILE, RESULTS_FILE, load_results
from fitting.simulate import simulate
from tests.designs import ONE_LEVEL


@pytest.fixture(scope="module")
def sim(two_level_folder) -> Path:
    return two_level_folder


def one_line(code: int, err: str, *words: str) -> str:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def bad_outs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "afile").write_text("x")
    return {"under a file": (tmp_path / "afile" / "sub", "is a file"),
            "a file": (tmp_path / "afile", "must be a folder")}


@pytest.mark.parametrize("case", ["under a file", "a file"])
def test_report_checks_out_before_fitting(sim, tmp_path, capsys, case):
    out, word = bad_outs(tmp_path)[case]
    code, _, err = run_cli(["report", str(sim), "--out", str(out), "--n-boot", "0", "--no-ablations"], capsys)
    one_line(code, err, str(out), word)
    assert "bootstrap" not in err and "backtest" not in err  # no fit ran


def test_report_refuses_a_folder_where_its_file_goes(sim, tmp_path, capsys):
    (tmp_path / "rep" / "report.md").mkdir(parents=True)
    code, _, err = run_cli(["report", str(sim), "--out", str(tmp_path / "rep"), "--n-boot", "0"], capsys)
    one_line(code, err, "report.md", "is a folder")
    (tmp_path / "rep2" / "figures").parent.mkdir()
    (tmp_path / "rep2" / "figures").write_text("x")
    code, _, err = run_cli(["report", str(sim), "--out", str(tmp_path / "rep2"), "--n-boot", "0"], capsys)
    one_line(code, err, "figures", "is a file")
    assert not list(tmp_path.rglob(".*.tmp"))


@pytest.mark.parametrize("case", ["under a file", "a file"])
def test_simulate_and_import_check_out(tmp_path, capsys, case):
    out, word = bad_outs(tmp_path)[case]
    one_line(*run_cli(["simulate", str(out)], capsys)[::2], word)
    one_line(*run_cli(["import", "gadre", str(tmp_path / "source.csv"), "--out", str(out)], capsys)[::2], word)


def test_simulate_does_not_replace_results_without_overwrite(sim, tmp_path, capsys):
    target = tmp_path / "res"
    simulate(ONE_LEVEL, seed=5, out=target)
    pl.DataFrame({"x": [1]}).write_parquet(target / ITEMS_FILE)  # as if an import had left items
    before = (target / RESULTS_FILE).read_bytes()
    one_line(*run_cli(["simulate", str(target), "--seed", "2"], capsys)[::2], "already holds", "--overwrite")
    assert (target / RESULTS_FILE).read_bytes() == before  # untouched
    code, _, err = run_cli(["simulate", str(target), "--seed", "2", "--overwrite"], capsys)
    assert code == 0, err
    assert load_results(target).metadata["seed"] == 2 and not (target / ITEMS_FILE).exists()


@pytest.mark.parametrize("args,word", [(["--seed", "-1"], "--seed"), (["--level", "0"], "--level")])
def test_simulate_option_errors_name_the_option(tmp_path, capsys, args, word):
    one_line(*run_cli(["simulate", str(tmp_path / "s"), *args], capsys)[::2], word)


def test_an_os_error_is_one_line(sim, tmp_path, capsys, monkeypatch):
    """A path problem no early check caught still ends in one line naming the path."""
    import fitting.report as report

    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "rep" / "figures"))

    monkeypatch.setattr(report.fig_, "save_png", refuse)
    code, _, err = run_cli(["report", str(sim), "--out", str(tmp_path / "rep"), "--n-boot", "0",
                            "--no-ablations", "--task", "sim_cola", "--min-checkpoints", "12"], capsys)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]  # after the progress bars
    assert last.startswith("error:") and "figures" in last and "Permission denied" in last


def test_backtest_says_when_no_cutoff_keeps_enough_checkpoints(sim, capsys):
    code, out, err = run_cli(["backtest", str(sim), "--n-boot", "0", "--task", "sim_cola",
                              "--min-checkpoints", "99"], capsys)
    assert code == 0 and "no cutoff keeps --min-checkpoints 99 checkpoints (the task has 12)" in " ".join(out.split())


def test_harvest_refuses_a_results_folder_it_did_not_make(sim, tmp_path, capsys):
    """harvest eval/sweep compact their parts into the tables: over an imported or simulated
    folder that would silently replace its results, so they refuse before loading a model."""
    target = tmp_path / "imported"
    simulate(ONE_LEVEL, seed=1, out=target)
    before = {n: (target / n).read_bytes() for n in (CHECKPOINTS_FILE, RESULTS_FILE)}
    spec = tmp_path / "spec.toml"
    spec.write_text('[[checkpoints]]\nname = "m"\npath = "/no/such/model"\nfamily = "f"\nparams = 1000\n'
                    'tokens = 1000\npretrain_loss = 3.0\n\n[[tasks]]\ntask = "synthetic_copy"\nlimit = 4\n\n'
                    '[sweep]\nn_train = [8]\n')
    for command in ("eval", "sweep"):
        code, _, err = run_cli(["harvest", command, str(spec), "--out", str(target), "--quiet"], capsys)
        one_line(code, err, str(target), "no harvest wrote here")
    assert {n: (target / n).read_bytes() for n in before} == before
    (tmp_path / "afile").write_text("x")
    one_line(*run_cli(["harvest", "eval", str(spec), "--out", str(tmp_path / "afile"), "--quiet"], capsys)[::2],
             "must be a folder")


def test_recipe_type_errors_name_the_field():
    from emergence.errors import SpecError
    from harvest.finetune import Recipe

    with pytest.raises(SpecError, match="'lr' must be positive; got 'fast'"):
        Recipe.from_dict({"lr": "fast"})
    with pytest.raises(SpecError, match="'max_steps'"):
        Recipe.from_dict({"max_steps": "many"})
