"""Report (fitting.report, fitting.figures): files written, tables present, offline HTML."""

from __future__ import annotations

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from emergence.cli import app
from fitting import figures
from fitting.backtest import AblationSpec, BacktestConfig, backtest
from fitting.predict import FitConfig
from fitting.report import render_report
from fitting.schema import load_results, write_results
from fitting.simulate import simulate
from tests.designs import COLA, EMERGING, NEVER
PNG = b"\x89PNG\r\n\x1a\n"
CONFIG = BacktestConfig(fit=FitConfig(n_boot=30, n_starts=8), min_checkpoints=9,
                        ablations=AblationSpec(last_k=(4,)))


@pytest.fixture(scope="module")
def written(tmp_path_factory, emerging_and_never_folder):
    """A report of a simulated folder with one emerging and one never-emerging task."""
    folder = load_results(emerging_and_never_folder)
    results = backtest(folder, CONFIG)
    out = tmp_path_factory.mktemp("report")
    return folder, results, render_report(folder, results, CONFIG, out, source="sim/folder")


def test_html_markdown_and_pngs_are_written(written):
    _, _, paths = written
    assert paths.html.is_file() and paths.markdown.is_file()
    names = {p.name for p in paths.figures}
    assert {"fit_t_cola.png", "backtest_t_cola.png", "fit_t_never.png", "backtest_t_never.png",
            "bootstrap_cdf.png"} <= names
    for p in paths.figures:
        assert p.read_bytes().startswith(PNG)


def test_html_is_self_contained_and_has_the_tables(written):
    _, _, paths = written
    page = paths.html.read_text()
    assert page.count('src="data:image/png;base64,') == len(paths.figures)
    assert not re.search(r'(src|href)="(https?:|//|figures/)', page)  # opens offline, alone
    for text in ("SIMULATED DATA", "FLOP multiplier", "coverage", "5–95%", "Ablations",
                 "drop 1 smallest level", "last 4 checkpoints", "Provenance", "sim/folder",
                 "never emerged", "t_cola", "t_never", "cutoff FLOPs", "coverage (profile)", "profile 90%"):
        assert text in page, text


def test_markdown_links_its_figures_and_has_the_tables(written):
    _, _, paths = written
    md = paths.markdown.read_text()
    for link in re.findall(r"\]\((figures/[^)]+\.png)\)", md):
        assert (paths.markdown.parent / link).is_file()
    assert len(re.findall(r"\]\((figures/[^)]+\.png)\)", md)) == len(paths.figures)
    assert "> **SIMULATED DATA" in md
    summary = next(line for line in md.splitlines() if line.startswith("| task |"))
    for col in ("ground truth (nats, 5–95%)", "prediction (nats)", "5–95%", "FLOP multiplier", "coverage"):
        assert col in summary
    assert "| base (no ablation) |" in md and "| metadata: simulated | true |" in md


def test_summary_numbers_match_the_backtest(written):
    _, results, paths = written
    md = paths.markdown.read_text()
    cola = next(r for r in results if r.task == COLA.name)
    row = next(line for line in md.splitlines() if line.startswith(f"| {COLA.name} |"))
    assert f"{cola.ground_truth_loss:.3f}" in row
    assert f"{cola.main_cutoff.emergence_loss:.3f}" in row
    if cola.flop_multiplier is not None:
        assert f"{cola.flop_multiplier:.2f}×" in row
    never = next(line for line in md.splitlines() if line.startswith(f"| {NEVER.name} |"))
    assert "never emerged" in never


def test_a_pinned_pre_emergence_prediction_is_marked_in_the_summary(written):
    import copy

    from fitting.report import summary_table

    _, results, _ = written
    cola = copy.deepcopy(next(r for r in results if r.task == COLA.name))
    column = summary_table([cola], None).headers.index("pre-emergence prediction (nats)")
    cola.main_cutoff.pinned = None
    assert "pinned" not in summary_table([cola], None).rows[0][column]
    cola.main_cutoff.pinned = "no rise"
    assert summary_table([cola], None).rows[0][column] == f"{cola.main_cutoff.emergence_loss:.3f} (pinned: no rise)"


def test_measured_folder_has_no_simulated_banner(tmp_path):
    sim = simulate(EMERGING, seed=1)
    folder = write_results(tmp_path / "res", sim.checkpoints, sim.results, metadata={"source": "lab run 7"})
    config = BacktestConfig(fit=FitConfig(n_boot=0, n_starts=8, profile=False), min_checkpoints=11)
    paths = render_report(folder, backtest(folder, config), config, tmp_path / "out")
    page = paths.html.read_text()
    assert "SIMULATED" not in page and "simulated data" not in page
    assert "lab run 7" in page and "bootstrap_cdf" not in page  # no resamples: no CDF figure


def test_figures_take_plain_arrays():
    grid = np.linspace(2.2, 3.3, 50)
    curve = figures.Curve("D = 16", np.array([3.0, 2.5]), np.array([0.25, 0.5]), grid, 0.25 + np.maximum(2.8 - grid, 0),
                          held_out=np.array([False, True]))
    few = figures.Curve("few-shot", np.array([3.0, 2.3]), np.array([0.25, 0.3]), grid, np.full(50, 0.25), few_shot=True)
    fig = figures.task_fit_figure("t", [curve, few], chance=0.25, ground_truth=2.4, prediction=(2.45, 2.3, 2.6))
    assert figures.png_bytes(fig).startswith(PNG)
    x = np.array([1e19, 1e20, 1e21])
    fig = figures.backtest_figure("t", x, np.array([4.4, np.nan, 2.41]), np.array([2.0, np.nan, 2.35]),
                                  np.array([5.0, np.nan, 2.5]), ground_truth=2.4, tolerance=0.1,
                                  success=np.array([False, False, True]), post_emergence_flops=5e20)
    assert fig.axes[0].get_ylim()[1] <= 1.0  # the 2-nat miss is drawn on the edge, axis stays readable
    assert figures.png_bytes(fig).startswith(PNG)
    fig = figures.backtest_figure("t", x, np.array([2.9, 2.5, 2.4]), x * 0 + np.nan, x * 0 + np.nan,
                                  ground_truth=None, tolerance=0.1)
    assert "never emerged" in fig.axes[0].get_title()
    fig = figures.cdf_figure({"a": np.r_[np.random.default_rng(0).normal(2.4, 0.02, 300), -3.0]},
                             {"a": 2.41}, {"a": 2.4})
    assert fig.axes[0].get_xlim()[0] > 2.0  # the -3 outlier does not squash the CDF
    assert figures.png_bytes(fig).startswith(PNG)


def test_report_command(tmp_path):
    simulate(EMERGING, seed=2, out=tmp_path / "res")
    runner = CliRunner()
    args = ["report", str(tmp_path / "res"), "--out", str(tmp_path / "out"), "--n-boot", "0",
            "--min-checkpoints", "11", "--no-ablations", "--no-profile"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "index.html").is_file() and (tmp_path / "out" / "report.md").is_file()
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, args[:3] + [str(tmp_path / "file")] + args[4:])
    assert result.exit_code != 0 and "must be a folder" in str(result.exception)
