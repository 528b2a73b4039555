"""Coverage of the 90% emergence-loss intervals by number of checkpoints kept (SIMULATED data).

    OMP_NUM_THREADS=1 python benchmarks/coverage_cutoffs.py [--seeds 5] [--n-boot 200] [--tasks 4]

For each seed, ``fitting.simulate.simulate(Design(), seed)`` (the default 4-task dataset) is
backtested as ``fitting.backtest`` does: for each cutoff keeping K = 3..12 checkpoints (the
cheapest K by FLOPs) the task is refitted by ``fitting.predict.predict_data`` and its intervals
are checked against (a) the true emergence loss of the simulation and (b) the all-checkpoint
ground truth (the few-shot elbow the backtest scores against). Printed per K: how often the
bootstrap 5-95% interval, the profile-likelihood 90% interval and the *reported* interval
(``emergence_loss_p05``/``_p95`` of the record) cover each, how many bootstrap intervals are
degenerate (width < 1e-3 nats), how many records are flagged ``interval_reliable = False``,
and fits that raised.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np

from fitting.data import TaskData

from fitting.ground_truth import fit_ground_truth
from fitting.predict import FitConfig, predict_data
from fitting.simulate import Design, simulate


def _inside(lo, hi, x) -> bool | None:
    if lo is None or hi is None or x is None:
        return None
    return bool(lo - 1e-9 <= x <= hi + 1e-9)


def run(seeds: int, n_boot: int, n_tasks: int, first_seed: int) -> dict:
    design = Design()
    table = defaultdict(lambda: defaultdict(list))
    for seed in range(first_seed, first_seed + seeds):
        folder = simulate(design, seed=seed)
        truth = folder.metadata["truth"]
        for task in folder.tasks[:n_tasks]:
            data = TaskData.from_folder(folder, task)
            gt = fit_ground_truth(data)
            order = np.sort(data.ckpt_flops)
            for k in range(3, data.n_checkpoints + 1):
                sub = data.select_max_flops(order[k - 1])
                row = table[k]
                try:
                    rec = predict_data(sub, FitConfig(n_boot=n_boot, seed=seed), ground_truth=gt).to_json()
                except Exception as err:  # noqa: BLE001 - counted and shown, the point of the script
                    row["raised"].append(f"{task} seed {seed}: {type(err).__name__}: {err}")
                    continue
                if rec["emergence_loss"] is None:
                    row["no_fit"].append(1)
                    continue
                tl, g = truth[task]["emergence_loss"], gt.elbow_loss
                b05, b95 = rec.get("emergence_loss_boot_p05", rec["emergence_loss_p05"]), rec.get(
                    "emergence_loss_boot_p95", rec["emergence_loss_p95"])
                plo, phi = rec["emergence_loss_profile_low"], rec["emergence_loss_profile_high"]
                row["boot_truth"].append(_inside(b05, b95, tl))
                row["boot_gt"].append(_inside(b05, b95, g))
                row["prof_truth"].append(_inside(plo, phi, tl))
                row["prof_gt"].append(_inside(plo, phi, g))
                row["rep_truth"].append(_inside(rec["emergence_loss_p05"], rec["emergence_loss_p95"], tl))
                row["rep_gt"].append(_inside(rec["emergence_loss_p05"], rec["emergence_loss_p95"], g))
                row["degenerate"].append(b95 - b05 < 1e-3)
                row["unreliable"].append(rec.get("interval_reliable") is False)
                row["width"].append(rec["emergence_loss_p95"] - rec["emergence_loss_p05"])
                row["abs_err"].append(abs(rec["emergence_loss"] - tl))
    return table


def _frac(values) -> str:
    known = [v for v in values if v is not None]
    return f"{sum(known):3d}/{len(known):<3d}" if known else "  -    "


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=4)
    args = parser.parse_args()
    start = time.perf_counter()
    table = run(args.seeds, args.n_boot, args.tasks, args.first_seed)
    print(f"SIMULATED: {args.seeds} seeds x {args.tasks} tasks, n_boot {args.n_boot}; cover = interval "
          "contains the true emergence loss (truth) / the all-checkpoint ground truth (gt)")
    print("  K | boot truth  boot gt | prof truth  prof gt | reported truth  rep gt | degen unrel | "
          "med width  med |err| | raised")
    for k in sorted(table):
        r = table[k]
        print(f"{k:3d} | {_frac(r['boot_truth'])}  {_frac(r['boot_gt'])} | {_frac(r['prof_truth'])}  "
              f"{_frac(r['prof_gt'])} | {_frac(r['rep_truth'])}      {_frac(r['rep_gt'])} | "
              f"{sum(r['degenerate']):5d} {sum(r['unreliable']):5d} | "
              f"{np.median(r['width']) if r['width'] else np.nan:9.3f}  "
              f"{np.median(r['abs_err']) if r['abs_err'] else np.nan:8.3f} | {len(r['raised'])}")
    for k in sorted(table):
        for msg in table[k]["raised"]:
            print(f"  K={k} raised: {msg}")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
