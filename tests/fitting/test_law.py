"""The emergence law (fitting.law) and its analytic Jacobian (fitting.jacobian.performance_jacobian)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fitting import law
from fitting.ground_truth import few_shot_shape
from fitting.jacobian import performance_jacobian
from fitting.likelihood import binomial_terms

RNG = np.random.default_rng(0)
LOSS = np.linspace(2.2, 3.3, 9).repeat(3)
N_TRAIN = np.tile([0, 16, 1024], 9)
FEW = N_TRAIN == 0


def _theta(spec: law.LawSpec) -> np.ndarray:
    values = dict(A=0.9, B=0.25, k=0.06, alpha=1.1, C=2.5, delta=0.02, U=0.95)
    return np.array([values[n] for n in spec.param_names])


@pytest.mark.parametrize("d0", [1.0, 4.0])
@pytest.mark.parametrize("form", list(law.LAW_FORMS))
def test_jacobian_matches_performance_and_finite_differences(form, d0):
    _assert_jacobian_is_the_laws(law.LAW_FORMS[form].with_(d0=d0))


def _assert_jacobian_is_the_laws(spec: law.LawSpec) -> None:
    """The written-out performance equals law.performance, its Jacobian central differences."""
    theta = _theta(spec)
    perf, jac = performance_jacobian(spec, theta, LOSS, N_TRAIN, FEW)
    np.testing.assert_allclose(perf[0], law.performance(spec, theta, LOSS, N_TRAIN, FEW), rtol=1e-12)
    for i in range(len(theta)):
        h = 1e-6 * max(abs(theta[i]), 1.0)
        up, down = theta.copy(), theta.copy()
        up[i] += h
        down[i] -= h
        fd = (law.performance(spec, up, LOSS, N_TRAIN, FEW) - law.performance(spec, down, LOSS, N_TRAIN, FEW)) / (2 * h)
        np.testing.assert_allclose(jac[0, :, i], fd, atol=1e-5, err_msg=spec.param_names[i])


TERM_SETS = [dict(zip([t.flag for t in law.TERMS], bits)) for bits in np.ndindex(*(2,) * len(law.TERMS))]


@pytest.mark.parametrize("hinge", list(law.HINGE_SHAPES))
@pytest.mark.parametrize("flags", TERM_SETS, ids=lambda f: "+".join(k for k, on in f.items() if on) or "none")
def test_every_combination_of_terms_has_the_right_jacobian(flags, hinge):
    """Each optional term of TERMS (alone and with the others, under each hinge): the written-out
    Jacobian is the law's, so a term added to TERMS without its derivative fails here."""
    spec = law.LawSpec(hinge=hinge, **{k: bool(v) for k, v in flags.items()})
    assert spec.param_names == law.CORE_PARAMS + tuple(t.param for t in law.TERMS if flags[t.flag])
    _assert_jacobian_is_the_laws(spec)


@pytest.mark.parametrize("term", law.TERMS, ids=lambda t: t.param)
def test_every_term_is_a_lawspec_flag_and_enters_the_law(term):
    """A term's flag is a LawSpec field, switching it on adds its parameter, moving that parameter
    moves the predicted performance (its maths is wired in), and its start lies in its box."""
    assert term.flag in {f.name for f in dataclasses.fields(law.LawSpec)}
    without, with_ = law.LawSpec(**{term.flag: False}), law.LawSpec(**{term.flag: True})
    assert term.param in with_.param_names and term.param not in without.param_names
    assert without.unpack(_theta(without))[term.param] == term.absent
    base = _theta(with_)
    moved = base.copy()
    moved[with_.param_names.index(term.param)] -= 0.05
    assert not np.allclose(law.performance(with_, moved, LOSS, N_TRAIN, FEW),
                           law.performance(with_, base, LOSS, N_TRAIN, FEW))
    lo, hi = term.box(0.0, 1.0)
    assert lo <= term.start(0.8, True) <= hi
    # the few-shot curve alone (ground truth, compare-laws without finetune rows) has the term
    # only if it shapes one curve
    assert (term.param in few_shot_shape(with_, terms=True).param_names) == term.few_shot
    assert few_shot_shape(with_).param_names == law.CORE_PARAMS


def test_the_bayesian_forms_are_those_whose_every_term_the_model_has():
    from emergence.errors import FitError
    from fitting.bayes import BAYES_FORMS, BayesConfig

    assert set(BAYES_FORMS) == {n for n, s in law.LAW_FORMS.items() if all(t.bayes for t in s.terms)}
    assert "ceiling" not in BAYES_FORMS and "log_power" in BAYES_FORMS
    with pytest.raises(FitError, match="no parameter U"):
        BayesConfig(law=law.LAW_FORMS["ceiling"])


def test_batched_parameters_broadcast():
    spec = law.LawSpec()
    theta = np.stack([_theta(spec), _theta(spec) + 0.01])
    out = law.performance(spec, theta, LOSS, N_TRAIN, FEW)
    assert out.shape == (2, len(LOSS))
    np.testing.assert_allclose(out[1], law.performance(spec, theta[1], LOSS, N_TRAIN, FEW))


def test_prediction_is_few_shot_elbow():
    spec = law.LawSpec()
    theta = _theta(spec)
    e = law.emergence_loss(spec, theta)
    assert e == pytest.approx(2.5)  # log D0 = 0 at D0 = 1, so E(D0) = C
    few = law.performance(spec, theta, np.array([e + 0.1, e - 0.1]), np.zeros(2), np.ones(2, bool))
    assert few[0] == pytest.approx(0.25 + 0.02)  # at base + delta before the elbow
    assert few[1] == pytest.approx(0.27 + 0.09)  # slope A past it


@pytest.mark.parametrize("elbow", ["log_power", "power"])
@pytest.mark.parametrize("d0", [1.0, 2.0, 20.0])
def test_c_is_the_prediction_for_every_form_and_d0(elbow, d0):
    # the law is anchored at D0, so the search box on C bounds the prediction itself
    spec = law.LawSpec(elbow=elbow, d0=d0)
    theta = _theta(spec)
    assert law.emergence_loss(spec, theta) == pytest.approx(2.5)
    assert law.elbow(d0, 0.06, 1.1, 2.5, elbow, d0) == pytest.approx(2.5)
    # and the few-shot curve bends exactly there
    few = law.performance(spec, theta, np.array([2.5 + 1e-3, 2.5 - 1e-3]), np.zeros(2), np.ones(2, bool))
    assert few[0] == pytest.approx(0.27) and few[1] == pytest.approx(0.27 + 0.9e-3)
    assert ("d0=" in spec.label) == (d0 != 1.0)


def test_anchoring_at_d0_keeps_the_papers_log_power_law():
    # with D0 = 1, log D0 = 0: E(D) = k (log D)^α + C, the paper's form, unchanged
    d = np.array([16.0, 64.0, 1024.0])
    np.testing.assert_allclose(law.elbow(d, 0.06, 1.1, 2.5), 0.06 * np.log(d) ** 1.1 + 2.5)
    # a different D0 is the same family of curves, re-labelled: C moves to E(D0)
    shifted = law.elbow(d, 0.06, 1.1, 2.5 + 0.06 * np.log(8.0) ** 1.1, d0=8.0)
    np.testing.assert_allclose(shifted, law.elbow(d, 0.06, 1.1, 2.5))


def test_more_data_moves_the_elbow_to_higher_loss():
    e = law.elbow(np.array([16, 64, 256, 1024]), k=0.06, alpha=1.0, C=2.5)
    assert np.all(np.diff(e) > 0)


def test_softplus_tends_to_relu_and_ceiling_keeps_slope():
    x = np.linspace(-0.5, 0.5, 11)
    np.testing.assert_allclose(law.hinge(x, "softplus", 1e-4), law.hinge(x), atol=1e-3)
    spec = law.LawSpec(ceiling=True)
    theta = _theta(spec)
    loss = np.array([2.5 - 1e-4, 2.5 - 2e-4])
    p = law.performance(spec, theta, loss, np.zeros(2), np.ones(2, bool))
    assert (p[1] - p[0]) / 1e-4 == pytest.approx(0.9, rel=1e-3)
    far = law.performance(spec, theta, np.array([-50.0]), np.zeros(1), np.ones(1, bool))
    assert far[0] <= 0.95 + 1e-9  # never past the ceiling U


def test_lawspec_refuses_bad_values():
    with pytest.raises(ValueError):
        law.LawSpec(elbow="cubic")
    with pytest.raises(ValueError):
        law.LawSpec(d0=0.5)
    with pytest.raises(ValueError):
        law.LawSpec(temperature=0)


def test_binomial_terms_gradient_and_no_reward_outside_unit_interval():
    y, n = np.array([0.0, 30.0, 100.0]), np.array([100.0, 100.0, 100.0])
    p = np.array([0.05, 0.3, 0.97])
    nll, score, _ = binomial_terms(p, y, n)
    fd = (binomial_terms(p + 1e-7, y, n)[0] - binomial_terms(p - 1e-7, y, n)[0]) / 2e-7
    np.testing.assert_allclose(score, fd, rtol=1e-5)
    # an impossible probability never scores better than the valid boundary
    assert binomial_terms(np.array([-0.2]), np.array([0.0]), np.array([100.0]))[0] > \
        binomial_terms(np.array([0.0]), np.array([0.0]), np.array([100.0]))[0]
    assert binomial_terms(np.array([1.2]), np.array([100.0]), np.array([100.0]))[0] > \
        binomial_terms(np.array([1.0]), np.array([100.0]), np.array([100.0]))[0]


def test_an_unknown_form_is_an_error_never_a_fallback():
    from fitting import law as law_

    with pytest.raises(ValueError, match="elbow must be one of"):
        law_.elbow_x([1.0, 10.0], "cubic")
    with pytest.raises(ValueError, match="elbow must be one of"):
        law_.LawSpec(elbow="cubic")
    with pytest.raises(ValueError, match="hinge must be one of"):
        law_.hinge([0.0], "sigmoid")


def test_a_new_elbow_shape_is_one_registry_entry(monkeypatch):
    """A form added to ELBOW_SHAPES alone is evaluated, fitted and given a Bayesian prior."""
    import numpy as np

    from fitting import law as law_
    from fitting.bayes import Priors
    from fitting.data import TaskData
    from fitting.fit import EmergenceLawFit
    from fitting.simulate import simulate

    sqrt = law_.ElbowShape("sqrt_d", np.sqrt, (0.01, 3.0), (0.1, 1.5), (0.05, 2.0), (0.0, 0.5))
    monkeypatch.setitem(law_.ELBOW_SHAPES, "sqrt_d", sqrt)
    spec = law_.LawSpec(elbow="sqrt_d")
    assert np.allclose(law_.elbow_x([4.0, 9.0], "sqrt_d"), [2.0, 3.0])
    data = TaskData.from_folder(simulate(seed=3), "sim_mmlu")
    fit = EmergenceLawFit(spec).fit(data)
    assert fit.converged_ and np.isfinite(fit.emergence_loss_)
    assert Priors.for_law(spec).log_alpha_mu == (0.0, 0.5)
