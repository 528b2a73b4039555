"""Benchmark: the hierarchical emergence law on the 4-task simulated default dataset.

Goal (issue 4): 4 chains x 1000 draws (1000 tuning steps) in under 30 s on 2 cores with 0
divergences. PyMC's NUTS, nutpie, and nutpie with its low-rank mass matrix are timed side by
side in the same process; the printed ratios are nutpie / PyMC. Wall time is split into the
maximum-likelihood start, model compilation (nutpie's numba compile; PyMC compiles inside
pm.sample) and sampling. Compilation is paid once per design and process (a second fit of the
same design, e.g. the low-rank row, only samples); on a fresh machine the first compile also
fills PyTensor's and numba's disk caches and takes longer.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/bench_bayes.py [--draws 1000]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import warnings

import numpy as np


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (PyMC's chain workers), in seconds."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(sampler: str, data, draws: int, tune: int, chains: int, cores: int, low_rank: bool = False) -> dict:
    from fitting import bayes

    cfg = bayes.BayesConfig(sampler=bayes.SamplerConfig(
        sampler=sampler, chains=chains, draws=draws, tune=tune, cores=cores, progressbar=False,
        low_rank=low_rank))
    c0, t0 = cpu_seconds(), time.perf_counter()
    model = bayes.model_for(data, cfg)
    start = bayes.mle_start(data, cfg)
    t1 = time.perf_counter()
    compiled = None
    if sampler == "nutpie":
        compiled = bayes.compiled_nutpie_for(data, cfg)  # numba compile; cached for this design
    t2 = time.perf_counter()  # PyMC compiles inside pm.sample: reported as part of sampling
    idata = bayes.sample(model, cfg.sampler, start, log_likelihood=False, compiled=compiled)
    t3, c3 = time.perf_counter(), cpu_seconds()
    failures = bayes.check_diagnostics(idata, cfg.gate)
    ss = idata.sample_stats
    depth = ss["depth"] if "depth" in ss else ss["tree_depth"]
    return dict(sampler=sampler + (" low-rank" if low_rank else ""), start=t1 - t0, compile=t2 - t1,
                sample=t3 - t2, total=t3 - t0, cpu=c3 - c0, depth=float(depth.mean()),
                divergences=int(ss["diverging"].sum()), failures=failures,
                p50={t: float(np.median(idata.posterior["emergence_loss"].sel(task=t))) for t in data.tasks})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from fitting import bayes
    from fitting.simulate import simulate

    folder = simulate()
    data = bayes.bayes_data(folder)
    truth = {t: v["emergence_loss"] for t, v in folder.metadata["truth"].items()}
    print(f"dataset: simulate() default, {len(data.tasks)} tasks, {data.n_obs} evaluations; "
          f"{args.chains} chains x {args.draws} draws (+{args.tune} tune) on {args.cores} cores")
    runs = [("pymc", False), ("nutpie", False), ("nutpie", True)]
    rows = [run(s, data, args.draws, args.tune, args.chains, args.cores, lr) for s, lr in runs]
    for r in rows:
        print(f"{r['sampler']:>16}: total {r['total']:6.1f} s = start {r['start']:.1f} + compile "
              f"{r['compile']:.1f} + sample {r['sample']:.1f}; CPU {r['cpu']:.1f} s; mean tree depth "
              f"{r['depth']:.1f}; divergences {r['divergences']}; "
              f"gate {'PASS' if not r['failures'] else 'FAIL: ' + '; '.join(r['failures'][:3])}")
        print("                  emergence loss p50 vs truth: " + ", ".join(
            f"{t} {r['p50'][t]:.3f}/{truth[t]:.3f}" for t in data.tasks))
    py, nu = rows[0], rows[1]
    print(f"ratio nutpie/pymc: wall {nu['total'] / py['total']:.2f}, CPU {nu['cpu'] / py['cpu']:.2f}, "
          f"compile+sample wall {(nu['compile'] + nu['sample']) / py['sample']:.2f}")
    print("(the low-rank row reuses the compiled nutpie model: its compile is the cache look-up)")
    for r in rows:
        r["ok"] = r["divergences"] == 0 and not r["failures"]
    first = rows[1]  # nutpie's first fit in this process: compile + sample
    reuse = lambda r: r["start"] + r["sample"]  # noqa: E731  (a later fit: the compiled model is reused)
    later = min((r for r in rows[1:] if r["ok"]), key=reuse, default=None)
    verdict = lambda r, t: "MET" if r is not None and r["ok"] and t < 30 else "NOT MET"  # noqa: E731
    print(f"goal < 30 s with 0 divergences and the gate passed: first nutpie fit in a process (compile + "
          f"sample) {first['total']:.1f} s -> {verdict(first, first['total'])}; a later fit of the same design "
          f"(start + sample, compiled model reused) {'-' if later is None else format(reuse(later), '.1f')} s "
          f"({'-' if later is None else later['sampler']}) -> {verdict(later, reuse(later) if later else 99)}; "
          f"PyMC {py['total']:.1f} s -> {verdict(py, py['total'])}")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
