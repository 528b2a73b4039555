"""Benchmark of the fitting core against a naive ``scipy.optimize.curve_fit`` loop, same run.

    OMP_NUM_THREADS=1 python benchmarks/bench_fit.py [--n-boot 1000] [--naive-resamples 200]

Data: the default SIMULATED design (4 tasks x 12 checkpoints x 4 data levels x 2 subsets,
1000 items per evaluation: 9 rows per checkpoint per task, 108 per task).

1. One fit per task: ``EmergenceLawFit`` (24-start batched Levenberg-Marquardt + L-BFGS-B
   polish, binomial) against a loop of ``curve_fit`` (least squares, the same law, numerical
   Jacobian) from the same 24 starting points, keeping the best.
2. 1000 bootstrap resamples per task: ``fitting.uncertainty.bootstrap`` (vectorised) against a
   Python loop of ``curve_fit`` on the same kind of resample (checkpoints drawn with
   replacement, warm-started at the MLE). The naive loop runs ``--naive-resamples`` resamples
   of one task and its per-resample time is scaled to 1000 (printed as such).
3. Issue 21's goal: fit + 1000 resamples for the 4 tasks in at most 2 s, at least 20x faster
   than the naive loop (its one fit and its scaled resamples, per task, times 4).
4. The earlier goal: the whole 4-task dataset, fit + 1000 resamples per task (plus the ground truth,
   the profile-likelihood interval and the FLOPs conversion: `predict_all`), under 10 s on
   2 cores. Printed as wall time and as CPU time of this process (the machine may be shared;
   CPU time is what an idle core would take).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from scipy import optimize

from fitting import law
from fitting.data import TaskData
from fitting.fit import EmergenceLawFit
from fitting.optimise import bounds, starts
from fitting.predict import FitConfig, predict_all
from fitting.simulate import Design, simulate
from fitting.uncertainty import bootstrap


class Clock:
    """Wall and CPU time of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def naive_fit(data: TaskData, theta0: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """One least-squares fit of the law with curve_fit (numerical Jacobian), on ``rows``."""
    spec = law.LawSpec()
    rows = np.arange(data.n_rows) if rows is None else rows
    x = np.arange(len(rows))
    loss, n_train, few = data.loss[rows], data.n_train[rows], data.few_shot[rows]

    def model(_, *theta):
        return law.performance(spec, np.array(theta), loss, n_train, few)

    lo, hi = bounds(spec, data, "gaussian")
    p0 = np.clip(theta0, lo + 1e-9, hi - 1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        popt, _ = optimize.curve_fit(model, x, data.value[rows], p0=p0, bounds=(lo, hi), maxfev=5000)
    return popt


def naive_multistart(data: TaskData, n_starts: int = 24) -> np.ndarray:
    """The naive multi-start: curve_fit from each of the same starting points, keep the best."""
    best, best_rss = None, np.inf
    for theta0 in starts(law.LawSpec(), data, n_starts, 0):
        try:
            popt = naive_fit(data, theta0)
        except (RuntimeError, ValueError):
            continue
        rss = np.sum((law.performance(law.LawSpec(), popt, data.loss, data.n_train, data.few_shot) - data.value) ** 2)
        if rss < best_rss:
            best, best_rss = popt, rss
    return best


def naive_bootstrap(data: TaskData, theta0: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        picks = rng.integers(0, data.n_checkpoints, data.n_checkpoints)
        rows = np.concatenate([np.flatnonzero(data.ckpt == k) for k in picks])
        try:
            out.append(law.emergence_loss(law.LawSpec(), naive_fit(data, theta0, rows)))
        except RuntimeError:
            out.append(np.nan)
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--naive-resamples", type=int, default=200)
    args = parser.parse_args()

    folder = simulate(Design(), seed=0)
    datas = [TaskData.from_folder(folder, t) for t in folder.tasks]
    print(f"SIMULATED data: {len(datas)} tasks x {datas[0].n_checkpoints} checkpoints x "
          f"{len(datas[0].data_levels)} levels x {len(datas[0].subset_seeds)} subsets, {datas[0].n_rows} rows per task")

    # 1. one fit
    fits = {}
    with Clock() as ours:
        for d in datas:
            fits[d.task] = EmergenceLawFit().fit(d)
    with Clock() as naive:
        for d in datas:
            naive_multistart(d)
    with Clock() as warm:
        for d in datas:
            naive_fit(d, fits[d.task].theta_)
    per_ours, per_naive = ours.wall / len(datas), naive.wall / len(datas)
    print(f"one fit per task:   ours {per_ours * 1e3:7.1f} ms (24 starts + polish)   "
          f"naive curve_fit loop over the same 24 starts {per_naive * 1e3:7.1f} ms   "
          f"ratio naive/ours {per_naive / per_ours:5.2f}   "
          f"(a single curve_fit started at our MLE: {warm.wall / len(datas) * 1e3:.1f} ms)")

    # 2. 1000 resamples of one task
    d = datas[0]
    with Clock() as boot:
        result = bootstrap(d, fits[d.task], n_boot=args.n_boot, seed=0)
    with Clock() as loop:
        naive_bootstrap(d, fits[d.task].theta_, args.naive_resamples)
    scaled = loop.wall * args.n_boot / args.naive_resamples
    print(f"{args.n_boot} resamples ({d.task}): ours {boot.wall:6.2f} s ({result.n_failed} failed)   "
          f"naive curve_fit loop {scaled:6.2f} s (measured {args.naive_resamples}: {loop.wall:.2f} s, scaled)   "
          f"ratio naive/ours {scaled / boot.wall:5.1f}")

    # 3. issue 21's goal: fit + 1000 resamples for all 4 tasks in at most 2 s, and at least 20x
    # the naive loop (its fit and resamples, per task as measured above, times 4)
    with Clock() as core:
        for d in datas:
            bootstrap(d, EmergenceLawFit().fit(d), n_boot=args.n_boot, seed=0)
    naive_core = len(datas) * (per_naive + scaled)
    print(f"issue 21: 4 tasks, fit + {args.n_boot} resamples each: wall {core.wall:.2f} s, CPU {core.cpu:.2f} s "
          f"(goal <= 2 s: {'met' if core.wall <= 2 else 'NOT met'}); naive loop {naive_core:.1f} s (scaled), "
          f"ratio {naive_core / core.wall:.0f}x (goal >= 20x: {'met' if naive_core / core.wall >= 20 else 'NOT met'})")

    # 4. the earlier goal, with everything a prediction needs
    with Clock() as goal:
        preds = predict_all(folder, FitConfig(n_boot=args.n_boot, seed=0))
    failed = sum(p.n_boot_failed for p in preds)
    print(f"goal: 4 tasks, fit + ground truth + {args.n_boot} resamples each + profile interval + FLOPs: wall {goal.wall:.2f} s, "
          f"CPU {goal.cpu:.2f} s (target < 10 s on 2 cores; one process used) -> "
          f"{'met' if goal.wall < 10 else 'NOT met'} on wall time, {'met' if goal.cpu < 10 else 'NOT met'} on CPU time; "
          f"{failed} resamples failed in total")
    for p in preds:
        pct = p.emergence_loss_pct
        print(f"  {p.task:10s} MLE {p.emergence_loss:.3f}  p5 {pct[5]:.3f}  p95 {pct[95]:.3f}  "
              f"truth {folder.metadata['truth'][p.task]['emergence_loss']:.3f}")


if __name__ == "__main__":
    main()
