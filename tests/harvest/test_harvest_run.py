"""End to end: spec -> tables; resume after kill -9; one-line errors through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.harvest

import polars as pl  # noqa: E402

from fitting.schema import CHECKPOINT_COLUMNS, ITEM_COLUMNS, RESULT_COLUMNS, load_results  # noqa: E402
from harvest.evaluate import run_harvest  # noqa: E402
from harvest.spec import load_spec  # noqa: E402
from harvest.store import Store  # noqa: E402
from harvest.testing import build_tiny_llama, hub_cache  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("models")
    return [build_tiny_llama(root / f"m{i}", seed=i, init_std=0.1) for i in range(3)]


def checkpoint_block(models, n=2) -> str:
    return "".join(f"""
[[checkpoints]]
name = "tiny-{i}"
path = "{m}"
family = "tiny"
params = 150000
step = {10 ** (i + 1)}
tokens_per_step = 4096
""" for i, m in enumerate(models[:n]))


def fixture_spec(tmp_path, models) -> Path:
    text = f"""
[engine]
batch_size = 4

[held_out]
path = "{FIXTURES / 'heldout.txt'}"
window = 64
""" + checkpoint_block(models) + "".join(f"""
[[tasks]]
task = "{name}"
data = "{FIXTURES / name}"
shots = 2
""" for name in ("mmlu", "gsm8k", "commonsense_qa", "cola")) + """
[[tasks]]
task = "synthetic_copy"
shots = 3
limit = 20
"""
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def test_tables_follow_the_contract(tmp_path, models):
    spec = load_spec(fixture_spec(tmp_path, models))
    manifest = run_harvest(spec, tmp_path / "out", show_progress=False)
    folder = load_results(tmp_path / "out", items=True)  # validates all three tables
    for table, columns in ((folder.checkpoints, CHECKPOINT_COLUMNS), (folder.results, RESULT_COLUMNS),
                           (folder.items, ITEM_COLUMNS)):
        assert {c: table.schema[c] for c in columns} == columns
    assert folder.checkpoints["tokens"].to_list() == [10 * 4096, 100 * 4096]
    assert folder.checkpoints["pretrain_loss"].min() > 0 and folder.checkpoints["bits_per_byte"].min() > 0
    # one row per unit and metric: CoLA's MCC (primary) and accuracy, GSM8K's two answer filters
    assert folder.results.height == 2 * 7 and folder.items.height == 2 * (6 + 4 + 4 + 6 + 20)
    chance = dict(zip(zip(folder.results["task"], folder.results["metric"]), folder.results["chance"]))
    assert chance == {("mmlu", "accuracy"): 0.25, ("gsm8k", "exact_match"): 0.0, ("gsm8k", "exact_match_flexible"): 0.0,
                      ("commonsense_qa", "accuracy"): 0.2, ("cola", "mcc"): 0.0, ("cola", "accuracy"): 0.5,
                      ("synthetic_copy", "accuracy"): 0.25}
    per_item = folder.items.group_by("checkpoint", "task").agg(pl.col("correct").mean().alias("acc"), pl.len())
    joined = folder.results.filter(pl.col("metric").is_in(["accuracy", "exact_match"])).join(
        per_item, on=["checkpoint", "task"])
    assert (joined["value"] == joined["acc"]).all() and (joined["n_items"] == joined["len"]).all()
    mc = folder.items.filter(pl.col("task") == "mmlu")
    assert mc["choice_logprobs"].list.len().to_list() == [4] * mc.height
    assert (mc["prediction"] == mc["choice_logprobs"].list.arg_max().cast(pl.String)).all()
    assert folder.items.filter(pl.col("task") == "gsm8k")["choice_logprobs"].null_count() == 8
    assert manifest["spec_hash"] == spec.spec_hash and manifest["versions"]["torch"]
    assert manifest["tasks"]["synthetic_copy"]["seed"] == 1234
    # the defaults' resolution on this CPU-only machine, next to the spec's setting
    assert manifest["engine"]["device"] == "cpu" and manifest["engine"]["dtype"] == "float32"
    assert manifest["engine"]["dtype_setting"] == "auto"
    assert any("items_per_s" in u for u in manifest["runs"][-1]["units_computed"])
    meta = folder.metadata
    assert meta["spec_hash"] == spec.spec_hash and meta["contract_version"]

    # a second run finds every unit done: nothing recomputed, same tables
    again = run_harvest(spec, tmp_path / "out", show_progress=False)
    assert again["runs"][-1]["units_computed"] == [] and len(again["runs"]) == 2
    second = load_results(tmp_path / "out", items=True)
    assert second.results.equals(folder.results) and second.items.equals(folder.items)


def kill_spec(tmp_path, models) -> Path:
    text = f"""
[held_out]
path = "{FIXTURES / 'heldout.txt'}"
window = 32
""" + checkpoint_block(models, 2) + """
[[tasks]]
task = "synthetic_copy"
shots = 3
options = { n_test = 80, length = 8 }

[[tasks]]
task = "synthetic_arithmetic"
shots = 3
options = { n_test = 80 }
"""
    path = tmp_path / "kill.toml"
    path.write_text(text)
    return path


def harvest_cmd(spec: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "emergence", "harvest", "eval", str(spec), "--out", str(out), "--quiet"]


def test_resume_after_kill_9_gives_the_same_tables(tmp_path, models):
    spec, out = kill_spec(tmp_path, models), tmp_path / "killed"
    proc = subprocess.Popen(harvest_cmd(spec, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while not list((out / "parts" / "eval").glob("*.parquet")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = list((out / "parts" / "eval").glob("*.parquet"))
    assert 1 <= len(done) < 4 and not (out / "results.parquet").exists(), proc.stderr.read().decode()[-2000:]

    subprocess.run(harvest_cmd(spec, out), env=ENV, check=True, capture_output=True)
    manifest = json.loads((out / "manifest.json").read_text())
    recomputed = [u for u in manifest["runs"][-1]["units_computed"] if u["kind"] == "eval"]
    assert len(recomputed) == 4 - len(done)  # finished units were not redone
    assert len(list(Store(out).parts.rglob("*.tmp"))) == 0

    run_harvest(load_spec(spec), tmp_path / "straight", show_progress=False)
    resumed, straight = load_results(out, items=True), load_results(tmp_path / "straight", items=True)
    assert resumed.checkpoints.equals(straight.checkpoints)
    assert resumed.results.equals(straight.results) and resumed.items.equals(straight.items)
    assert resumed.items.select("checkpoint", "task", "item_id").is_duplicated().sum() == 0


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from emergence.cli import main

    monkeypatch.setattr(sys, "argv", ["emergence", *args])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


def test_bad_spec_through_the_cli_is_one_line(tmp_path, monkeypatch, capsys, models):
    path = fixture_spec(tmp_path, models)
    path.write_text(path.read_text().replace('task = "cola"', 'task = "colaa"'))
    code, err = run_cli(monkeypatch, capsys, "harvest", "eval", str(path), "--out", str(tmp_path / "o"))
    assert code == 2 and "did you mean 'cola'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("where", ['path = "/no/such/checkpoint"', 'hub = "nobody-here/missing-model"\nrevision = "step9"'])
def test_unloadable_checkpoint_through_the_cli_is_one_line(tmp_path, monkeypatch, capsys, models, where):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = fixture_spec(tmp_path, models)
    path.write_text(path.read_text().replace(f'path = "{models[1]}"', where))
    code, err = run_cli(monkeypatch, capsys, "harvest", "eval", str(path), "--out", str(tmp_path / "o"), "--quiet")
    assert code == 2 and "Traceback" not in err and "checkpoint" in err
    assert len(err.strip().splitlines()) == 1
    # the first checkpoint's finished units survive the failure
    assert len(list((tmp_path / "o" / "parts" / "eval").glob("*.parquet"))) == 5


def test_keep_going_measures_the_checkpoints_after_one_that_will_not_load(tmp_path, monkeypatch, capsys, models):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = fixture_spec(tmp_path, models)
    good = path.read_text()
    path.write_text(good.replace(f'path = "{models[0]}"', 'path = "/no/such/checkpoint"'))
    code, err = run_cli(monkeypatch, capsys, "harvest", "eval", str(path), "--out", str(tmp_path / "o"),
                        "--quiet", "--keep-going")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "1 of 2 checkpoint(s) failed" in err and "tiny-0" in err and "folder not found" in err
    assert len(list((tmp_path / "o" / "parts" / "eval").glob("*.parquet"))) == 5  # tiny-1, measured after it
    assert not (tmp_path / "o" / "results.parquet").exists()  # no tables from a partial run
    path.write_text(good)  # fixed: the rerun measures only tiny-0 and writes the tables
    manifest = run_harvest(load_spec(path), tmp_path / "o", show_progress=False)
    assert manifest["tables"]["checkpoints"] == 2 and load_results(tmp_path / "o").checkpoints.height == 2
    loaded = [u["checkpoint"] for u in manifest["runs"][-1]["units_computed"] if u["kind"] == "load"]
    assert loaded == ["tiny-0"]


def test_hub_id_and_revision_load_from_the_hub_cache_offline(tmp_path, models):
    """``hub = "org/name"`` + ``revision`` goes through from_pretrained(id, revision=...): each
    revision resolves to its own snapshot (different weights, different loss), and the numbers
    equal those of the same models given as local folders."""
    cache = hub_cache(tmp_path / "hub", "acme/tiny-llama", {"step10": models[0], "step100": models[1]})
    local = fixture_spec(tmp_path, models)
    text = local.read_text().split("[[tasks]]")[0] + '[[tasks]]\ntask = "synthetic_copy"\nshots = 1\nlimit = 8\n'
    local.write_text(text)
    hub = tmp_path / "hub.toml"
    hub.write_text(text.replace(f'name = "tiny-0"\npath = "{models[0]}"', 'name = "tiny-0"\nhub = "acme/tiny-llama"\nrevision = "step10"')
                   .replace(f'name = "tiny-1"\npath = "{models[1]}"', 'name = "tiny-1"\nhub = "acme/tiny-llama"\nrevision = "step100"'))
    assert hub.read_text().count("acme/tiny-llama") == 2
    env = {**ENV, "HF_HUB_CACHE": str(cache)}
    for spec, out in ((local, "local"), (hub, "from_hub")):
        subprocess.run(harvest_cmd(spec, tmp_path / out), env=env, check=True, capture_output=True)
    by_folder, by_hub = (load_results(tmp_path / out).checkpoints.sort("checkpoint") for out in ("local", "from_hub"))
    assert by_hub["pretrain_loss"].to_list() == pytest.approx(by_folder["pretrain_loss"].to_list(), abs=1e-6)
    assert abs(by_hub["pretrain_loss"][0] - by_hub["pretrain_loss"][1]) > 1e-3  # two revisions, two models
    hub.write_text(hub.read_text().replace('"step100"', '"step999"'))  # a revision the cache lacks
    missing = subprocess.run(harvest_cmd(hub, tmp_path / "bad"), env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "acme/tiny-llama@step999" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
