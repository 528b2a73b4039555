"""Simulate a valid results folder from a known emergence law (tests, benchmarks, the demo).

Pretraining losses come from a Chinchilla-style law L(N, D) = E + a/N^α + b/D^β (Hoffmann et
al., 2022, their fitted constants), so each family's loss-vs-FLOPs curve is a saturating power
law. Accuracy on each evaluation is a binomial draw of ``n_items`` items from the task's law,
with the elbow of each finetuning subset jittered by ``subset_sd`` nats (different random
subsets of the same size help differently: why the method needs several subset seeds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from fitting import law as law_
from fitting.schema import FEW_SHOT, FINETUNE, ResultsFolder, write_results

# Hoffmann et al. (2022) fitted constants.
CHINCHILLA = dict(E=1.69, a=406.4, alpha=0.34, b=410.7, beta=0.28)


def chinchilla_loss(params, tokens, c=CHINCHILLA):
    """Pretraining loss in nats/token for a model of ``params`` trained on ``tokens``."""
    params, tokens = np.asarray(params, float), np.asarray(tokens, float)
    return c["E"] + c["a"] / params ** c["alpha"] + c["b"] / tokens ** c["beta"]


@dataclass(frozen=True)
class TaskTruth:
    """The known law of one simulated task; its emergence point is E_θ(D_0)."""

    name: str
    chance: float
    A: float  # accuracy per nat past the elbow
    k: float
    alpha: float
    C: float  # = the few-shot elbow when D_0 = 1
    delta: float = 0.0
    spec: law_.LawSpec = law_.LawSpec()

    @property
    def theta(self) -> np.ndarray:
        values = dict(A=self.A, B=self.chance, k=self.k, alpha=self.alpha, C=self.C,
                      delta=self.delta, U=1.0)
        return np.array([values[name] for name in self.spec.param_names])

    @property
    def emergence_loss(self) -> float:
        return float(law_.emergence_loss(self.spec, self.theta))


# Shaped like the paper's curves: few-shot accuracy leaves chance late in the ladder (2-3
# checkpoints past the elbow), rises by ~0.6-1.0 per nat, finetuning shifts the elbow by
# ~0.15 nats (16 examples) to ~0.45 nats (1024), and no curve reaches the 1.0 ceiling.
DEFAULT_TASKS = (
    TaskTruth("sim_mmlu", chance=0.25, A=1.0, k=0.06, alpha=1.0, C=2.40),
    TaskTruth("sim_gsm8k", chance=0.0, A=0.8, k=0.05, alpha=1.2, C=2.35),
    TaskTruth("sim_csqa", chance=0.2, A=1.0, k=0.08, alpha=0.9, C=2.50),
    TaskTruth("sim_cola", chance=0.5, A=0.6, k=0.05, alpha=1.1, C=2.45),
)


@dataclass(frozen=True)
class Design:
    """What was measured: the checkpoint ladder, the data levels, the subsets, the items."""

    family_params: tuple[float, ...] = (4e8, 1.2e9, 4e9)
    tokens_per_param: tuple[float, ...] = (4.0, 8.0, 16.0, 32.0)  # checkpoints along each run: loss 3.26 -> 2.23
    data_levels: tuple[int, ...] = (16, 64, 256, 1024)
    subset_seeds: tuple[int, ...] = (1, 2)
    n_items: int = 1000
    subset_sd: float = 0.01  # elbow jitter (nats) between random finetuning subsets
    tasks: tuple[TaskTruth, ...] = field(default=DEFAULT_TASKS)

    @property
    def n_checkpoints(self) -> int:
        return len(self.family_params) * len(self.tokens_per_param)


def simulate_checkpoints(design: Design) -> pl.DataFrame:
    rows = []
    for n in design.family_params:
        family = f"sim-{n / 1e6:.0f}M"
        for tpp in design.tokens_per_param:
            tokens = int(n * tpp)
            rows.append(dict(
                checkpoint=f"{family}@{tokens / 1e9:.1f}B", family=family, params=int(n),
                tokens=tokens, pretrain_loss=float(chinchilla_loss(n, tokens)),
                flops=6.0 * n * tokens,
            ))
    return pl.DataFrame(rows)


def simulate_results(design: Design, checkpoints: pl.DataFrame, rng: np.random.Generator) -> pl.DataFrame:
    names = checkpoints["checkpoint"].to_list()
    loss = checkpoints["pretrain_loss"].to_numpy()
    frames = []
    for task in design.tasks:
        cells = [(FEW_SHOT, 0, 0, 0.0)] + [
            (FINETUNE, d, s, rng.normal(0.0, design.subset_sd))
            for d in design.data_levels for s in design.subset_seeds
        ]
        for setting, n_train, seed, jitter in cells:
            p = law_.performance(task.spec, task.theta, loss + jitter, np.full(len(loss), n_train),
                                 np.full(len(loss), setting == FEW_SHOT))
            p = np.clip(p, 0.0, 1.0)
            correct = rng.binomial(design.n_items, p)
            frames.append(pl.DataFrame(dict(
                checkpoint=names, task=task.name, setting=setting, n_train=n_train,
                subset_seed=seed, metric="accuracy", value=correct / design.n_items,
                n_items=design.n_items, chance=task.chance,
            )))
    return pl.concat(frames)


def simulate(design: Design = Design(), seed: int = 0, out: str | Path | None = None) -> ResultsFolder:
    """Draw one dataset from ``design``; write it to ``out`` when given.

    The truth (each task's emergence loss and parameters) travels in the metadata under
    ``simulated``, so nobody mistakes a simulated folder for measurements.
    """
    rng = np.random.default_rng(seed)
    checkpoints = simulate_checkpoints(design)
    results = simulate_results(design, checkpoints, rng)
    truth = {t.name: dict(emergence_loss=t.emergence_loss,
                          **dict(zip(t.spec.param_names, t.theta.tolist())))
             for t in design.tasks}
    meta = {"simulated": True, "seed": seed, "truth": truth}
    if out is None:
        from fitting.schema import validate_checkpoints, validate_results

        ckpts = validate_checkpoints(checkpoints)
        return ResultsFolder(ckpts, validate_results(results, ckpts), None, meta)
    return write_results(out, checkpoints, results, metadata=meta)
