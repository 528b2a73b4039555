"""Coverage of the default 90% interval when the law is right and when it is wrong (SIMULATED).

    OMP_NUM_THREADS=1 python benchmarks/coverage_misspecified.py [--n 200] [--n-boot 200]
        [--procs 2] [--quick] [--before] [--generator law|saturating] [--out FILE.jsonl]

Two generators, ``--n`` datasets each (seeds 0..n-1 offset per generator):

* ``law``: the project's own simulator (``fitting.simulate``, default design, 4 tasks): the
  data follow the fitted law exactly.
* ``saturating``: ``fitting.simulate_saturating`` (default design, 3 tasks): a sigmoid rise in
  loss with a ceiling below 1, the few-shot curve at D0 = 5, the elbow moving with D by another
  law, beta-binomial items, a per-checkpoint accuracy shift, noisy recorded losses. The truth
  is where the expected few-shot accuracy has left chance by 5% of its span.

Every task of every dataset is fitted by the default pipeline, ``fitting.predict.predict_data``
with the default ``FitConfig`` (log-power law, D0 = 1, binomial, profile on), except
``n_boot`` (``--n-boot``, default 200) and ``compute_draws=0`` (the FLOPs conversion does not
touch the loss interval). The ground truth is not computed (it does not enter the interval).
The reported interval is ``emergence_loss_p05 .. _p95`` (the hull of the bootstrap's 5-95%
and the 90% profile-likelihood interval). A dataset whose fit does not converge counts as a
miss. Coverage per generator and per task with Clopper-Pearson 95% intervals
(``scipy.stats.binomtest(...).proportion_ci``), the median width, the MLE's error.

``--before`` runs the estimator as it was before the over-dispersion correction
(``fitting.uncertainty.DEFAULT_DISPERSION = "none"``); ``--dispersion row`` the row-level
quasi-likelihood only (the alternative docs/law.md compares); the default is the shipped one.
``--both`` fits both (in one pool, so with the same code) and prints both tables. ``--table A.jsonl [B.jsonl ...]`` prints the tables of earlier ``--out`` files.
``--quick``: 12 datasets per generator, n_boot 100 (a CPU-friendly check).
Wall time, CPU seconds (all processes) and the load average are printed beside the table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from multiprocessing import Pool
from types import SimpleNamespace

import numpy as np
from scipy import stats

GENERATORS = ("law", "saturating")
SEED_OFFSET = {"law": 50_000, "saturating": 60_000}
_SKIP_GT = SimpleNamespace(elbow_loss=None, emerged=None)  # the ground truth is not needed here


def _init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def run_one(job: tuple[str, int, int, str | None]) -> list[dict]:
    """Fit every task of dataset ``seed`` of ``generator`` with ``DEFAULT_DISPERSION`` =
    ``dispersion`` (None: the shipped one); one record per task."""
    generator, seed, n_boot, dispersion = job
    from fitting import uncertainty

    shipped = uncertainty.DEFAULT_DISPERSION
    if dispersion is not None:
        uncertainty.DEFAULT_DISPERSION = dispersion
    try:
        return _run_one(generator, seed, n_boot, dispersion)
    finally:
        uncertainty.DEFAULT_DISPERSION = shipped


def _run_one(generator: str, seed: int, n_boot: int, dispersion: str | None) -> list[dict]:
    from fitting.data import TaskData
    from fitting.predict import FitConfig, predict_data
    from fitting.uncertainty import estimate_dispersion

    if generator == "law":
        from fitting.simulate import simulate
    else:
        from fitting.simulate_saturating import simulate
    folder = simulate(seed=SEED_OFFSET[generator] + seed)
    truth = folder.metadata["truth"]
    config = FitConfig(n_boot=n_boot, compute_draws=0, seed=seed)
    out = []
    for task in folder.tasks:
        t0 = time.process_time()
        data = TaskData.from_folder(folder, task)
        true = float(truth[task]["emergence_loss"])
        row = dict(generator=generator, seed=seed, task=task, truth=true, dispersion=dispersion or "default")
        try:
            rec = predict_data(data, config, ground_truth=_SKIP_GT, simulated=True)
        except Exception as err:  # a crash is a miss, and is reported
            row.update(error=f"{type(err).__name__}: {err}", covered=False)
            out.append(row)
            continue
        pct, prof = rec.emergence_loss_pct, rec.profile
        lo, hi = pct.get(5), pct.get(95)
        ok = rec.emergence_loss is not None and lo is not None and hi is not None
        phi = None
        if rec.converged:
            theta = np.array([rec.params[k] for k in config.spec.param_names])
            phi = estimate_dispersion(data, SimpleNamespace(spec=config.spec, theta_=theta, likelihood=config.likelihood))
        row.update(
            mle=rec.emergence_loss, lo=lo, hi=hi, covered=bool(ok and lo <= true <= hi),
            boot_lo=rec.boot_pct.get(5), boot_hi=rec.boot_pct.get(95),
            prof_lo=None if prof is None else prof.low, prof_hi=None if prof is None else prof.high,
            reliable=rec.interval_reliable, pinned=rec.pinned, n_boot_failed=rec.n_boot_failed,
            phi=None if phi is None else phi.row, phi_ckpt=None if phi is None else phi.checkpoint, cpu_s=time.process_time() - t0,
        )
        out.append(row)
    return out


def _ci(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return ci.low, ci.high


def table(rows: list[dict], label: str) -> str:
    lines = [f"SIMULATED ({label}): coverage of the reported 5-95% interval of the emergence loss; "
             "95% Clopper-Pearson interval of the coverage",
             f"{'generator':10s} {'task':11s} {'n':>4s} {'cover':>6s} {'rate':>6s} {'CP 95%':>14s} "
             f"{'boot':>6s} {'prof':>6s} {'med width':>9s} {'med|err|':>8s} {'bias':>7s} {'phi row':>7s} {'phi ckpt':>8s} {'unrel':>5s} {'fail':>4s}"]
    keys = sorted({(r["generator"], r["task"]) for r in rows})
    for gen in GENERATORS:
        for group in [k for k in keys if k[0] == gen] + [(gen, "ALL")]:
            sel = [r for r in rows if r["generator"] == gen and (group[1] == "ALL" or r["task"] == group[1])]
            if not sel:
                continue
            n, k = len(sel), sum(r["covered"] for r in sel)
            ok = [r for r in sel if r.get("lo") is not None and r.get("mle") is not None]
            boot = sum(r["boot_lo"] is not None and r["boot_lo"] <= r["truth"] <= r["boot_hi"] for r in ok)
            prof = sum(r["prof_lo"] is not None and r["prof_lo"] <= r["truth"] <= r["prof_hi"] for r in ok)
            width = np.median([r["hi"] - r["lo"] for r in ok]) if ok else float("nan")
            err = np.array([r["mle"] - r["truth"] for r in ok]) if ok else np.array([np.nan])
            phis = [r["phi"] for r in ok if r.get("phi") is not None]
            phic = [r["phi_ckpt"] for r in ok if r.get("phi_ckpt") is not None]
            lo, hi = _ci(k, n)
            lines.append(f"{gen:10s} {group[1]:11s} {n:4d} {k:6d} {k / n:6.3f} [{lo:.3f}, {hi:.3f}] "
                         f"{boot:6d} {prof:6d} {width:9.4f} {np.median(np.abs(err)):8.4f} {np.median(err):+7.4f} "
                         f"{np.median(phis) if phis else float('nan'):7.2f} {np.median(phic) if phic else float('nan'):8.2f} "
                         f"{sum(r.get('reliable') is False for r in sel):5d} {n - len(ok):4d}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="datasets per generator")
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="12 datasets per generator, n_boot 100")
    parser.add_argument("--before", action="store_true", help="the estimator without the over-dispersion correction")
    parser.add_argument("--dispersion", choices=("pearson", "row", "none"),
                        help="fitting.uncertainty.DEFAULT_DISPERSION for this run (default: the shipped one)")
    parser.add_argument("--both", action="store_true", help="--before, then the shipped default (before/after tables)")
    parser.add_argument("--generator", choices=GENERATORS, action="append", help="default: both")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--out", help="also write one JSON line per task fit here")
    parser.add_argument("--table", nargs="+", metavar="JSONL", help="only print the table of earlier --out files")
    args = parser.parse_args()
    if args.table:  # one table per file and setting
        for path in args.table:
            rows = [json.loads(line) for line in open(path)]
            for name in sorted({r.get("dispersion", "default") for r in rows}):
                print(table([r for r in rows if r.get("dispersion", "default") == name], f"{path}, dispersion {name}"))
        return
    if args.quick:
        args.n, args.n_boot = 12, 100
    modes = ["none", None] if args.both else ["none" if args.before else args.dispersion]
    gens = args.generator or list(GENERATORS)
    # both modes in one pool: the same worker processes (the same code) fit before and after
    jobs = [(g, s, args.n_boot, mode) for mode in modes for g in gens
            for s in range(args.first_seed, args.first_seed + args.n)]
    t0, load0 = time.perf_counter(), os.getloadavg()
    cpu0 = _cpu()
    rows = []
    sink = open(args.out, "w") if args.out else None
    with Pool(args.procs, initializer=_init) as pool:
        for recs in pool.imap_unordered(run_one, jobs):
            rows.extend(recs)
            if sink:
                for r in recs:
                    sink.write(json.dumps(r) + "\n")
                sink.flush()
    if sink:
        sink.close()
    wall = time.perf_counter() - t0
    cpu = _cpu() - cpu0
    for mode in modes:
        name = mode or "default"
        label = (f"{'before' if mode == 'none' else 'after'} (dispersion {name}): {args.n} datasets per generator "
                 f"from seed {args.first_seed}, n_boot {args.n_boot}")
        sel = [r for r in rows if r.get("dispersion", "default") == name]
        print(table(sel, label))
        for r in [r for r in sel if "error" in r][:5]:
            print(f"  error: {r['generator']} seed {r['seed']} {r['task']}: {r['error']}")
    cpu_by = {m or "default": sum(r.get("cpu_s", 0.0) for r in rows if r.get("dispersion") == (m or "default")) for m in modes}
    print(f"wall {wall:.1f} s, CPU {cpu:.1f} s ({args.procs} processes; per setting, fits only: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in cpu_by.items())
          + f"); load average before {load0[0]:.2f}, after {os.getloadavg()[0]:.2f} (1-min; the machine is shared)")


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the pool's workers)."""
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    return child.ru_utime + child.ru_stime + time.process_time()


if __name__ == "__main__":
    main()
