"""Importers for real finetuned and multi-shot data (issue 20): Amuro & Char (base and finetuned
OLMo-1B checkpoints) and the Pythia term-frequency arithmetic sweep, on the real files in
../shared/data (skipped when absent), plus malformed copies of them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fitting.data import TaskData
from fitting.ground_truth import fit_ground_truth
from fitting.importers import FORMATS, ImportOptions, import_results
from fitting.importers.amuro_char import FINETUNE_TASKS, PARAMS as OLMO_PARAMS, TASKS as AMURO_TASKS
from fitting.importers.pythia import PARAMS as PYTHIA_PARAMS
from fitting.schema import load_results

from tests.fitting.test_importers import assert_one_line_error, run_cli  # noqa: E402  (the same in-process runner)

SHARED = Path(os.environ.get("EMERGENCE_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
AMURO_STEPS = (1000, 18000, 342000, 424000, 505000, 592000, 738000)
ARITH_STEPS = (13000, 39000, 65000, 91000, 117000, 143000)
ARITH_MODELS = ("125m", "350m", "800m", "1.3b", "2.7b", "6.7b", "13b")
SHOTS = (0, 2, 4, 8, 16)


def shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"third-party data {path} not present (set EMERGENCE_SHARED_DATA to the shared/data folder)")
    return path




def truncated_copy(source: Path, dest: Path) -> Path:
    """``source`` cut 10 characters into a line half-way through (a download that stopped)."""
    data = source.read_bytes()
    start = data.index(b"\n", len(data) // 2) + 1
    dest.write_bytes(data[:start + 10])
    return dest


def test_both_are_registry_entries():
    assert "amuro-char" in FORMATS and "pythia-arithmetic" in FORMATS


# --------------------------------------------------------------------------- Amuro & Char


@pytest.fixture(scope="module")
def amuro(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("amuro")
    import_results("amuro-char", shared("amuro_char"), out, ImportOptions(loss_proxy="chinchilla", overwrite=True))
    return out


def test_amuro_rows_tasks_and_checkpoints(amuro):
    folder = load_results(amuro)
    assert folder.tasks == ["mnli_matched", "mnli_mismatched", "paws", "socialiqa"]
    assert folder.checkpoints.height == len(AMURO_STEPS)
    assert folder.checkpoints["checkpoint"].to_list() == [f"allenai/OLMo-1B@step{s}" for s in sorted(AMURO_STEPS)]
    assert set(folder.checkpoints["family"]) == {"olmo-1b"}
    assert set(folder.checkpoints["params"]) == {OLMO_PARAMS}
    assert folder.checkpoints.sort("tokens")["tokens"].to_list() == [s * 2048 * 2048 for s in AMURO_STEPS]
    assert np.allclose(folder.checkpoints["flops"], 6.0 * OLMO_PARAMS * folder.checkpoints["tokens"].cast(float))
    # the loss is a labelled proxy, never presented as measured
    assert folder.checkpoints["pretrain_loss_source"].str.starts_with("proxy chinchilla").all()
    losses = folder.checkpoints.sort("tokens")["pretrain_loss"].to_numpy()
    assert np.all(np.diff(losses) < 0)  # more tokens, lower proxy loss
    # every checkpoint: one base (few-shot) and one finetuned row per task, 4-shot
    results = folder.results
    assert results.height == len(AMURO_STEPS) * 4 * 2
    assert results.group_by("setting").len().sort("setting").rows() == [("few_shot", 28), ("finetune", 28)]
    assert set(results["num_fewshot"]) == {4}
    few, ft = results.filter(pl.col("setting") == "few_shot"), results.filter(pl.col("setting") == "finetune")
    assert set(few["n_train"]) == {0}
    for task, (n_train, evals, _) in FINETUNE_TASKS.items():
        for ev in evals:
            assert ft.filter(pl.col("task") == ev)["n_train"].unique().to_list() == [n_train]
    assert set(ft["subset_seed"]) == {0}
    # the source's own model ids are kept, and each finetuned row comes from its own task's model
    for row in ft.iter_rows(named=True):
        step = row["checkpoint"].split("@step")[1]
        assert row["source_model"].startswith(f"olmo1b_hf_ckpt{step}_{row['task'].split('_')[0]}_"), row
    for task, info in AMURO_TASKS.items():
        sel = results.filter(pl.col("task") == task)
        assert sel["n_items"].unique().to_list() == [info.n_items]
        assert sel["chance"].unique().to_list() == [info.chance]
    # the numbers of the data README's table (base 4-shot vs finetuned 4-shot)
    value = {(r["checkpoint"], r["task"], r["setting"]): r["value"] for r in results.iter_rows(named=True)}
    assert value[("allenai/OLMo-1B@step18000", "paws", "finetune")] == pytest.approx(0.805, abs=5e-4)
    assert value[("allenai/OLMo-1B@step342000", "mnli_matched", "finetune")] == pytest.approx(0.787, abs=5e-4)
    assert value[("allenai/OLMo-1B@step738000", "socialiqa", "few_shot")] == pytest.approx(0.101, abs=5e-4)
    meta = folder.metadata
    assert meta["few_shot_only"] is False and meta["data_levels"] == 1
    assert "not identified" in meta["note"]
    assert any("main" in n for n in meta["notes"]) and any("cross-task" in n for n in meta["notes"])


def test_amuro_item_counts_agree_with_the_published_std(amuro):
    """The assumed split sizes match the source's std column (sqrt(p(1-p)/n)) within 10% for the
    classification tasks whose std behaves binomially (mnli, paws)."""
    raw = pl.read_csv(shared("amuro_char", "all_perf_table.csv"))
    for task in ("mnli_matched", "mnli_mismatched", "paws"):
        rows = raw.filter(pl.col("eval dataset") == task, pl.col("std") > 0)
        n = (rows["Performance"] * (1 - rows["Performance"]) / rows["std"] ** 2).median()
        assert abs(n / AMURO_TASKS[task].n_items - 1) < 0.1, (task, n)


def test_amuro_loader_and_ground_truth(amuro):
    folder = load_results(amuro)
    found = {}
    for task in folder.tasks:
        data = TaskData.from_folder(folder, task)
        assert data.n_checkpoints == len(AMURO_STEPS) and data.has_finetune
        assert data.data_levels == [FINETUNE_TASKS[task.split("_")[0]][0]]  # one data level only
        found[task] = fit_ground_truth(data)
    # the base model never leaves chance on MNLI or PAWS (the data README's point)
    for task in ("mnli_matched", "mnli_mismatched", "paws"):
        assert not found[task].emerged and found[task].elbow_loss is None, (task, found[task].reason)
    # socialiqa base creeps up from 0.02 to 0.10, below its 1/3 chance: no located elbow
    assert found["socialiqa"].elbow_loss is None


def test_amuro_cli_end_to_end(tmp_path, monkeypatch, capsys):
    source = shared("amuro_char")
    code, _, err = run_cli(monkeypatch, capsys, "import", "amuro-char", source, "--out", tmp_path / "none")
    assert_one_line_error(code, err, "allenai/OLMo-1B@step", "has no pretrain_loss", "--loss-proxy chinchilla")
    assert not (tmp_path / "none" / "results.parquet").exists()
    code, out, err = run_cli(monkeypatch, capsys, "import", "amuro-char", source, "--out", tmp_path / "a",
                             "--loss-proxy", "chinchilla")
    assert code == 0, err
    assert "7 checkpoints" in out and "56" in out
    folder = load_results(tmp_path / "a")
    assert folder.metadata["import"]["format"] == "amuro-char"
    assert len({m["generation"] for m in _table_metadata(tmp_path / "a")}) == 1  # one write
    # a user loss table replaces the proxy, labelled as such
    table = tmp_path / "losses.csv"
    table.write_text("checkpoint,pretrain_loss\n" + "".join(
        f"allenai/OLMo-1B@step{s},{3.0 - i * 0.1}\n" for i, s in enumerate(AMURO_STEPS)))
    code, _, err = run_cli(monkeypatch, capsys, "import", "amuro-char", source, "--out", tmp_path / "b",
                           "--checkpoints", table, "--task", "paws")
    assert code == 0, err
    folder = load_results(tmp_path / "b")
    assert folder.tasks == ["paws"] and folder.checkpoints["pretrain_loss_source"].str.starts_with("user table").all()
    # other shot counts: 2-shot has base rows only at this source (finetuned models were scored 4-shot)
    code, _, err = run_cli(monkeypatch, capsys, "import", "amuro-char", source, "--out", tmp_path / "c",
                           "--loss-proxy", "chinchilla", "--num-fewshot", "5")
    assert_one_line_error(code, err, "all_perf_table.csv", "no rows evaluated with 5 shots")


def _table_metadata(folder: Path) -> list[dict]:
    import json

    import pyarrow.parquet as pq
    metas = []
    for name in ("checkpoints.parquet", "results.parquet"):
        raw = pq.read_schema(folder / name).metadata[b"emergence"]
        metas.append(json.loads(raw))
    return metas


def test_amuro_bad_input_gives_one_line_errors(tmp_path, monkeypatch, capsys):
    source = shared("amuro_char", "all_perf_table.csv")
    cut = truncated_copy(source, tmp_path / "all_perf_table.csv")
    code, _, err = run_cli(monkeypatch, capsys, "import", "amuro-char", tmp_path, "--out", tmp_path / "o",
                           "--loss-proxy", "chinchilla")
    assert_one_line_error(code, err, str(cut), "line", "cut short")

    text = source.read_text().splitlines()
    header, rows = text[0], text[1:]
    target = next(i for i, r in enumerate(rows) if "olmo1b_hf_ckpt18000_paws" in r and ",paws," in r)
    bad = rows.copy()
    fields = bad[target].split(",")
    fields[3] = "1.7"
    bad[target] = ",".join(fields)
    (tmp_path / "all_perf_table.csv").write_text("\n".join([header, *bad]) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "import", "amuro-char", tmp_path / "all_perf_table.csv",
                           "--out", tmp_path / "o", "--loss-proxy", "chinchilla")
    assert_one_line_error(code, err, "all_perf_table.csv", f"line {target + 2}", "'Performance'", "1.7")

    fields[3] = "n/a"
    bad[target] = ",".join(fields)
    (tmp_path / "all_perf_table.csv").write_text("\n".join([header, *bad]) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "import", "amuro-char", tmp_path, "--out", tmp_path / "o",
                           "--loss-proxy", "chinchilla")
    assert_one_line_error(code, err, "all_perf_table.csv", "'Performance'", "'n/a' is not a number")

    (tmp_path / "all_perf_table.csv").write_text(header.replace("eval dataset", "dataset") + "\n" + rows[0] + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "import", "amuro-char", tmp_path, "--out", tmp_path / "o")
    assert_one_line_error(code, err, "all_perf_table.csv", "missing column 'eval dataset'")

    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "import", "amuro-char", tmp_path / "empty", "--out", tmp_path / "o")
    assert_one_line_error(code, err, "no all_perf_table.csv")
    assert not (tmp_path / "o" / "results.parquet").exists()


# --------------------------------------------------------------------------- Pythia arithmetic


@pytest.fixture(scope="module")
def arithmetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("arith")
    import_results("pythia-arithmetic", shared("pythia", "term_frequency_arithmetic"), out,
                   ImportOptions(loss_proxy="chinchilla", overwrite=True))
    return out


def test_arithmetic_rows_tasks_and_checkpoints(arithmetic):
    folder = load_results(arithmetic)
    expected = sorted(f"arith_{op}_k{k}" for op in ("add", "mul") for k in SHOTS)
    assert folder.tasks == expected
    assert folder.checkpoints.height == len(ARITH_MODELS) * len(ARITH_STEPS)
    assert folder.results.height == len(ARITH_MODELS) * len(ARITH_STEPS) * len(expected)
    assert set(folder.results["setting"]) == {"few_shot"} and folder.metadata["few_shot_only"] is True
    assert set(folder.checkpoints["family"]) == {"pythia-deduped"}
    row = folder.checkpoints.filter(pl.col("checkpoint") == "EleutherAI/pythia-125m-deduped@step143000").row(0, named=True)
    assert row["params"] == PYTHIA_PARAMS["160m"] and row["tokens"] == 143000 * 2_097_152
    assert folder.checkpoints["pretrain_loss_source"].str.starts_with("proxy chinchilla").all()
    # the shot count is in the task name and in num_fewshot
    shots = folder.results.select(pl.col("task").str.extract(r"_k(\d+)$").cast(pl.Int64), "num_fewshot")
    assert (shots["task"] == shots["num_fewshot"]).all()
    assert set(folder.results["n_items"]) == {5000} and set(folder.results["chance"]) == {0.0}
    # the aggregate is the mean over the 100 operand tasks, as in the data README's table
    raw = pl.read_csv(shared("pythia", "term_frequency_arithmetic", "pythia-13b-deduped_term_frquency_all_shots.csv"))
    want = raw.filter(pl.col("checkpoint") == 143000, pl.col("fewshot") == 16,
                      pl.col("task").str.contains("addition"))["acc"].mean()
    got = folder.results.filter(pl.col("checkpoint") == "EleutherAI/pythia-13b-deduped@step143000",
                                pl.col("task") == "arith_add_k16")["value"].item()
    assert got == pytest.approx(want) and got == pytest.approx(0.87, abs=0.005)


def test_arithmetic_item_counts_are_exact_from_stderr():
    folder = shared("pythia", "term_frequency_arithmetic")
    raw = pl.concat([pl.read_csv(f) for f in sorted(folder.glob("*.csv"))])
    usable = raw.filter(pl.col("acc") > 0, pl.col("acc") < 1)
    n = usable["acc"] * (1 - usable["acc"]) / usable["acc_stderr"] ** 2 + 1
    assert np.allclose(n.to_numpy(), 50, atol=1e-6)
    assert usable["task"].n_unique() == 200  # every operand task is covered


def test_arithmetic_loader_and_ground_truth(arithmetic):
    folder = load_results(arithmetic)
    found = {}
    for task in folder.tasks:
        data = TaskData.from_folder(folder, task)
        assert data.n_checkpoints == 42 and not data.has_finetune
        found[task] = fit_ground_truth(data)
    for k in (2, 4, 8, 16):  # addition with examples leaves 0 at the 2.8b-and-up models
        gt = found[f"arith_add_k{k}"]
        assert gt.emerged and gt.elbow_loss is not None, (k, gt.reason)
        data = TaskData.from_folder(folder, f"arith_add_k{k}")
        assert data.ckpt_loss.min() < gt.elbow_loss < data.ckpt_loss.max()
    assert not found["arith_add_k0"].emerged  # 0-shot addition stays near 0 (at most 0.04)


def test_arithmetic_options(tmp_path):
    source = shared("pythia")
    one = import_results("pythia-arithmetic", source, tmp_path / "a",
                         ImportOptions(loss_proxy="chinchilla", num_fewshot=8, keep_subtasks=True))
    assert len(one.tasks) == 200 and all(t.endswith("_k8") for t in one.tasks)
    assert "arith_mul_x99_k8" in one.tasks and set(one.results["n_items"]) == {50}
    two = import_results("pythia-arithmetic", source / "term_frequency_arithmetic" /
                         "pythia-125m-deduped_term_frquency_all_shots.csv", tmp_path / "b",
                         ImportOptions(loss_proxy="chinchilla", only_tasks=("arith_mul_k16",)))
    assert two.tasks == ["arith_mul_k16"] and two.checkpoints.height == len(ARITH_STEPS)


def test_arithmetic_cli_end_to_end(tmp_path, monkeypatch, capsys):
    source = shared("pythia", "term_frequency_arithmetic")
    code, _, err = run_cli(monkeypatch, capsys, "import", "pythia-arithmetic", source, "--out", tmp_path / "none")
    assert_one_line_error(code, err, "EleutherAI/pythia-", "has no pretrain_loss", "--loss-proxy chinchilla")
    code, out, err = run_cli(monkeypatch, capsys, "import", "pythia-arithmetic", source, "--out", tmp_path / "a",
                             "--loss-proxy", "chinchilla")
    assert code == 0, err
    assert "42 checkpoints" in out and "420" in out and "10 tasks" in out
    assert load_results(tmp_path / "a").metadata["import"]["format"] == "pythia-arithmetic"
    code, _, err = run_cli(monkeypatch, capsys, "import", "pythia-arithmetic", source, "--out", tmp_path / "b",
                           "--loss-proxy", "chinchilla", "--num-fewshot", "5")
    assert_one_line_error(code, err, "no rows with fewshot = 5", "[0, 2, 4, 8, 16]")
    code, _, err = run_cli(monkeypatch, capsys, "import", "pythia-arithmetic", source, "--out", tmp_path / "a",
                           "--loss-proxy", "chinchilla")
    assert_one_line_error(code, err, "--overwrite")


def test_arithmetic_bad_input_gives_one_line_errors(tmp_path, monkeypatch, capsys):
    name = "pythia-350m-deduped_term_frquency_all_shots.csv"
    source = shared("pythia", "term_frequency_arithmetic", name)
    folder = tmp_path / "src"
    folder.mkdir()
    cut = truncated_copy(source, folder / name)
    code, _, err = run_cli(monkeypatch, capsys, "import", "pythia-arithmetic", folder, "--out", tmp_path / "o",
                           "--loss-proxy", "chinchilla")
    assert_one_line_error(code, err, str(cut), "line", "cut short")

    lines = source.read_text().splitlines()
    for line, (column, value), fragment in [
        (5, (4, "1.2"), "accuracy 1.2 outside [0, 1]"),
        (7, (2, "num_reasoning_arithmetic_division_3"), "is not num_reasoning_arithmetic"),
        (9, (0, "EleutherAI/pythia-999m-deduped"), "unknown Pythia model"),
        (11, (3, "two"), "'two' is not a number"),
    ]:
        bad = lines.copy()
        fields = bad[line - 1].split(",")
        fields[column] = value
        bad[line - 1] = ",".join(fields)
        (folder / name).write_text("\n".join(bad) + "\n")
        code, _, err = run_cli(monkeypatch, capsys, "import", "pythia-arithmetic", folder, "--out", tmp_path / "o",
                               "--loss-proxy", "chinchilla")
        column_name = lines[0].split(",")[column]
        assert_one_line_error(code, err, name, f"line {line}", f"'{column_name}'", fragment)

    (folder / name).unlink()
    code, _, err = run_cli(monkeypatch, capsys, "import", "pythia-arithmetic", folder, "--out", tmp_path / "o")
    assert_one_line_error(code, err, "no *_term_frquency_all_shots.csv")
    shutil.rmtree(folder)
    assert not (tmp_path / "o" / "results.parquet").exists()
