"""How the cost of a fit and of a backtest grows with the data: 1x, 4x and 16x the checkpoints
and the tasks of the bench dataset, in one process.

    OMP_NUM_THREADS=1 python benchmarks/bench_scaling.py [--n-boot 200] [--backtest-n-boot 50]
        [--workers 2] [--quick] [--sample-16x 8] [--full-16x]

The bench dataset is ``bench_backtest.py``'s: the default SIMULATED design (fitting.simulate),
4 tasks x 12 checkpoints (3 model sizes x 4 checkpoints along each run), 4 data levels x 2
subsets, 9 rows per checkpoint per task.

- More checkpoints over the same loss range: s x the checkpoints is a ladder of
  ``sqrt(s) x 3`` model sizes geometrically spaced over the same 4e8..4e9 parameters, each with
  ``sqrt(s) x 4`` checkpoints geometrically spaced over the same 4..32 tokens per parameter
  (4x: 6 x 8 = 48 checkpoints; 16x: 12 x 16 = 192). Same first and last checkpoint, so the
  same pretraining-loss range (3.26 -> 2.23 nats), denser.
- More tasks: s x the tasks are s copies of the 4 simulated tasks, each copy with its own name,
  its own binomial draws and its elbow C shifted by -0.06..+0.06 nats (the copy's index), so no
  two tasks are the same data.

Measured, each on its own dataset:

1. ``fit``: ``EmergenceLawFit`` (24-start batched LM + polish) plus ``bootstrap`` with
   ``--n-boot`` resamples, for every task, in this process (CPU = this process). Repeated until
   it has used 2 CPU-seconds (at most 20 times) and averaged: one 1x run is ~0.1 s.
2. ``backtest``: the jobs of ``fitting.backtest.backtest`` with the CLI's defaults, no cache: per
   task ``plan_task`` (ground truth, in this process), then every cutoff down to 3 checkpoints
   (each a fit + ``--backtest-n-boot`` resamples + profile-likelihood interval + FLOPs) on
   ``--workers`` processes. Nothing is read from or written to the backtest cache. The jobs
   are run here rather than through ``backtest()`` so that a cutoff that raises is counted
   (``failed``) instead of ending the measurement; scoring the cutoffs (negligible) is left out.
   CPU = this process + its workers.

``--max-cutoffs K`` runs every scale's backtest as ``emergence backtest --max-cutoffs K`` would (K
cutoffs per task, evenly spread): its total then grows linearly with the checkpoints.

At 16x the full backtest is not run by default: a backtest refits every cutoff, so its work is
(number of cutoffs) x (size of each fit), and 16x the checkpoints is ~16x the cutoffs of ~16x the
size each (~20 CPU-minutes). By default the 16x-checkpoint backtest runs ``--sample-16x``
cutoffs per task, evenly spaced over all of them (the per-unit columns compare; the totals are
for the sample, printed as such); ``--full-16x`` runs them all (long). The backtest of 16x the
tasks is not run: tasks are independent jobs, so its cost is the 4x-tasks row's x 4 by
construction (``--full-16x`` runs it too). ``--quick``: 1x and 4x only, 50 resamples in the fit.

Per-unit columns: ``CPU/task`` (fit: seconds per task), ``CPU/task/ckpt`` (fit: per task and
checkpoint: flat if the fit is linear in the checkpoints), ``CPU/cutoff`` (backtest: per cutoff
fit) and ``CPU/cut-ckpt`` (backtest: per checkpoint of the cutoff fits, summed over the cutoffs:
flat if every cutoff fit is linear in its data); both leave out ``GT CPU``, the ground truths
(one per task, on all its checkpoints, in this process). The load average (1 min) is printed before and
after each measurement: the machine may be shared; ratios measured in the same process are what
compare.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

from fitting import backtest as backtest_mod
from fitting.backtest import BacktestConfig, plan_task
from fitting.data import TaskData
from fitting.fit import EmergenceLawFit
from fitting.predict import FitConfig, is_simulated
from fitting.simulate import DEFAULT_TASKS, Design, simulate
from fitting.uncertainty import bootstrap


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the backtest's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def design(ckpt_scale: int, task_scale: int) -> Design:
    """The bench design with ``ckpt_scale`` x the checkpoints (same loss range) and
    ``task_scale`` x the tasks."""
    base = Design()
    changes = {}
    if ckpt_scale != 1:
        side = int(round(np.sqrt(ckpt_scale)))
        if side * side != ckpt_scale:
            raise SystemExit(f"checkpoint scale must be a square, got {ckpt_scale}")
        fam, tpp = base.family_params, base.tokens_per_param
        changes["family_params"] = tuple(np.geomspace(fam[0], fam[-1], side * len(fam)).tolist())
        changes["tokens_per_param"] = tuple(np.geomspace(tpp[0], tpp[-1], side * len(tpp)).tolist())
    if task_scale != 1:
        shifts = np.linspace(-0.06, 0.06, task_scale)
        changes["tasks"] = tuple(dataclasses.replace(t, name=f"{t.name}_{j}", C=t.C + float(shifts[j]))
                                 for j in range(task_scale) for t in DEFAULT_TASKS)
    return dataclasses.replace(base, **changes)


class Clock:
    def __enter__(self):
        self.load0 = os.getloadavg()[0]
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = cpu_seconds() - self.cpu
        self.load1 = os.getloadavg()[0]

    @property
    def load(self) -> str:
        return f"{self.load0:.1f}->{self.load1:.1f}"


def measure_fit(folder, n_boot: int) -> tuple[Clock, int, int]:
    """Fit + bootstrap of every task, repeated up to 2 CPU-s; (clock per run, runs, failed resamples)."""
    datas = [TaskData.from_folder(folder, t) for t in folder.tasks]
    runs = failed = 0
    with Clock() as clock:
        while runs == 0 or (cpu_seconds() - clock.cpu < 2.0 and runs < 20):
            runs += 1
            for d in datas:
                fit = EmergenceLawFit().fit(d)
                if n_boot:
                    failed += bootstrap(d, fit, n_boot=n_boot, seed=0).n_failed
    clock.wall, clock.cpu = clock.wall / runs, clock.cpu / runs
    return clock, runs, failed // runs


def _guarded(job) -> str | None:
    """One backtest job (``fitting.backtest._run_job``); the error instead of raising it."""
    try:
        backtest_mod._run_job(job)
        return None
    except Exception as err:  # noqa: BLE001  (counted and printed: a measurement, not a test)
        return f"{type(err).__name__}: {err}"


def measure_backtest(folder, n_boot: int, workers: int, sample: int = 0):
    """The backtest's jobs, no cache; (clock, cutoff fits, checkpoints summed over them, errors).
    ``sample`` > 0: that many cutoffs per task, evenly spaced over all of them (``--max-cutoffs``). ``clock.plan_cpu``:
    the CPU of the plans (each task's ground truth, this process)."""
    config = BacktestConfig(fit=FitConfig(n_boot=n_boot, seed=0), workers=workers, max_cutoffs=sample or None)
    simulated = is_simulated(folder)
    with Clock() as clock:
        jobs = []
        with Clock() as plans:
            for task in folder.tasks:
                jobs += plan_task(TaskData.from_folder(folder, task), config, simulated).jobs  # ground truth
        if workers <= 1:
            errors = [_guarded(job) for job in jobs]
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                errors = list(pool.map(_guarded, jobs))
    failed = [f"{job.task} {job.data.n_checkpoints} ckpts: {err}" for job, err in zip(jobs, errors) if err]
    clock.plan_cpu = plans.cpu
    return clock, len(jobs), sum(job.data.n_checkpoints for job in jobs), failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-boot", type=int, default=200, help="resamples of each task's fit (measurement 1)")
    parser.add_argument("--backtest-n-boot", type=int, default=50, help="resamples of each cutoff fit (backtest)")
    parser.add_argument("--workers", type=int, default=2, help="backtest worker processes")
    parser.add_argument("--quick", action="store_true", help="1x and 4x only, 50 resamples in the fit")
    parser.add_argument("--sample-16x", type=int, default=8, help="cutoffs per task of the 16x-checkpoint backtest "
                        "(0: no 16x backtest)")
    parser.add_argument("--full-16x", action="store_true", help="every cutoff at 16x, and the 16x-tasks backtest (long)")
    parser.add_argument("--max-cutoffs", type=int, default=0, help="backtest --max-cutoffs K at every scale (the "
                        "user's cap: work then linear in the checkpoints); 0: every cutoff")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated data")
    args = parser.parse_args()
    if args.quick:
        args.n_boot = 50
    scales = (1, 4) if args.quick else (1, 4, 16)
    cases = [(f"{s}x ckpts", s, 1) for s in scales] + [(f"{s}x tasks", 1, s) for s in scales if s != 1]

    load = os.getloadavg()
    print(f"bench dataset x scale; fit = 24-start MLE + {args.n_boot} resamples per task (this process); "
          f"backtest = cutoff fits with {args.backtest_n_boot} resamples + profile interval each, "
          f"{args.workers} worker(s), no cache; {os.cpu_count()} cores, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    rows = []
    for label, cs, ts in cases:
        folder = simulate(design(cs, ts), seed=args.seed)
        n_tasks, n_ckpt = len(folder.tasks), folder.checkpoints.height
        n_rows = TaskData.from_folder(folder, folder.tasks[0]).n_rows
        fit, runs, failed = measure_fit(folder, args.n_boot)
        row = dict(label=label, tasks=n_tasks, ckpts=n_ckpt, rows=n_rows, fit=fit, bt=None, sample=0)
        print(f"  {label:10s} {n_tasks:3d} tasks x {n_ckpt:3d} checkpoints ({n_rows} rows/task): "
              f"fit+{args.n_boot} resamples wall {fit.wall:6.2f} s CPU {fit.cpu:6.2f} s per run "
              f"(mean of {runs}; load {fit.load}; {failed} failed resamples)", flush=True)
        sample = args.max_cutoffs
        if cs == 16 and not args.full_16x and not sample:
            sample = args.sample_16x
        if max(cs, ts) < 16 or args.full_16x or sample:
            bt, n_cuts, cut_ckpts, errors = measure_backtest(folder, args.backtest_n_boot, args.workers, sample)
            row.update(bt=bt, cuts=n_cuts, cut_ckpts=cut_ckpts, errors=errors, sample=sample)
            what = f"{sample} sampled cutoffs per task" if sample else "every cutoff"
            print(f"  {label:10s} backtest, {what}: {n_cuts} cutoff fits: wall {bt.wall:6.1f} s "
                  f"CPU {bt.cpu:6.1f} s (load {bt.load}); {len(errors)} raised", flush=True)
            for err in errors:
                print(f"      raised: {err}")
        rows.append(row)

    base = rows[0]
    print()
    print(f"Fit + {args.n_boot} resamples, every task, per run (ratios to 1x; CPU/task/ckpt flat = linear "
          "in the checkpoints):")
    print(f"  {'case':10s} {'tasks':>5s} {'ckpts':>5s} {'data x':>6s} {'wall s':>7s} {'CPU s':>7s} {'CPU x':>6s} "
          f"{'CPU/task s':>10s} {'CPU/task/ckpt':>13s} {'load':>9s}")
    for r in rows:
        data_x = r["tasks"] * r["ckpts"] / (base["tasks"] * base["ckpts"])
        f = r["fit"]
        print(f"  {r['label']:10s} {r['tasks']:5d} {r['ckpts']:5d} {data_x:6.0f} {f.wall:7.2f} {f.cpu:7.2f} "
              f"{f.cpu / base['fit'].cpu:6.2f} {f.cpu / r['tasks']:10.3f} "
              f"{f.cpu / r['tasks'] / r['ckpts'] * 1e3:10.2f} ms {f.load:>9s}")
    print()
    print(f"Backtest, {args.backtest_n_boot} resamples per cutoff fit, no cache (ratios to 1x; CPU/cut-ckpt flat = "
          "each cutoff fit linear in its checkpoints):")
    print(f"  {'case':10s} {'cutoffs':>7s} {'cut-ckpts':>9s} {'wall s':>7s} {'CPU s':>7s} {'CPU x':>6s} "
          f"{'cutoffs x':>9s} {'GT CPU s':>8s} {'CPU/cutoff s':>12s} {'CPU/cut-ckpt':>12s} {'load':>9s}")
    for r in rows:
        if r["bt"] is None:
            why = ("tasks are independent jobs: 4 x the 4x-tasks row" if "tasks" in r["label"]
                   else f"{r['ckpts'] - 2} cutoffs per task of up to {r['ckpts']} checkpoints")
            print(f"  {r['label']:10s} not run ({why}; --full-16x runs it)")
            continue
        b = r["bt"]
        label = r["label"] + ("*" if r["sample"] else "")
        fits = b.cpu - b.plan_cpu  # the cutoff fits alone
        print(f"  {label:10s} {r['cuts']:7d} {r['cut_ckpts']:9d} {b.wall:7.1f} {b.cpu:7.1f} "
              f"{b.cpu / base['bt'].cpu:6.2f} {r['cuts'] / base['cuts']:9.2f} {b.plan_cpu:8.1f} {fits / r['cuts']:12.3f} "
              f"{fits / r['cut_ckpts'] * 1e3:9.1f} ms {b.load:>9s}")
    if any(r["sample"] for r in rows):
        print(f"  (*: {args.max_cutoffs or args.sample_16x} cutoffs per task, evenly spaced (backtest --max-cutoffs): "
              "the totals and ratios are for those; the per-unit columns compare)")
    print("  (GT CPU: every task's ground truth, in this process, included in CPU s; the per-unit columns "
          "leave it out: cutoff fits only)")
    if any(r.get("errors") for r in rows):
        print("  (some cutoff fits raised, listed above: their CPU up to the error is counted)")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
