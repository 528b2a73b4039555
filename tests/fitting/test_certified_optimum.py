"""A certified optimum (issue 20): no point the profile or the bootstrap visits beats the reported
maximum-likelihood fit, and a finetuning design that cannot identify E(D) gets no prediction."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fitting.data import TaskData
from fitting.fit import EmergenceLawFit
from fitting.law import LAW_FORMS
from fitting.predict import CERTIFY_ROUNDS, FitConfig, predict_data
from fitting.schema import load_results
from fitting.simulate import DEFAULT_TASKS, Design, simulate
from fitting.uncertainty import profile_interval

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
MICROLADDER = Path(__file__).resolve().parents[2] / "datasets_cache" / "microladder"


def best_profile_loglik(data: TaskData, record) -> float:
    """The highest log-likelihood among the profile's pinned fits of a prediction."""
    model = EmergenceLawFit(FitConfig().spec if record.law == "log_power" else LAW_FORMS[record.law])
    model.likelihood = record.likelihood
    model.theta_ = np.array(list(record.params.values()))
    return max(model.loglik(data, theta) for theta in record.profile.theta)


def assert_certified(data: TaskData, config: FitConfig) -> None:
    record = predict_data(data, config)
    assert record.converged and record.profile is not None
    assert best_profile_loglik(data, record) <= record.loglik + 1e-6
    assert record.profile.low - 1e-6 <= record.emergence_loss <= record.profile.high + 1e-6


@pytest.mark.parametrize("seed", [0, 1])
def test_simulated_fits_are_never_beaten_by_their_profile(seed):
    folder = simulate(replace(Design(), tasks=DEFAULT_TASKS[:2]), seed=seed)
    for task in folder.tasks:
        assert_certified(TaskData.from_folder(folder, task), FitConfig(n_boot=50))


@pytest.mark.parametrize("law", ["log_power", "no_delta"])
def test_microladder_fits_are_never_beaten_by_their_profile(law):
    folder = load_results(MICROLADDER)
    data = TaskData.from_folder(folder, "ml_topic")
    for cut in (data, data.select_checkpoints(data.ckpt_loss >= np.quantile(data.ckpt_loss, 0.5))):
        assert_certified(cut, FitConfig(law=law, n_boot=50))


@pytest.fixture(scope="module")
def paws(tmp_path_factory):
    from fitting.importers import ImportOptions, import_results

    source = SHARED / "amuro_char"
    if not source.exists():
        pytest.skip(f"{source} absent (third-party data beside the checkout)")
    out = tmp_path_factory.mktemp("amuro")
    import_results("amuro-char", source, out, ImportOptions(loss_proxy="chinchilla", overwrite=True))
    return TaskData.from_folder(load_results(out), "paws")


@pytest.mark.parametrize("law", ["log_power", "no_delta"])
def test_a_profile_point_that_beats_the_multi_start_fit_replaces_it(paws, law):
    """The issue's case: real OLMo-1B base and finetuned PAWS results. The multi-start fit stops at
    C = 2.06-2.15 while a pinned profile fit near 2.17 is 2.4 log-likelihood units better; the
    refit from it lands inside the profile interval."""
    model = EmergenceLawFit(LAW_FORMS[law]).fit(paws)
    prof = profile_interval(paws, model)
    before = model.loglik_
    assert max(model.loglik(paws, t) for t in prof.theta) > before + 1.0  # the failure being fixed
    gain = model.refit_from(paws, prof.theta)
    assert gain > 1.0 and model.loglik_ == pytest.approx(before + gain)
    for _ in range(CERTIFY_ROUNDS - 1):  # as the pipeline does: until no profile point is better
        again = profile_interval(paws, model)
        if model.refit_from(paws, again.theta) == 0.0:
            break
    assert max(model.loglik(paws, t) for t in again.theta) <= model.loglik_ + 1e-6
    assert again.low <= model.emergence_loss_ <= again.high


def test_one_data_level_gives_a_note_and_no_prediction(paws):
    record = predict_data(paws, FitConfig(n_boot=0))
    assert record.emergence_loss is None and record.emergence_loss_pct == {}
    assert "E(D) is not identified from one finetuning data level" in record.note
    held = predict_data(paws, FitConfig(n_boot=0, fixed=(("k", 0.05), ("alpha", 1.0))))
    assert held.converged and held.emergence_loss is not None
    assert held.params["k"] == 0.05 and held.params["alpha"] == 1.0
    assert held.law == "log_power+k=0.05+alpha=1"


def test_levels_too_close_together_are_not_enough():
    folder = simulate(replace(Design(), tasks=DEFAULT_TASKS[:1], data_levels=(100, 150)), seed=0)
    record = predict_data(TaskData.from_folder(folder, DEFAULT_TASKS[0].name), FitConfig(n_boot=0))
    assert record.emergence_loss is None and "levels [100, 150] spanning less than a factor 2" in record.note


def test_a_fit_improved_in_every_round_still_gets_its_intervals(monkeypatch):
    """Each round may restart the fit; after CERTIFY_ROUNDS the last intervals are kept as they come
    (a scaling benchmark met a fit improved in all three rounds, which once ended the backtest)."""
    calls = []
    monkeypatch.setattr(EmergenceLawFit, "refit_from", lambda self, data, cand, tol=1e-7: calls.append(1) or 0.5)
    folder = simulate(replace(Design(), tasks=DEFAULT_TASKS[:1]), seed=0)
    record = predict_data(TaskData.from_folder(folder, DEFAULT_TASKS[0].name), FitConfig(n_boot=20))
    assert len(calls) == CERTIFY_ROUNDS and record.profile is not None and record.n_boot == 20
    assert "improved by 1.5 log-likelihood units" in record.note
