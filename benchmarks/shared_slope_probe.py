"""Probe of one assumption of the paper's law: every curve (few-shot, each data level) rises
with the same slope A past its elbow.

Fits, per task, the paper's law and a variant with one slope per curve (binomial MLE,
multi-start L-BFGS-B; not a product law form), on all checkpoints and on every FLOP cutoff
before emergence, and prints each prediction's error against the ground truth.

    python benchmarks/shared_slope_probe.py datasets_cache/microladder ml_topic ml_topic_short

What it can and cannot say: on all checkpoints the variant's few-shot elbow is fitted from
the few-shot curve's own rise, so its small error there is close to circular; it shows how
much the shared slope moves the paper's law. Before emergence the few-shot slope is not
identified, and the variant's prediction is the finetuned elbows' extrapolation alone.
(docs/microladder.md, "Seven more attempts", reports what it printed.)
"""

from __future__ import annotations

import sys

import numpy as np
from scipy import optimize

from fitting.backtest import cutoff_values
from fitting.data import TaskData
from fitting.fit import EmergenceLawFit
from fitting.ground_truth import fit_ground_truth
from fitting.schema import load_results


def fit_slope_per_curve(data: TaskData, n_starts: int = 24, seed: int = 0) -> tuple[float, np.ndarray]:
    """(few-shot elbow C, slope per curve: few-shot first, then each data level ascending)."""
    levels = sorted(set(data.n_train[~data.few_shot].tolist()))
    curve = np.array([0 if fs else levels.index(n) + 1 for fs, n in zip(data.few_shot, data.n_train)])
    log_d = np.where(data.few_shot, 0.0, np.log(np.maximum(data.n_train, 1)))
    hits = np.round(data.value * data.n_items)

    def nll(theta):
        base, delta, c, k, alpha, slopes = *theta[:5], theta[5:]
        elbow = c + k * log_d**alpha  # the paper's log power law, D0 = 1
        p = base + np.where(data.few_shot, delta, 0.0) + slopes[curve] * np.maximum(elbow - data.loss, 0.0)
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return -np.sum(hits * np.log(p) + (data.n_items - hits) * np.log1p(-p))

    lo, hi = float(data.loss.min()), float(data.loss.max())
    box = [(0, 1), (-1, 1), (max(0.0, lo - 3), hi + 3), (0, 10), (0.02, 4)] + [(1e-6, 100)] * (len(levels) + 1)
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(n_starts):
        start = [data.chance, 0.0, rng.uniform(lo - 0.5, hi + 0.5), rng.uniform(0, 0.3), rng.uniform(0.3, 2.0),
                 *rng.uniform(0.05, 1.0, len(levels) + 1)]
        res = optimize.minimize(nll, start, method="L-BFGS-B", bounds=box)
        best = res if best is None or res.fun < best.fun else best
    return float(best.x[2]), best.x[5:]


def main(folder: str, tasks: list[str]) -> None:
    results = load_results(folder)
    for task in tasks:
        data = TaskData.from_folder(results, task)
        truth = fit_ground_truth(data).elbow_loss
        if truth is None:
            print(f"{task}: never emerged, nothing to compare")
            continue
        shared = EmergenceLawFit().fit(data).emergence_loss_
        free, slopes = fit_slope_per_curve(data)
        print(f"{task}: ground truth {truth:.3f}; all {data.n_checkpoints} checkpoints: shared slope "
              f"{shared:.3f} ({shared - truth:+.3f}), slope per curve {free:.3f} ({free - truth:+.3f}); "
              f"slopes few-shot, then D = {sorted(set(data.data_levels))}: {np.round(slopes, 3).tolist()}")
        for flops in cutoff_values(data, 3):
            cut = data.select_max_flops(flops)
            if cut.ckpt_loss.min() >= truth:  # every kept checkpoint before emergence
                shared = EmergenceLawFit().fit(cut).emergence_loss_
                free, _ = fit_slope_per_curve(cut)
                print(f"  {cut.n_checkpoints:3d} checkpoints before emergence: shared {shared - truth:+.3f}, "
                      f"per curve {free - truth:+.3f}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python benchmarks/shared_slope_probe.py RESULTS_DIR TASK [TASK ...]")
    main(sys.argv[1], sys.argv[2:])
