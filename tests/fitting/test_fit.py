"""Maximum-likelihood fit: parameter recovery, determinism, convergence reporting, ground truth."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from emergence.errors import FitError
from fitting import law
from fitting.compare import compare_laws, elbow_extrapolation
from fitting.data import TaskData
from fitting.fit import EmergenceLawFit
from fitting.ground_truth import curve_elbow, fit_ground_truth
from fitting.predict import FitConfig, predict_data
from fitting.simulate import DEFAULT_TASKS, Design, TaskTruth, simulate

# Low noise: 20,000 items per evaluation and no subset jitter; the default 12-checkpoint ladder,
# 4 data levels x 2 subsets, 4 tasks whose few-shot elbows lie inside the ladder.
LOW_NOISE = replace(Design(), n_items=20_000, subset_sd=0.0)
TRUTH = {t.name: t.emergence_loss for t in DEFAULT_TASKS}


@pytest.fixture(scope="module")
def low_noise():
    return simulate(LOW_NOISE, seed=3)


@pytest.fixture(scope="module")
def default_data(simulated):
    return simulated


@pytest.mark.parametrize("task", sorted(TRUTH))
def test_recovers_emergence_loss_from_all_checkpoints(low_noise, task):
    """The fit sees every checkpoint (few-shot and finetune rows): within 0.03 nats."""
    model = EmergenceLawFit().fit(TaskData.from_folder(low_noise, task))
    assert model.converged_
    assert abs(model.emergence_loss_ - TRUTH[task]) < 0.03


@pytest.mark.parametrize("task", sorted(TRUTH))
def test_recovers_emergence_loss_from_pre_emergence_checkpoints(low_noise, task):
    """The real use: only checkpoints whose few-shot accuracy is still at chance (loss above
    the true elbow). The prediction is then an extrapolation of the law: within 0.03 nats."""
    data = TaskData.from_folder(low_noise, task)
    pre = data.select_checkpoints(data.ckpt_loss > TRUTH[task])
    assert pre.n_checkpoints < data.n_checkpoints
    model = EmergenceLawFit().fit(pre)
    assert model.converged_
    assert abs(model.emergence_loss_ - TRUTH[task]) < 0.03


def test_gaussian_likelihood_also_recovers(low_noise):
    data = TaskData.from_folder(low_noise, "sim_mmlu")
    model = EmergenceLawFit(likelihood="gaussian").fit(data)
    assert model.converged_ and abs(model.emergence_loss_ - TRUTH["sim_mmlu"]) < 0.03


def test_fit_is_deterministic_and_beats_the_truth_likelihood(default_data):
    data = TaskData.from_folder(default_data, "sim_csqa")
    a = EmergenceLawFit(seed=1).fit(data)
    b = EmergenceLawFit(seed=1).fit(data)
    np.testing.assert_array_equal(a.theta_, b.theta_)
    truth = next(t for t in DEFAULT_TASKS if t.name == "sim_csqa")
    assert a.loglik_ >= a.loglik(data, truth.theta) - 1e-6  # the MLE is at least as likely


def test_non_convergence_is_reported_not_hidden(default_data):
    data = TaskData.from_folder(default_data, "sim_mmlu")
    model = EmergenceLawFit(n_starts=2, max_iter=1).fit(data)
    assert not model.converged_
    assert model.emergence_loss_ is None
    assert "did not converge" in model.message_
    record = predict_data(data, FitConfig(n_boot=10, n_starts=2), simulated=True)
    assert record.converged  # the normal budget converges
    # and the pipeline turns a non-converged fit into a null prediction with a note
    from fitting import predict

    original = predict.EmergenceLawFit

    class Tiny(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "max_iter": 1, "n_starts": 2})

    predict.EmergenceLawFit = Tiny
    try:
        bad = predict_data(data, FitConfig(n_boot=10)).to_json()
    finally:
        predict.EmergenceLawFit = original
    assert bad["converged"] is False and bad["emergence_loss"] is None and "not converge" in bad["note"]


def test_ground_truth_found_when_emerged_and_null_when_not():
    never = TaskTruth("never", chance=0.25, A=1.0, k=0.06, alpha=1.0, C=1.9)  # elbow below every checkpoint
    folder = simulate(replace(LOW_NOISE, tasks=(DEFAULT_TASKS[0], never)), seed=2)
    emerged = fit_ground_truth(TaskData.from_folder(folder, "sim_mmlu"))
    assert emerged.emerged and abs(emerged.elbow_loss - TRUTH["sim_mmlu"]) < 0.03
    flat = fit_ground_truth(TaskData.from_folder(folder, "never"))
    assert not flat.emerged and flat.elbow_loss is None
    assert "not left" in flat.reason


def test_ground_truth_not_located_when_above_base_from_the_start():
    early = TaskTruth("early", chance=0.25, A=0.4, k=0.06, alpha=1.0, C=3.6)  # elbow above every loss
    data = TaskData.from_folder(simulate(replace(LOW_NOISE, tasks=(early,)), seed=1), "early")
    gt = fit_ground_truth(data)
    assert gt.emerged and gt.elbow_loss is None and "before the weakest checkpoint" in gt.reason


def test_ground_truth_false_positive_rate_is_small():
    """At chance everywhere (no emergence), 30 datasets: the test claims an elbow at most once."""
    never = TaskTruth("never", chance=0.25, A=1.0, k=0.06, alpha=1.0, C=1.5)
    design = replace(Design(), tasks=(never,), data_levels=(16,), subset_seeds=(1,), n_items=300)
    claims = sum(fit_ground_truth(TaskData.from_folder(simulate(design, seed=s), "never")).emerged for s in range(30))
    assert claims <= 1


def test_few_shot_only_data_is_refused_by_the_estimator_and_explained_by_the_pipeline(default_data):
    data = TaskData.from_folder(default_data, "sim_mmlu").few_shot_only()
    with pytest.raises(FitError, match="only few-shot"):
        EmergenceLawFit().fit(data)
    record = predict_data(data, FitConfig(n_boot=50)).to_json()
    assert record["emergence_loss"] is None and record["converged"] is False
    assert "few-shot results only" in record["note"]
    assert record["ground_truth_loss"] is not None and record["ground_truth_flops"] is not None


def test_subsetting(default_data):
    data = TaskData.from_folder(default_data, "sim_cola")
    assert data.n_checkpoints == 12 and data.data_levels == [16, 64, 256, 1024] and data.subset_seeds == [1, 2]
    cut = data.select_max_flops(np.sort(data.ckpt_flops)[5])
    assert cut.n_checkpoints == 6 and cut.max_flops == np.sort(data.ckpt_flops)[5]
    assert cut.drop_levels([16]).data_levels == [64, 256, 1024]
    assert cut.select_levels([16]).data_levels == [16]
    one = data.select_subset_seeds([2])
    assert one.subset_seeds == [2] and one.few_shot.sum() == data.few_shot.sum()
    named = data.select_checkpoints(list(data.checkpoints[:3]))
    assert named.checkpoints == data.checkpoints[:3]
    assert np.all(named.ckpt_loss[named.ckpt] == named.loss)
    with pytest.raises(FitError, match="no results for checkpoint"):
        data.select_checkpoints(["nope"])


def test_unknown_task_suggests_near_match(default_data):
    with pytest.raises(FitError, match="did you mean sim_mmlu"):
        TaskData.from_folder(default_data, "sim_mmmlu")


def test_compare_laws_prefers_the_generating_form():
    """Data drawn from the power-law elbow: held-out likelihood ranks power above log_power."""
    truth = TaskTruth("p", chance=0.25, A=1.0, k=0.027, alpha=0.35, C=2.30, spec=law.LawSpec(elbow="power"))
    design = replace(Design(), tasks=(truth,), data_levels=(2, 8, 64, 512, 4096), n_items=5000, subset_sd=0.0)
    data = TaskData.from_folder(simulate(design, seed=5), "p")
    forms = {"log_power": law.LAW_FORMS["log_power"], "power": law.LAW_FORMS["power"]}
    ranking = compare_laws(data, forms, n_starts=6)
    assert ranking[0].form == "power" and ranking[1].delta < 0


@pytest.mark.parametrize("task", DEFAULT_TASKS, ids=lambda t: t.name)
def test_left_out_curves_elbows_are_predicted_by_the_generating_law(low_noise, task):
    """Each curve's own hinge sits on the true law's elbow, and the law fitted without that
    curve predicts it: the finetuned curves within 0.02 nats, the few-shot one (a fit to the
    finetune rows alone) within 0.06."""
    data = TaskData.from_folder(low_noise, task.name)
    levels = [0, *data.data_levels]
    truths = {level: curve_elbow(data, level, rule="hinge") for level in levels}  # a hinge law's own elbow
    for level, own in truths.items():
        d = task.spec.d0 if level == 0 else level
        assert own == pytest.approx(float(law.elbow(d, task.k, task.alpha, task.C, task.spec.elbow)), abs=0.01)
    errors = elbow_extrapolation(data, law.LAW_FORMS["log_power"], truths, n_starts=6)
    assert sorted(errors) == levels
    assert max(abs(errors[level]) for level in levels[1:]) < 0.02 and abs(errors[0]) < 0.06


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_elbow_extrapolation_prefers_the_generating_form(seed):
    """Power-law elbows over four decades of D: the power form extrapolates the left-out elbows
    better than the log-power form, on every seed (measured RMSE 0.007-0.016 against 0.031-0.040)."""
    from fitting.compare import LawComparison

    truth = TaskTruth("p", chance=0.25, A=1.0, k=0.027, alpha=0.35, C=2.30, spec=law.LawSpec(elbow="power"))
    design = replace(Design(), tasks=(truth,), data_levels=(2, 8, 64, 512, 4096), n_items=5000, subset_sd=0.0)
    data = TaskData.from_folder(simulate(design, seed=seed), "p")
    truths = {level: curve_elbow(data, level, rule="hinge") for level in [0, *data.data_levels]}
    rmse = {form: LawComparison(form, 0.0, 0, 0, elbow_errors=elbow_extrapolation(
        data, law.LAW_FORMS[form], truths, n_starts=6)).elbow_rmse for form in ("power", "log_power")}
    assert rmse["power"] < rmse["log_power"]


def test_a_left_out_elbow_the_rest_cannot_locate_is_unlocated_not_a_number():
    """Nothing rises anywhere: a fit to the other curves is "no rise", so whatever its C is, it
    is not a prediction of the left-out elbow."""
    from fitting.compare import LawComparison

    flat = TaskTruth("flat", chance=0.25, A=0.5, k=0.001, alpha=1.0, C=1.0)  # elbows far below the data
    data = TaskData.from_folder(simulate(replace(Design(), tasks=(flat,)), seed=0), "flat")
    errors = elbow_extrapolation(data, law.LAW_FORMS["log_power"], {0: 2.0, 16: 2.0}, n_starts=4)
    assert errors == {0: None, 16: None}
    comparison = LawComparison("log_power", 0.0, 0, 0, elbow_errors=errors)
    assert comparison.elbow_rmse is None and comparison.few_shot_error is None
    assert comparison.elbow_unlocated == [0, 16] and comparison.to_json()["elbow_errors"] == {"0": None, "16": None}


def test_thin_task_gives_a_record_in_predict_task_and_raises_in_predict_data(default_data):
    import polars as pl

    from fitting.predict import predict_task
    from fitting.schema import ResultsFolder

    keep = default_data.checkpoints["checkpoint"].to_list()[:2]
    results = default_data.results.filter((pl.col("task") != "sim_mmlu") | pl.col("checkpoint").is_in(keep))
    folder = ResultsFolder(default_data.checkpoints, results, None, default_data.metadata)
    record = predict_task(folder, "sim_mmlu", FitConfig(n_boot=0)).to_json()
    assert record["emergence_loss"] is None and "need >= 3 checkpoints" in record["note"]
    with pytest.raises(FitError, match="too few"):
        predict_data(TaskData.from_folder(folder, "sim_mmlu"), FitConfig(n_boot=0))


def test_singular_gauss_newton_step_is_damped_not_a_crash():
    """Regression (sim_gsm8k, 6 checkpoints raised LinAlgError): a NaN curvature, zeroed by
    nan_to_num, made the damped system singular and np.linalg.solve raised for the whole batch.
    Now that member gets a least-squares (or zero) step and the others are unaffected."""
    from fitting.optimise import _damped_step

    class Box:
        lower, upper = np.full(2, -10.0), np.full(2, 10.0)

    hess = np.stack([np.array([[np.nan, 0.0], [0.0, 1.0]]), np.eye(2)])
    with np.errstate(invalid="ignore"):
        step, _ = _damped_step(np.zeros((2, 2)), np.ones((2, 2)), hess, np.full(2, 1e-3), Box, np.eye(2))
    assert np.isfinite(step).all()
    np.testing.assert_allclose(step[1], 1 / (1 + 1e-3))  # the healthy member: the usual LM step


def test_lm_batch_survives_a_member_with_nan_jacobian(default_data, monkeypatch):
    """One batch member whose Jacobian is NaN (at every iteration) does not stop the others."""
    from fitting import optimise as fit_mod

    data = TaskData.from_folder(default_data, "sim_gsm8k")
    model = EmergenceLawFit(n_starts=4).fit(data)
    problem = fit_mod.make_problem(model.spec, data, "binomial")
    theta0 = np.repeat(model.theta_[None], 3, 0) * np.array([[1.0], [1.05], [0.95]])
    clean, f_clean, ok_clean, _ = fit_mod.lm_batch(problem, theta0)
    real = fit_mod.performance_jacobian

    def poisoned(spec, theta, *args):
        perf, jac = real(spec, theta, *args)
        jac = jac.copy()
        if len(theta) == 3:  # the first member while all three are active
            jac[0, :, 0] = np.nan
        return perf, jac

    monkeypatch.setattr(fit_mod, "performance_jacobian", poisoned)
    with np.errstate(invalid="ignore"):
        theta, f, ok, _ = fit_mod.lm_batch(problem, theta0)
    assert np.isfinite(theta).all() and np.isfinite(f).all()
    assert f[0] <= problem.objective(theta0[:1])[0] + 1e-9  # never worse than its start


# --------------------------------------------------------------------------- pinned predictions

# Its finetuned curves put the few-shot elbow at 2.9 nats, inside the ladder (losses 3.26 -> 2.23).
STEEP = TaskTruth("t_steep", chance=0.25, A=0.5, k=0.08, alpha=0.9, C=2.9)


def _at_chance_few_shot(folder, seed: int):
    """The same folder with every few-shot result redrawn at chance: the finetuned curves now
    point at an elbow the few-shot results forbid (as before emergence, when they disagree)."""
    import polars as pl
    from fitting.schema import ResultsFolder

    rng = np.random.default_rng(seed)
    chance = pl.lit(rng.binomial(folder.results["n_items"][0], 0.25, folder.results.height) / folder.results["n_items"][0])
    res = folder.results.with_columns(
        pl.when(pl.col("setting") == "few_shot").then(chance).otherwise(pl.col("value")).alias("value"))
    return ResultsFolder(folder.checkpoints, res, None, folder.metadata)


def test_predictions_the_few_shot_results_hold_are_marked_pinned_and_located_ones_are_not():
    """Over 8 seeds: with the law's own few-shot results no prediction is pinned; with few-shot
    results at chance the maximum sits on the lowest checkpoint (2.23 nats) or the search edge.
    Measured: 7 of 8 on the lowest checkpoint (within 0.05 nats), 1 on the search edge."""
    config = FitConfig(n_boot=0, profile=False)
    located, held = [], []
    for seed in range(8):
        folder = simulate(replace(Design(), tasks=(STEEP,)), seed=seed)
        located.append(predict_data(TaskData.from_folder(folder, "t_steep"), config))
        data = TaskData.from_folder(_at_chance_few_shot(folder, seed), "t_steep")
        held.append((predict_data(data, config), float(data.ckpt_loss.min())))
    assert all(p.pinned is None and abs(p.emergence_loss - 2.9) < 0.1 for p in located)
    assert all(p.pinned is not None for p, _ in held)
    on_lowest = [p for p, low in held if p.pinned == "lowest checkpoint"]
    assert len(on_lowest) >= 6 and all(abs(p.emergence_loss - low) <= 0.05 for p, low in held if p in on_lowest)
    assert "not before this checkpoint" in on_lowest[0].note and on_lowest[0].to_json()["pinned"] == "lowest checkpoint"


def test_a_few_shot_elbow_on_its_search_box_is_pinned_there(default_data):
    from fitting.fit import pinned_edge
    from fitting.optimise import bounds

    data = TaskData.from_folder(default_data, "sim_mmlu")
    model = EmergenceLawFit(n_starts=8).fit(data)
    lo, hi = bounds(model.spec, data, "binomial")
    c = model.spec.param_names.index("C")
    assert pinned_edge(model.spec, data, "binomial", model.theta_) is None
    names = model.spec.param_names
    k, alpha = names.index("k"), names.index("alpha")
    x_max = np.log(max(data.data_levels))
    for edge in (lo[c], hi[c]):
        theta = model.theta_.copy()
        theta[c] = edge
        # keep the largest level's elbow inside the data, so that the finetuned curves rise
        theta[k] = (float(data.loss.mean()) - edge) / x_max ** theta[alpha] if edge == lo[c] else theta[k]
        assert pinned_edge(model.spec, data, "binomial", theta) == "search bound"


def test_a_fit_in_which_nothing_rises_is_marked_no_rise(default_data):
    """With the elbow below every loss at every data level, no row rises and any C fits as
    well: the prediction is "no rise", whatever else it sits on."""
    from fitting.fit import fitted_rise, pinned_edge

    data = TaskData.from_folder(default_data, "sim_mmlu")
    model = EmergenceLawFit(n_starts=8).fit(data)
    assert fitted_rise(model.spec, data, model.theta_) > 0.3  # the full fit sees the emergence
    theta = model.theta_.copy()
    names = model.spec.param_names
    theta[names.index("C")] = float(data.loss.min()) - 1.0
    theta[names.index("k")] = 0.0
    assert fitted_rise(model.spec, data, theta) == 0.0
    assert pinned_edge(model.spec, data, "binomial", theta) == "no rise"
    theta[names.index("C")] = float(data.loss.min()) + 0.01  # a rise of A x 0.01 nats: below 0.05
    assert pinned_edge(model.spec, data, "binomial", theta) == "no rise"
    assert pinned_edge(model.spec, data, "binomial", theta, min_rise=1e-4) == "lowest checkpoint"


def test_a_law_with_another_d0_recovers_its_few_shot_elbow():
    """D0 is a choice of the law (the paper: it barely matters below ~10x the shots). Data
    simulated with D0 = 8 and fitted with D0 = 8 give back the few-shot elbow E(8) = C."""
    truth = TaskTruth("t_d0", chance=0.25, A=1.0, k=0.06, alpha=1.0, C=2.6, spec=law.LawSpec(d0=8.0))
    folder = simulate(replace(LOW_NOISE, tasks=(truth,)), seed=1)
    pred = predict_data(TaskData.from_folder(folder, "t_d0"), FitConfig(law=law.LawSpec(d0=8.0), n_boot=0))
    assert pred.law == "log_power+relu+d0=8"
    assert pred.emergence_loss == pytest.approx(2.6, abs=0.05)
    assert pred.profile is not None and pred.profile.low <= 2.6 <= pred.profile.high


@pytest.mark.parametrize("d0", [1.0, 20.0])
def test_the_prediction_stays_in_its_search_box_for_any_d0(d0):
    """The search box bounds C, which is the prediction for every D0 (fitting.law). An invariant
    on simulated data (these fits stayed in the box before the anchor too); the regression test
    of the 813-nat fit is tests/fitting/test_shipped_microladder.py::test_a_larger_d0_keeps_the_prediction_inside_the_search_box."""
    from fitting.optimise import bounds

    config = FitConfig(law=law.LawSpec(d0=d0), n_boot=0, profile=False)
    for seed in range(3):
        folder = simulate(replace(Design(), tasks=(STEEP,)), seed=seed)
        data = TaskData.from_folder(_at_chance_few_shot(folder, seed), "t_steep")
        lo, hi = bounds(config.spec, data, "binomial")
        c = config.spec.param_names.index("C")
        pred = predict_data(data, config)
        assert lo[c] - 1e-9 <= pred.emergence_loss <= hi[c] + 1e-9
