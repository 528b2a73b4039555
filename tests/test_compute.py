"""The compute axis: loss-vs-FLOPs law per family, conversion of a loss to FLOPs with intervals."""

from __future__ import annotations

import numpy as np
import pytest

from emergence.errors import FitError
from fitting.compute import choose_law, convert, fit_compute_law
from fitting.predict import FitConfig, predict_data
from fitting.fit import TaskData
from fitting.simulate import CHINCHILLA, Design, simulate, simulate_checkpoints


def _family(params: float, tokens_per_param=(2, 4, 8, 16, 32, 64)):
    tokens = params * np.array(tokens_per_param, float)
    flops = 6 * params * tokens
    c = CHINCHILLA
    loss = c["E"] + c["a"] / params ** c["alpha"] + c["b"] / tokens ** c["beta"]
    return loss, flops


def test_recovers_a_known_power_law():
    """Chinchilla at fixed N is exactly L_inf + a F^-b with L_inf = E + A/N^alpha, b = beta."""
    params = 1e9
    loss, flops = _family(params)
    law = fit_compute_law(loss, flops, "fam")
    c = CHINCHILLA
    assert law.L_inf == pytest.approx(c["E"] + c["a"] / params ** c["alpha"], rel=1e-4)
    assert law.b == pytest.approx(c["beta"], rel=1e-3)
    # the inverse recovers the FLOPs of a loss inside and beyond the data
    for tokens in (5e9, 1e12):
        true_loss = c["E"] + c["a"] / params ** c["alpha"] + c["b"] / tokens ** c["beta"]
        assert float(law.flops(true_loss)) == pytest.approx(6 * params * tokens, rel=1e-3)
    np.testing.assert_allclose(law.loss(flops), loss, rtol=1e-6)


def test_conversion_carries_the_interval_and_flags_extrapolation():
    loss, flops = _family(1e9)
    law = fit_compute_law(loss, flops, "fam")
    target = float(law.loss(4 * flops.max()))
    pct = {5: target - 0.01, 50: target, 95: target + 0.01}
    out = convert(law, target, pct, max_flops=flops.max())
    assert out.multiple == pytest.approx(4.0, rel=1e-3)
    assert out.extrapolated and "beyond" in out.note
    # lower loss needs more FLOPs: FLOPs p95 comes from loss p5
    assert out.flops_percentiles[95] == pytest.approx(float(law.flops(pct[5])))
    assert out.flops_percentiles[5] < out.flops_percentiles[50] < out.flops_percentiles[95]
    inside = convert(law, float(law.loss(flops[2])), {50: float(law.loss(flops[2]))}, flops.max())
    assert not inside.extrapolated and inside.multiple == pytest.approx(flops[2] / flops.max(), rel=1e-3)


def test_loss_below_the_floor_is_never_reached():
    loss, flops = _family(1e9)
    law = fit_compute_law(loss, flops, "fam")
    out = convert(law, law.L_inf - 0.05, {50: law.L_inf - 0.05}, flops.max())
    assert out.flops is None and out.multiple is None and out.extrapolated
    assert "never reached" in out.note


def test_choose_law_uses_the_frontier_family_or_pools():
    ckpts = simulate_checkpoints(Design())
    loss, flops, fam = (ckpts[c].to_numpy() for c in ("pretrain_loss", "flops", "family"))
    law = choose_law(loss, flops, fam)
    assert law.family == fam[np.argmin(loss)] and law.n_points == 4
    pooled = choose_law(loss, flops, fam, mode="pooled")
    assert pooled.family is None and pooled.n_points == 12 and pooled.label == "pooled"
    few = np.isin(np.arange(12), [0, 1, 2, 4, 5, 8, 9])  # the frontier family keeps 2 checkpoints
    assert choose_law(loss[few], flops[few], fam[few]).family is None
    with pytest.raises(FitError):
        fit_compute_law(loss[:3], flops[:3])
    with pytest.raises(FitError):
        choose_law(loss, flops, fam, mode="bogus")


def test_pipeline_reports_flops_of_prediction_and_ground_truth():
    folder = simulate(Design(), seed=0)
    data = TaskData.from_folder(folder, "sim_mmlu")
    rec = predict_data(data, FitConfig(n_boot=50)).to_json()
    assert rec["flops_law"].startswith("family:")
    assert rec["emergence_flops"] == pytest.approx(rec["flops_multiple"] * rec["max_flops"])
    assert rec["emergence_flops_p05"] <= rec["emergence_flops_p50"] <= rec["emergence_flops_p95"]
    assert rec["ground_truth_flops"] > 0
    # a cutoff before emergence: the prediction lies beyond the data and says so
    early = data.select_checkpoints(data.ckpt_loss > 2.45)
    rec2 = predict_data(early, FitConfig(n_boot=0)).to_json()
    assert rec2["flops_extrapolated"] is True and rec2["flops_multiple"] > 1
