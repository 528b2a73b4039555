"""Simulation-based calibration (SBC) of the hierarchical emergence law (issue 4).

Draw parameters and item counts from the model's own prior on a fixed small design (2 tasks,
8 checkpoints, few-shot + 3 data levels, 300 items per evaluation), fit each dataset, and check
(Talts et al., 2018):

* the rank of each true parameter among 99 thinned posterior draws is uniform (chi-square on
  5 bins and Kolmogorov-Smirnov, per parameter; with ~20 parameters expect about one p < 0.05
  by chance, so the smallest p-value is also shown against a Bonferroni threshold);
* the 90% central credible interval of each task's emergence loss covers the truth 80-97%.

Every dataset has the same design, so the model is compiled once (nutpie: numba, once per
process; ``fitting.bayes.sampling.compiled_nutpie_for``) and each dataset only swaps in its item counts
and its own maximum-likelihood start. Chains run sequentially on 1 core (the machine is shared).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/sbc_bayes.py --datasets 60 --out sbc.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np


def design_data():
    from fitting import bayes
    from fitting.simulate import DEFAULT_TASKS, Design, simulate

    design = Design(family_params=(2e8, 2e9), tokens_per_param=(2.5, 5.0, 10.0, 20.0),
                    data_levels=(16, 128, 1024), subset_seeds=(1,), n_items=300, tasks=DEFAULT_TASKS[:2])
    return bayes.bayes_data(simulate(design, seed=0))  # only the design is used; counts are redrawn


def summarise(results: list[dict], n_keep: int = 99) -> int:
    from fitting import bayes

    names = list(results[0]["ranks"])
    print(f"\n{'parameter':<28}{'chi2 p':>9}{'KS p':>9}   rank histogram (5 bins)")
    pvalues = []
    for name in names:
        ranks = np.array([r["ranks"][name] for r in results])
        chi2, ks = bayes.rank_uniformity(ranks, n_keep)
        pvalues += [chi2, ks]
        hist = np.bincount(ranks * 5 // (n_keep + 1), minlength=5)
        print(f"{name:<28}{chi2:>9.3f}{ks:>9.3f}   {' '.join(f'{h:3d}' for h in hist)}")
    covered = np.array([c for r in results for c in r["covered"]])
    bonf = 0.05 / len(pvalues)
    low = sum(p < 0.05 for p in pvalues)
    print(f"\ndatasets: {len(results)}; tests: {len(pvalues)}; p < 0.05: {low} "
          f"(expected by chance ~{0.05 * len(pvalues):.1f}); min p {min(pvalues):.4f} "
          f"(Bonferroni threshold {bonf:.4f}: {'uniform' if min(pvalues) >= bonf else 'NOT uniform'})")
    cov = covered.mean()
    print(f"90% interval coverage of the emergence loss: {covered.sum()}/{covered.size} = {cov:.3f} "
          f"(goal 0.80-0.97: {'MET' if 0.80 <= cov <= 0.97 else 'NOT MET'})")
    div = [r["divergences"] for r in results]
    print(f"divergences: total {sum(div)}, datasets with any {sum(d > 0 for d in div)}; "
          f"datasets failing the r_hat/ESS/divergence gate: {sum(not r['gate_ok'] for r in results)}")
    kinds = sorted({k for r in results for k in r.get("failed_checks", [])})
    if kinds:
        print("  of which failing each check: " + ", ".join(
            f"{k} {sum(k in r.get('failed_checks', []) for r in results)}" for k in kinds))
    secs = [r["seconds"] for r in results if "seconds" in r]
    if secs:
        print(f"seconds per dataset (sampling only): median {np.median(secs):.1f}, max {max(secs):.1f}, "
              f"total {sum(secs):.0f}")
    return 0 if (0.80 <= cov <= 0.97 and min(pvalues) >= bonf) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=60)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=700)
    parser.add_argument("--target-accept", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", default="nutpie")
    parser.add_argument("--out", default=None, help="write the per-dataset results as JSON here")
    parser.add_argument("--summarise", nargs="+", default=None, help="only summarise these JSON result files")
    args = parser.parse_args()
    if args.summarise:
        results = [r for path in args.summarise for r in json.load(open(path))]
        return summarise(results)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("pymc").setLevel(logging.ERROR)
    from fitting import bayes

    data = design_data()
    config = bayes.BayesConfig(sampler=bayes.SamplerConfig(
        sampler=args.sampler, chains=2, cores=1, draws=args.draws, tune=args.tune,
        target_accept=args.target_accept, progressbar=False))
    print(f"SBC: {args.datasets} datasets from the prior; design {len(data.tasks)} tasks x "
          f"{data.n_obs // len(data.tasks)} evaluations; {config.sampler.chains} chains x "
          f"{args.draws} draws (+{args.tune} tune), target_accept {args.target_accept}, 1 core, "
          f"sampler {args.sampler}", flush=True)
    t0 = time.perf_counter()

    partial: list[dict] = []

    def progress(i, n, r):
        partial.append(r)
        if args.out:  # keep what is done, so an interrupted run can still be summarised
            with open(args.out, "w") as fh:
                json.dump(partial, fh)
        print(f"  dataset {i}/{n}: covered {r['covered']}, divergences {r['divergences']}, "
              f"gate {'ok' if r['gate_ok'] else 'FAIL'} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr, flush=True)

    results = bayes.run_sbc(data, config, args.datasets, args.seed, progress)
    print(f"wall time {time.perf_counter() - t0:.0f} s (model compiled once; load average "
          f"{os.getloadavg()[0]:.1f} at the end)")
    return summarise(results)


if __name__ == "__main__":
    sys.exit(main())
