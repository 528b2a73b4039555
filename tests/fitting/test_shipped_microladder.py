"""The shipped micro-ladder (datasets_cache/microladder) still says what docs/microladder.md and
docs/findings.md say of it: recomputed here from its tables, not read from its JSON alone.

If a regenerated ladder changes these, the docs' numbers are stale: update both together.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fitting.data import TaskData

from fitting.fit import EmergenceLawFit

from fitting.ground_truth import fit_ground_truth
from fitting.law import LAW_FORMS
from fitting.schema import load_results
from harvest.microladder.summary import curve_elbows

SHIPPED = Path(__file__).resolve().parents[2] / "datasets_cache" / "microladder"
ELBOW_ATOL = 2e-3  # nats: the optimiser's precision on an elbow (see its use below)


@pytest.fixture(scope="module")
def folder():
    return load_results(SHIPPED)


@pytest.fixture(scope="module")
def elbows(folder):
    """docs/microladder.md's elbow tables were computed with the whole-curve hinge (the ground-truth
    rule before issue 20); ``onset_elbows`` has the current rule's."""
    return curve_elbows(folder, rule="hinge").filter(pl.col("task") == "ml_topic")


@pytest.fixture(scope="module")
def onset_elbows(folder):
    return curve_elbows(folder).filter(pl.col("task") == "ml_topic")


def test_the_onset_rule_puts_each_sizes_elbow_where_accuracy_leaves_chance(folder, onset_elbows):
    """docs/microladder.md, "The elbow where accuracy leaves chance": per size, the few-shot elbow
    lies between the last checkpoint at chance and the first clearly above it (the hinge rule put
    three of the four 0.3-0.6 nats earlier, at checkpoints measuring 0.20-0.25 on a 0.25 chance)."""
    from fitting.ground_truth import checkpoint_values

    few_shot = onset_elbows.filter((pl.col("n_train") == 0) & (pl.col("family") != "(all)"))
    assert few_shot.height == 4 and few_shot["elbow_loss"].null_count() == 0
    data = TaskData.from_folder(folder, "ml_topic")
    for row in few_shot.iter_rows(named=True):
        part = data.select_checkpoints(np.asarray(data.families) == row["family"]).few_shot_only()
        value, _ = checkpoint_values(part)
        order = np.argsort(-part.ckpt_loss)
        loss, acc = part.ckpt_loss[order], value[order]
        first = int(np.argmax((acc >= 0.30) & (np.roll(acc, -1) >= 0.30)))  # clearly above a 0.25 chance
        assert np.all(acc[:first] < 0.30)
        assert loss[first] - 1e-9 <= row["elbow_loss"] <= loss[first - 1] + 1e-9, row


def test_topic_naming_emerges_at_one_loss_in_every_size(elbows):
    few_shot = elbows.filter((pl.col("n_train") == 0) & (pl.col("family") != "(all)"))
    assert few_shot.height == 4 and few_shot["elbow_loss"].null_count() == 0
    assert few_shot["elbow_loss"].max() - few_shot["elbow_loss"].min() < 0.15  # docs: 4.11-4.20


def test_pooled_elbow_rises_with_finetuning_data(elbows):
    pooled = elbows.filter(pl.col("family") == "(all)").sort("n_train")
    assert pooled["n_train"].to_list() == [0, 8, 32, 128, 512]
    assert np.all(np.diff(pooled["E"].to_numpy()) > 0)  # docs: 4.41 -> 4.44 -> 4.64 -> 4.79 -> (5.15)


@pytest.mark.parametrize("task", ["ml_topic", "ml_topic_short"])
def test_on_all_checkpoints_the_ceiling_law_lands_near_the_ground_truth_and_the_papers_does_not(folder, task):
    """docs/findings.md (since issue 20): against the elbow where accuracy leaves chance, the paper's
    straight law fitted on all 64 checkpoints is 0.57-0.75 nats early; the saturating `ceiling`
    form, which held-out likelihood prefers, is within 0.2 (under the whole-curve hinge's truth the
    paper's law looked within 0.11)."""
    shipped = {f: {row["task"]: row for row in json.loads((SHIPPED / f"{f}.json").read_text())}[task]
               for f in ("fit", "fit_ceiling")}
    data = TaskData.from_folder(folder, task)
    fits = {f: EmergenceLawFit(LAW_FORMS[form]).fit(data) for f, form in (("fit", "log_power"), ("fit_ceiling", "ceiling"))}
    for f, fit in fits.items():
        assert fit.emergence_loss_ == pytest.approx(shipped[f]["emergence_loss"], abs=0.01)  # the JSON is this fit
    truth = shipped["fit"]["ground_truth_loss"]
    assert fits["fit"].emergence_loss_ - truth > 0.5  # docs: +0.75 and +0.57
    assert abs(fits["fit_ceiling"].emergence_loss_ - truth) < 0.2  # docs: +0.10 and +0.18


def test_the_shipped_run_used_the_default_ladder():
    """`emergence harvest microladder` with no --config regenerates this dataset."""
    from harvest.microladder.run import LadderConfig, load_config

    assert load_config(SHIPPED / "manifest.json") == LadderConfig()


@pytest.mark.parametrize("task", ["ml_topic", "ml_topic_short"])
def test_no_pre_emergence_cutoff_sees_a_rise(folder, task):
    """docs/microladder.md, backtest table: every FLOP cutoff before emergence keeps only
    checkpoints that no data level lifts, so each fit rises by less than 0.05 above base
    anywhere ("no rise"), and its prediction, successes included, is where the optimiser stopped."""
    from fitting.backtest import cutoff_values
    from fitting.predict import FitConfig, predict_data

    data = TaskData.from_folder(folder, task)
    truth = fit_ground_truth(data, rule="hinge")  # the docs' table: the rule before issue 20
    cuts = [data.select_max_flops(f) for f in cutoff_values(data, 3)]
    pre = [c for c in cuts if c.ckpt_loss.min() >= truth.elbow_loss]
    assert len(pre) == 6
    preds = [predict_data(c, FitConfig(n_boot=0, profile=False), ground_truth=truth) for c in pre]
    assert all(p.converged and p.pinned == "no rise" for p in preds)
    assert any(abs(p.emergence_loss - truth.elbow_loss) <= 0.1 for p in preds)  # the paper's test passes anyway


def test_a_larger_d0_keeps_the_prediction_inside_the_search_box(folder):
    """The ml_topic ablation row 'last 6 checkpoints' fitted with D0 = 20 (the paper: D0 barely
    matters below ~10x the 2 shots) predicted 813 nats before the law was anchored at D0; the
    box on C now bounds the prediction itself."""
    from fitting.backtest import AblationSpec, ablation_base, apply_variant
    from fitting.optimise import bounds
    from fitting.law import LawSpec
    from fitting.predict import FitConfig, predict_data

    data = TaskData.from_folder(folder, "ml_topic")
    truth = fit_ground_truth(data)
    cut = apply_variant(ablation_base(data, truth.elbow_loss, AblationSpec()), "last_k", 6)
    config = FitConfig(law=LawSpec(d0=20.0), n_boot=0, profile=False)
    lo, hi = bounds(config.spec, cut, "binomial")
    pred = predict_data(cut, config, ground_truth=truth)
    assert lo[-2] <= pred.emergence_loss <= hi[-2]  # C is the last-but-one parameter (then Δ)


@pytest.mark.parametrize("task", ["ml_topic", "ml_topic_short"])
def test_the_elbow_columns_agree_with_the_likelihood_on_the_ceiling_form(folder, task):
    """docs/findings.md (since issue 20): held-out likelihood picks `ceiling`, and with each curve's
    elbow placed where accuracy leaves chance (the onset rule) leaving curves out now agrees: it
    extrapolates elbows best. Under the whole-curve hinge the two disagreed (ceiling last: 0.595
    vs 0.133 and 0.389 vs 0.103 nats), an artefact of elbows placed before the step. The elbow part
    is recomputed here; the likelihood ranking (960 fits) is read from compare_laws.json, whose
    elbow columns must equal the recomputation."""
    from fitting.compare import elbow_extrapolation, LawComparison
    from fitting.ground_truth import curve_elbow

    shipped = json.loads((SHIPPED / "compare_laws.json").read_text())[task]
    assert shipped[0]["form"] == "ceiling"  # best held-out likelihood
    data = TaskData.from_folder(folder, task)
    truths = {level: curve_elbow(data, level) for level in [0, *data.data_levels]}
    rmse = {}
    for form in ("ceiling", "log_power"):
        errors = elbow_extrapolation(data, LAW_FORMS[form], truths)
        rmse[form] = LawComparison(form, 0.0, 0, 0, elbow_errors=errors).elbow_rmse
        row = next(r for r in shipped if r["form"] == form)
        # 2e-3 nats: each error is the difference of two elbows from multi-start optimisations
        # whose stopping rule leaves an elbow on a flat likelihood ridge defined to ~1e-3 nats;
        # two installs (numpy/scipy builds) gave errors up to 3.3e-4 apart (issue 16). A real
        # change moves them by tenths of a nat (the ranking below), far beyond this.
        assert {int(k): v for k, v in row["elbow_errors"].items()} == pytest.approx(errors, abs=ELBOW_ATOL)
    assert 1.5 * rmse["ceiling"] < rmse["log_power"]  # docs: 0.106 vs 0.574, 0.249 vs 0.426
