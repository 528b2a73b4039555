"""Inputs the toolkit cannot read right are refused at the boundary (issue 16).

Each case runs the real entry point (``emergence.cli.main``; one case in a fresh process,
``python -m emergence``, as a user's shell would) and must end with exit code 2, exactly one
line on stderr naming the file (and line or row where there is one), no traceback, and nothing
already written changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from cli_runner import run_cli
from fitting.report import Section, Table, render_markdown
from fitting.schema import RESULTS_FILE

SHARED = Path(os.environ.get("EMERGENCE_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
LM_EVAL_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "lm_eval" / "out"
HEADER = "name,dataset,params,tokens,loss__c4_val,acc__squad\n"
METADATA = ("Eval Task,Task Category,Task Type,#shots,#datapoints,Random baseline,Centered Metric?,Description\n"
            "squad,reading,language modeling,10,10570,0,,SQuAD\n")


def shared_file(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"third-party data {path} not present (set EMERGENCE_SHARED_DATA to the shared/data folder)")
    return path


def emergence_process(*args) -> tuple[int, str, str]:
    """``emergence ARGS`` in a fresh process: (exit code, stdout, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "80", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "emergence", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def emergence(capsys):
    """``emergence ARGS`` through the real entry point, in-process (a fresh process per case is
    several seconds of imports on a loaded machine; test_truncated_gadre_csv_... uses one)."""
    def run(*args) -> tuple[int, str, str]:
        return run_cli(list(map(str, args)), capsys)
    return run


def refused(result: tuple[int, str, str], *fragments: str) -> str:
    """Assert exit 2 and one stderr line, with no traceback, holding every fragment; that line."""
    code, out, err = result
    assert code == 2, err
    assert "Traceback" not in err, err
    assert out == "", out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def tiny_gadre(folder: Path, rows: str = "m1,rpj,1000,20000,4.0,0.0\nm2,rpj,2000,40000,3.5,0.1\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flat_models_losses_accuracies.csv").write_text(HEADER + rows)
    (folder / "eval_metadata.csv").write_text(METADATA)
    return folder


@pytest.fixture(scope="module")
def good(one_level_folder) -> Path:
    """A valid folder (tests/conftest.py); the tests edit copies of it."""
    return one_level_folder


def edited_copy(good: Path, dst: Path, edit) -> Path:
    shutil.copytree(good, dst)
    edit(dst / RESULTS_FILE)
    return dst


# --------------------------------------------------------------------------- 1. cut or ragged CSVs


def test_truncated_gadre_csv_is_refused_with_its_line(tmp_path):
    """In a fresh process: the installed entry point, as a user's shell runs it."""
    source = shared_file("mlfoundations_scaling", "flat_models_losses_accuracies.csv")
    shutil.copy(shared_file("mlfoundations_scaling", "exp_data", "eval_metadata.csv"), tmp_path)
    cut = tmp_path / source.name
    cut.write_bytes(source.read_bytes()[:20000])  # in the middle of line 18
    refused(emergence_process("import", "gadre", cut, "--out", tmp_path / "out"),
            str(cut), "line 18", "62 fields, the header has 63", "ends in the middle of this line")
    assert not (tmp_path / "out").exists()


def test_truncated_obsscaling_csv_is_refused_with_its_line(emergence, tmp_path):
    source = shared_file("obsscaling", "base_llm_benchmark_eval.csv")
    cut = tmp_path / source.name
    cut.write_bytes(source.read_bytes()[:5000])
    refused(emergence("import", "obsscaling", cut, "--out", tmp_path / "out", "--loss-proxy", "chinchilla"),
            str(cut), "line 27", "ends in the middle of this line")


def test_ragged_row_is_refused_and_the_existing_folder_is_kept(emergence, tmp_path):
    source = tiny_gadre(tmp_path / "g")
    out = tmp_path / "out"
    assert emergence("import", "gadre", source, "--out", out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    tiny_gadre(source, "m1,rpj,1000,20000,4.0,0.0,0.7\nm2,rpj,2000,40000,3.5,0.1\n")
    refused(emergence("import", "gadre", source, "--out", out, "--overwrite"),
            "flat_models_losses_accuracies.csv, line 2", "7 fields, the header has 6", "ragged row")
    tiny_gadre(source, "m1,rpj,1000,20000,4.0,0.0\nm2,rpj,2000,40000\n")  # a short row, newline-ended
    refused(emergence("import", "gadre", source, "--out", out, "--overwrite"),
            "flat_models_losses_accuracies.csv, line 3", "4 fields, the header has 6")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# --------------------------------------------------------------------------- 2, 3. user tables


@pytest.mark.parametrize("name, text, fragments", [
    ("c.csv", "checkpoint,tokens\nm1,1e30\n", ["line 2", "'tokens'", "1e+30 is not a plausible count"]),
    ("c.csv", "checkpoint,tokens\nm1,inf\n", ["line 2", "'tokens'", "must be a positive finite number"]),
    ("c.toml", "[[checkpoint]]\ncheckpoint = 'm1'\ntokens = 1e30\n",
     ["[[checkpoint]] entry 1", "'tokens'", "not a plausible count"]),
    ("c.toml", "[[checkpoint]]\ncheckpoint = 'm1'\nparams = [1, 2]\n",
     ["[[checkpoint]] entry 1, key 'params'", "an array [1, 2], expected a number"]),
    ("c.toml", "[[checkpoint]]\ncheckpoint = 'm1'\nparams = 1" + "0" * 400 + "\n",
     ["[[checkpoint]] entry 1, key 'params'", "an integer beyond 1e308 is not a plausible count"]),
    ("c.toml", "[[checkpoint]]\ncheckpoint = 'm1'\nfamily = { a = 1 }\n",
     ["[[checkpoint]] entry 1, key 'family'", "a table", "expected a string"]),
])
def test_checkpoint_table_with_absurd_or_mistyped_values(emergence, tmp_path, name, text, fragments):
    table = tmp_path / name
    table.write_text(text)
    refused(emergence("import", "gadre", tiny_gadre(tmp_path / "g"), "--out", tmp_path / "out",
                      "--checkpoints", table), str(table), *fragments)


def test_single_checkpoint_count_option_out_of_range(emergence, tmp_path):
    refused(emergence("import", "lm-eval", LM_EVAL_FIXTURE / "tiny-a", "--out", tmp_path / "out", "--family", "t",
                      "--tokens", "1" + "0" * 30, "--pretrain-loss", "5"),
            "--tokens 1e+30: must be a positive count below 9.2e18")


def test_harvest_spec_nested_too_deep(emergence, tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text("a = " + "[" * 200_000 + "]" * 200_000 + "\n")
    refused(emergence("harvest", "eval", spec, "--out", tmp_path / "out"), str(spec), "nested too deeply")


# --------------------------------------------------------------------------- 4. deep JSON


def test_lm_eval_json_nested_200000_deep(emergence, tmp_path):
    results = tmp_path / "results_2024-01-01T00-00-00.json"
    results.write_text("[" * 200_000 + "]" * 200_000)
    refused(emergence("import", "lm-eval", results, "--out", tmp_path / "out"), str(results), "nested too deeply")
    src = next((LM_EVAL_FIXTURE / "tiny-a").glob("results_*.json"))
    shutil.copytree(src.parent, tmp_path / "run")
    samples = next((tmp_path / "run").glob("samples_toy_mc_*.jsonl"))
    samples.write_text('{"a": ' * 200_000 + "1" + "}" * 200_000 + "\n")
    refused(emergence("import", "lm-eval", tmp_path / "run" / src.name, "--out", tmp_path / "out2",
                      "--family", "t", "--tokens", "1000", "--pretrain-loss", "5"),
            str(samples), "line 1", "nested too deeply")


# --------------------------------------------------------------------------- 5, 6, 8. results folders


def _metadata_list(path: Path) -> None:
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"emergence": b"[1, 2]"}), path)


def _rewrite(edit):
    return lambda path: edit(pl.read_parquet(path)).write_parquet(path)


@pytest.mark.parametrize("case, edit, fragments", [
    ("metadata list", _metadata_list, ["metadata key 'emergence' holds a JSON list, expected an object"]),
    ("chance 1", _rewrite(lambda df: df.with_columns(pl.lit(1.0).alias("chance"))),
     ["column 'chance', row 0", "must lie in [0, 1)"]),
    ("long task name", _rewrite(lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("x" * 5000)).otherwise(pl.col("task")).alias("task"))),
     ["column 'task', row 4", "is 5000 characters long (at most 200)"]),
    ("newline in task name", _rewrite(lambda df: df.with_columns(pl.col("task") + "\n<b>")),
     ["column 'task', row 0", "contains a control character"]),
])
def test_bad_results_folder_is_refused_before_any_fit(emergence, good, tmp_path, case, edit, fragments):
    folder = edited_copy(good, tmp_path / "res", edit)
    line = refused(emergence("report", folder, "--out", tmp_path / "rep"), str(folder / RESULTS_FILE), *fragments)
    assert len(line) < 300
    assert not (tmp_path / "rep").exists()


def test_import_refuses_bad_task_facts_and_names(emergence, tmp_path):
    source = tiny_gadre(tmp_path / "g")
    tasks = tmp_path / "tasks.csv"
    tasks.write_text("task,n_items,chance\nsquad,100,1.0\n")
    refused(emergence("import", "gadre", source, "--out", tmp_path / "o", "--tasks", tasks),
            str(tasks), "line 2", "'chance'", "outside [0, 1)")
    (source / "eval_metadata.csv").write_text(METADATA.replace("squad,", "y" * 5000 + ",", 1))
    refused(emergence("import", "gadre", source, "--out", tmp_path / "o"),
            str(source / "eval_metadata.csv"), "line 2", "'Eval Task'", "5000 characters long")


# --------------------------------------------------------------------------- 7. report.md


def test_markdown_report_escapes_html_from_the_data():
    name = "<script>alert(1)</script> & co"
    table = Table(["task", "value"], [[name, "1"]], caption=f"caption of {name}")
    md = render_markdown("title", [Section(f"Task {name}", [f"{name}: never emerged"], [table])], None)
    assert "<script>" not in md and "<" not in md.replace("&lt;", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in md
    assert md.count("&lt;script&gt;") == 4  # title, paragraph, cell, caption
