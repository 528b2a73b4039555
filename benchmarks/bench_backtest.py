"""Benchmark: the full backtest of the default simulated dataset, against the naive baseline.

    OMP_NUM_THREADS=1 python benchmarks/bench_backtest.py [--n-boot 1000] [--workers 2]
                                                          [--naive-resamples 100]

Data: the default SIMULATED design (4 tasks x 12 checkpoints x 4 data levels x 2 subsets,
1000 items per evaluation). The backtest refits every cutoff from 12 checkpoints down to 3
(10 cutoffs per task), each with ``--n-boot`` bootstrap resamples, plus the ground truth.

Goal (issue 21; issue 3 had 60 s): at most 20 s on 2 cores. Printed: wall time with ``--workers`` processes, and CPU
time of this process plus its workers (what idle cores would need; the machine may be shared).

Per-fit cost ratio: one backtest "fit" is a maximum-likelihood fit plus ``--n-boot``
resamples. The naive baseline is the fitting benchmark's (``benchmarks/bench_fit.py``,
imported, not copied): ``naive_multistart`` (curve_fit from the same 24 starting points) plus
``naive_bootstrap`` (a Python loop of curve_fit over resamples), timed on one cutoff of one task
in this run; the loop runs ``--naive-resamples`` resamples and is scaled to ``--n-boot``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fit import naive_bootstrap, naive_multistart  # noqa: E402  (the fitting benchmark's baseline)

from fitting.backtest import BacktestConfig, backtest  # noqa: E402
from fitting.data import TaskData  # noqa: E402
from fitting.predict import FitConfig  # noqa: E402
from fitting.simulate import Design, simulate  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def naive_per_fit(folder, n_boot: int, naive_resamples: int) -> tuple[float, float]:
    """(wall s, CPU s) of one naive fit + ``n_boot`` resamples on a typical pre-emergence cutoff
    (8 checkpoints); the resample loop is measured on ``naive_resamples`` and scaled."""
    data = TaskData.from_folder(folder, folder.tasks[0])
    data = data.select_max_flops(sorted(data.ckpt_flops)[7])
    wall, cpu = time.perf_counter(), time.process_time()
    theta = naive_multistart(data)
    multi = (time.perf_counter() - wall, time.process_time() - cpu)
    wall, cpu = time.perf_counter(), time.process_time()
    naive_bootstrap(data, theta, naive_resamples)
    loop = (time.perf_counter() - wall, time.process_time() - cpu)
    scale = n_boot / naive_resamples
    return multi[0] + loop[0] * scale, multi[1] + loop[1] * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--naive-resamples", type=int, default=100)
    args = parser.parse_args()

    folder = simulate(Design(), seed=0)
    config = BacktestConfig(fit=FitConfig(n_boot=args.n_boot, seed=0), workers=args.workers)
    print(f"SIMULATED data: {len(folder.tasks)} tasks x {folder.checkpoints.height} checkpoints x "
          f"{len(Design().data_levels)} levels x {len(Design().subset_seeds)} subsets; "
          f"{args.n_boot} resamples per fit; {args.workers} worker process(es)")

    wall, cpu = time.perf_counter(), cpu_seconds()
    results = backtest(folder, config)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    n_fits = sum(len(r.cutoffs) for r in results)
    print(f"full backtest: {n_fits} cutoff fits (+ {len(results)} ground truths): wall {wall:.1f} s, "
          f"CPU {cpu:.1f} s (this process + workers)")
    print(f"issue 21's goal <= 20 s on 2 cores: wall {'MET' if wall <= 20 else 'NOT MET'}; "
          f"CPU / 2 cores = {cpu / 2:.1f} s -> {'MET' if cpu / 2 <= 20 else 'NOT MET'} on an idle 2-core machine")
    for r in results:
        j = r.to_json()
        mult = "-" if j["flop_multiplier"] is None else f"{j['flop_multiplier']:.2f}x"
        strict = "-" if j["flop_multiplier_strict"] is None else f"{j['flop_multiplier_strict']:.2f}x"
        boot_failed = sum(c.prediction.n_boot_failed for c in r.cutoffs if c.prediction is not None)
        print(f"  {r.task:10s} truth {j['ground_truth_loss']:.3f}  multiplier {mult:>7s} (strict {strict:>7s})  "
              f"coverage {j['n_covered']}/{j['n_intervals']} (profile {j['n_covered_profile']}/{j['n_profile']})  "
              f"failed resamples {boot_failed}")

    per_ours = cpu / n_fits
    naive_wall, naive_cpu = naive_per_fit(folder, args.n_boot, args.naive_resamples)
    print(f"per fit (MLE + {args.n_boot} resamples + profile interval): ours {per_ours:.2f} CPU s (backtest average)   "
          f"naive curve_fit baseline of bench_fit.py {naive_cpu:.2f} CPU s ({naive_wall:.2f} s wall; "
          f"{args.naive_resamples} resamples measured, scaled)   ratio naive/ours {naive_cpu / per_ours:.1f}")


if __name__ == "__main__":
    main()
