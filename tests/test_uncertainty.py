"""Bootstrap intervals: determinism, shape, and coverage on simulated data with known truth."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from emergence.errors import FitError
from fitting.fit import EmergenceLawFit, TaskData
from fitting.simulate import DEFAULT_TASKS, Design, simulate
from fitting.uncertainty import PERCENTILES, bootstrap, task_seed

MMLU = DEFAULT_TASKS[0]
# The default 12-checkpoint ladder with 3 data levels x 2 subsets (fewer rows, so 200 datasets
# stay affordable), 300 items per evaluation, the default subset jitter (0.01 nats).
SMALL = replace(Design(), tasks=(MMLU,), data_levels=(16, 128, 1024), n_items=300)


@pytest.fixture(scope="module")
def fitted():
    data = TaskData.from_folder(simulate(Design(), seed=0), MMLU.name)
    return data, EmergenceLawFit().fit(data)


def test_bootstrap_is_deterministic_and_ordered(fitted):
    data, model = fitted
    a = bootstrap(data, model, n_boot=120, seed=4)
    b = bootstrap(data, model, n_boot=120, seed=4)
    np.testing.assert_array_equal(a.emergence_loss, b.emergence_loss)
    assert list(a.percentiles) == list(PERCENTILES)
    values = list(a.percentiles.values())
    assert values == sorted(values)
    assert a.n_boot == 120 and a.n_failed <= 3
    c = bootstrap(data, model, n_boot=120, seed=5)
    assert not np.array_equal(a.emergence_loss, c.emergence_loss)


def test_chunking_and_progress_do_not_change_results(fitted):
    data, model = fitted
    seen = []
    a = bootstrap(data, model, n_boot=60, seed=1, chunk=25, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(25, 60), (50, 60), (60, 60)]
    assert a.n_boot == 60


@pytest.mark.parametrize("items", ["fitted", "observed", "none"])
def test_item_modes_run(fitted, items):
    data, model = fitted
    out = bootstrap(data, model, n_boot=40, seed=0, items=items)
    assert np.isfinite(out.emergence_loss).all() and out.percentiles[5] < out.percentiles[95]


def test_refuses_unfitted_or_bad_options(fitted):
    data, model = fitted
    with pytest.raises(FitError):
        bootstrap(data, EmergenceLawFit(), n_boot=10)
    with pytest.raises(FitError):
        bootstrap(data, model, n_boot=10, items="bogus")


def test_task_seed_depends_on_task_not_order():
    assert task_seed(0, "a") == task_seed(0, "a") != task_seed(0, "b")


@pytest.mark.slow
def test_interval_coverage_on_200_datasets():
    """The 5-95% bootstrap interval (200 resamples) covers the true emergence loss in 80-97% of
    200 simulated datasets (the default scheme: checkpoints + subsets + items at fitted rates)."""
    covered, n_ok = 0, 0
    for seed in range(200):
        data = TaskData.from_folder(simulate(SMALL, seed=10_000 + seed), MMLU.name)
        model = EmergenceLawFit(n_starts=6).fit(data)
        if not model.converged_:
            continue
        boot = bootstrap(data, model, n_boot=200, seed=seed)
        n_ok += 1
        covered += boot.percentiles[5] <= MMLU.emergence_loss <= boot.percentiles[95]
    print(f"coverage of the 90% bootstrap interval: {covered}/{n_ok} = {covered / n_ok:.3f}")
    assert n_ok >= 195
    assert 0.80 <= covered / n_ok <= 0.97, f"coverage {covered}/{n_ok}"
