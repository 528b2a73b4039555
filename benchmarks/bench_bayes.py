"""Benchmark: the hierarchical emergence law on the 4-task simulated default dataset.

Goal (issue 4): 4 chains x 1000 draws (1000 tuning steps) in under 30 s on 2 cores with 0
divergences. PyMC's NUTS and nutpie are timed side by side in the same process; the printed
ratios are nutpie / PyMC. Wall time is split into the maximum-likelihood start, model
compilation and sampling, because compilation dominates small fits.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/bench_bayes.py [--draws 1000]
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (PyMC's chain workers), in seconds."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(sampler: str, data, draws: int, tune: int, chains: int, cores: int) -> dict:
    from fitting import bayes

    cfg = bayes.BayesConfig(sampler=bayes.SamplerConfig(
        sampler=sampler, chains=chains, draws=draws, tune=tune, cores=cores, progressbar=False))
    c0, t0 = cpu_seconds(), time.perf_counter()
    model = bayes.build_model(data, cfg)
    start = bayes.mle_start(data, cfg)
    t1 = time.perf_counter()
    if sampler == "nutpie":
        compiled = bayes.compile_nutpie(model, start)
        t2 = time.perf_counter()
        idata = bayes._sample_nutpie(compiled, cfg.sampler)
    else:
        t2 = t1  # PyMC compiles inside pm.sample; reported as part of sampling
        idata = bayes.sample(model, cfg.sampler, start, log_likelihood=False)
    t3, c3 = time.perf_counter(), cpu_seconds()
    failures = bayes.check_diagnostics(idata, cfg.gate)
    return dict(sampler=sampler, start=t1 - t0, compile=t2 - t1, sample=t3 - t2, total=t3 - t0, cpu=c3 - c0,
                divergences=int(idata.sample_stats["diverging"].sum()), failures=failures,
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
    rows = {s: run(s, data, args.draws, args.tune, args.chains, args.cores) for s in ("pymc", "nutpie")}
    for r in rows.values():
        print(f"{r['sampler']:>7}: total {r['total']:6.1f} s = start {r['start']:.1f} + compile "
              f"{r['compile']:.1f} + sample {r['sample']:.1f}; CPU {r['cpu']:.1f} s; divergences {r['divergences']}; "
              f"gate {'PASS' if not r['failures'] else 'FAIL: ' + '; '.join(r['failures'][:3])}")
        print("         emergence loss p50 vs truth: " + ", ".join(
            f"{t} {r['p50'][t]:.3f}/{truth[t]:.3f}" for t in data.tasks))
    py, nu = rows["pymc"], rows["nutpie"]
    print(f"ratio nutpie/pymc: wall {nu['total'] / py['total']:.2f}, CPU {nu['cpu'] / py['cpu']:.2f}, "
          f"compile+sample wall {(nu['compile'] + nu['sample']) / py['sample']:.2f}")
    print(f"CPU seconds / 2 cores (wall time on an idle 2-core machine, roughly): "
          f"pymc {py['cpu'] / 2:.1f} s, nutpie {nu['cpu'] / 2:.1f} s")
    best = min(py["total"], nu["total"])
    print(f"goal < 30 s with 0 divergences: best total {best:.1f} s -> "
          f"{'MET' if best < 30 and min(py['divergences'], nu['divergences']) == 0 else 'NOT MET'}")


if __name__ == "__main__":
    main()
