"""Coverage of the bootstrap's 5-95% interval under each item-resampling scheme (SIMULATED data).

    OMP_NUM_THREADS=1 python benchmarks/coverage_items.py [--datasets 100] [--n-boot 200]

One task (sim_mmlu's law) on the default 12-checkpoint ladder, 4 data levels x 2 subsets,
300 items per evaluation, subset jitter 0.01 nats. For each scheme of
``fitting.uncertainty.bootstrap`` (items = fitted | observed | none, checkpoints and subsets
always resampled) it prints how often the interval covers the true emergence loss, the
median interval width, and the RMSE of the MLE (the width a calibrated 90% interval should
have is about 2 x 1.645 x RMSE).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from fitting.data import TaskData

from fitting.fit import EmergenceLawFit
from fitting.simulate import DEFAULT_TASKS, Design, simulate
from fitting.uncertainty import bootstrap


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", type=int, default=100)
    parser.add_argument("--n-boot", type=int, default=200)
    args = parser.parse_args()
    task = DEFAULT_TASKS[0]
    design = replace(Design(), tasks=(task,), n_items=300, subset_sd=0.01)
    fitted = []
    for seed in range(args.datasets):
        data = TaskData.from_folder(simulate(design, seed=1000 + seed), task.name)
        model = EmergenceLawFit(n_starts=8).fit(data)
        if model.converged_:
            fitted.append((seed, data, model))
    errors = np.array([m.emergence_loss_ - task.emergence_loss for _, _, m in fitted])
    print(f"SIMULATED: {len(fitted)}/{args.datasets} fits converged; MLE RMSE {np.sqrt(np.mean(errors**2)):.4f} nats "
          f"(calibrated 90% width ~ {2 * 1.645 * np.sqrt(np.mean(errors**2)):.4f})")
    for items in ("fitted", "observed", "none"):
        start, covered, widths, failed = time.perf_counter(), 0, [], 0
        for seed, data, model in fitted:
            boot = bootstrap(data, model, n_boot=args.n_boot, seed=seed, items=items)
            lo, hi = boot.percentiles[5], boot.percentiles[95]
            covered += lo <= task.emergence_loss <= hi
            widths.append(hi - lo)
            failed += boot.n_failed
        print(f"items={items:8s} coverage {covered}/{len(fitted)} = {covered / len(fitted):.2f}  "
              f"median width {np.median(widths):.4f}  failed resamples {failed}  "
              f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
