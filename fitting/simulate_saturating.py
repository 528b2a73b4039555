r"""A second simulator whose generating process is deliberately NOT the project's emergence law.

``fitting.simulate`` draws data from the law the fit assumes (a ReLU in pretraining loss, elbow
``k (log D)^α + C``, binomial counts): a fit that passes on it may only be passing on its own
assumptions. This module draws results folders (same tables as ``fitting.simulate``, written
with ``fitting.schema.write_results``) from a different, plausible process, for gate-rate and
coverage benchmarks:

* **Saturating sigmoid in loss.** Per task, the expected accuracy of a checkpoint of true
  pretraining loss :math:`L`, finetuned on :math:`D` examples, is

  .. math::

      \bar p(L, D) = c + (u - c)\,\sigma\!\left(\frac{E(D) - L}{w}\right)

  with chance :math:`c`, a ceiling :math:`u < 1` (0.6–0.9 by default), a width :math:`w`
  (nats), and :math:`\sigma` the logistic function. Smooth, no kink, and it saturates below 1.
* **Elbow moves with D by another law.** Linear in :math:`\log D` near :math:`D_0`, saturating
  at a maximum shift :math:`s`:

  .. math::

      E(D) = E_0 + s\left(1 - e^{-\log(D/D_0)/\tau}\right) \quad (D \ge D_0)

  (slope :math:`s/\tau` nats per e-fold of :math:`D` at :math:`D_0`).
* **Few-shot at** :math:`D_0 = 5` by default (not 1): the few-shot curve is :math:`\bar p(L, D_0)`,
  i.e. its midpoint is :math:`E_0`. Fit these folders with ``--d0`` equal to the folder's
  ``metadata["d0"]``.
* **Over-dispersion.** Between checkpoints: each (task, checkpoint) gets one accuracy shift
  :math:`\eta \sim N(0, \text{checkpoint\_sd})` shared by all its evaluations (few-shot and
  finetuned). Between items: each evaluation's item-level success probability is
  :math:`q \sim \mathrm{Beta}(\phi p, \phi (1-p))` with :math:`p = \mathrm{clip}(\bar p + \eta)`,
  and the count is :math:`\mathrm{Binomial}(n, q)` (beta-binomial, concentration :math:`\phi`).
  Finetuning subsets also jitter the elbow by :math:`N(0, \text{subset\_sd})` nats.
* **Noisy loss.** The ``pretrain_loss`` written to ``checkpoints.parquet`` is the true loss plus
  :math:`N(0, \text{loss\_noise\_sd})`; accuracies are drawn from the true loss.

**The true emergence point** (``metadata["truth"][task]["emergence_loss"]``): the pretraining
loss at which the *expected* few-shot accuracy (no checkpoint shift, no noise) has left chance by
``EMERGENCE_FRACTION`` (5%) of its span :math:`u - c`:

.. math::

    L^\star = E_0 - w\,\mathrm{logit}(0.05) = E_0 + w \log 19 \approx E_0 + 2.94\,w .

Checkpoints with loss below :math:`L^\star` are "post-emergence". The sigmoid's midpoint
:math:`E_0` and the generating parameters are stored beside it. The ReLU law's elbow is not
defined for this process; a coverage benchmark scores a prediction against :math:`L^\star` and
can report the distance to :math:`E_0` too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from fitting.schema import FEW_SHOT, FINETUNE, ResultsFolder, write_results
from fitting.simulate import simulate_checkpoints

EMERGENCE_FRACTION = 0.05  # the emergence point: few-shot accuracy at chance + 5% of its span
GENERATOR = "fitting.simulate_saturating"


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, float)))


@dataclass(frozen=True)
class SaturatingTask:
    """One task's generating process (see the module docstring for the formulas)."""

    name: str
    chance: float
    ceiling: float  # accuracy the curve saturates at, below 1
    width: float  # nats: the sigmoid's scale in pretraining loss
    E0: float  # nats: the few-shot (D0) sigmoid midpoint
    shift_max: float  # nats: how far finetuning can move the midpoint (D -> infinity)
    tau: float  # e-folds of D/D0 over which the shift saturates

    def __post_init__(self) -> None:
        if not 0.0 <= self.chance < self.ceiling < 1.0:
            raise ValueError(f"{self.name}: need 0 <= chance < ceiling < 1, got {self.chance}, {self.ceiling}")
        if self.width <= 0 or self.tau <= 0 or self.shift_max < 0:
            raise ValueError(f"{self.name}: width and tau must be > 0 and shift_max >= 0")

    def elbow(self, n_train, d0: float) -> np.ndarray:
        """The sigmoid midpoint E(D) (nats) after finetuning on ``n_train`` examples."""
        x = np.log(np.maximum(np.asarray(n_train, float), d0) / d0)
        return self.E0 + self.shift_max * (1.0 - np.exp(-x / self.tau))

    def accuracy(self, loss, n_train, d0: float) -> np.ndarray:
        """Expected accuracy (no checkpoint shift, no item noise) at true ``loss``."""
        return self.chance + (self.ceiling - self.chance) * _sigmoid((self.elbow(n_train, d0) - np.asarray(loss, float)) / self.width)

    @property
    def emergence_loss(self) -> float:
        """L*: expected few-shot accuracy = chance + EMERGENCE_FRACTION x (ceiling - chance)."""
        f = EMERGENCE_FRACTION
        return float(self.E0 - self.width * np.log(f / (1.0 - f)))

    def truth(self) -> dict:
        return dict(emergence_loss=self.emergence_loss, emergence_fraction=EMERGENCE_FRACTION,
                    midpoint_loss=self.E0, chance=self.chance, ceiling=self.ceiling, width=self.width,
                    shift_max=self.shift_max, tau=self.tau)


# Emergence points L* 2.50-2.58 nats: a few of the 15 default checkpoints (losses 3.35 -> 2.19)
# are past them; 1024 examples move the midpoint by 0.3-0.45 nats.
DEFAULT_TASKS = (
    SaturatingTask("sat_mc4", chance=0.25, ceiling=0.85, width=0.10, E0=2.25, shift_max=0.45, tau=1.5),
    SaturatingTask("sat_gen", chance=0.0, ceiling=0.6, width=0.12, E0=2.20, shift_max=0.35, tau=2.0),
    SaturatingTask("sat_binary", chance=0.5, ceiling=0.9, width=0.08, E0=2.30, shift_max=0.50, tau=2.5),
)


@dataclass(frozen=True)
class Design:
    """What was measured, and the noise of the process (checkpoints as ``fitting.simulate``)."""

    family_params: tuple[float, ...] = (4e8, 1.2e9, 4e9)
    tokens_per_param: tuple[float, ...] = (3.0, 6.0, 12.0, 24.0, 48.0)  # 15 checkpoints, loss 3.35 -> 2.19
    data_levels: tuple[int, ...] = (16, 64, 256, 1024)
    subset_seeds: tuple[int, ...] = (1, 2)
    n_items: int = 600
    d0: float = 5.0  # the few-shot curve's data level (not 1)
    item_concentration: float = 500.0  # φ of the beta-binomial (smaller: more over-dispersed)
    checkpoint_sd: float = 0.01  # accuracy shift per (task, checkpoint)
    subset_sd: float = 0.02  # nats of elbow jitter per finetuning subset
    loss_noise_sd: float = 0.01  # nats of noise in the recorded pretraining loss
    tasks: tuple[SaturatingTask, ...] = field(default=DEFAULT_TASKS)

    @property
    def n_checkpoints(self) -> int:
        return len(self.family_params) * len(self.tokens_per_param)


def random_tasks(rng: np.random.Generator, n_tasks: int = 3, loss_range: tuple[float, float] = (2.19, 3.35)) -> tuple[SaturatingTask, ...]:
    """``n_tasks`` tasks with varied chance, ceiling (0.6-0.9), width, shift and emergence point
    (L* in the lower third of ``loss_range``, so some checkpoints are past it)."""
    lo, hi = loss_range
    chances = (0.0, 0.2, 0.25, 0.5)
    out = []
    for i in range(n_tasks):
        chance = float(rng.choice(chances))
        ceiling = float(rng.uniform(max(0.6, chance + 0.25), 0.9))
        width = float(rng.uniform(0.06, 0.15))
        l_star = float(rng.uniform(lo + 0.25 * (hi - lo), lo + 0.4 * (hi - lo)))
        f = EMERGENCE_FRACTION
        out.append(SaturatingTask(f"sat_{i}", chance=chance, ceiling=ceiling, width=width,
                                  E0=l_star + width * np.log(f / (1 - f)),
                                  shift_max=float(rng.uniform(0.25, 0.55)), tau=float(rng.uniform(1.0, 3.0))))
    return tuple(out)


def simulate_results(design: Design, true_loss: np.ndarray, names: list[str], rng: np.random.Generator) -> pl.DataFrame:
    frames = []
    n = design.n_items
    for task in design.tasks:
        shift = rng.normal(0.0, design.checkpoint_sd, len(true_loss))  # per (task, checkpoint)
        cells = [(FEW_SHOT, 0, 0, 0.0)] + [
            (FINETUNE, d, s, rng.normal(0.0, design.subset_sd))
            for d in design.data_levels for s in design.subset_seeds
        ]
        for setting, n_train, seed, jitter in cells:
            d = design.d0 if setting == FEW_SHOT else n_train
            p = np.clip(task.accuracy(true_loss - jitter, d, design.d0) + shift, 1e-4, 1 - 1e-4)
            phi = design.item_concentration
            q = rng.beta(phi * p, phi * (1.0 - p))
            correct = rng.binomial(n, q)
            frames.append(pl.DataFrame(dict(
                checkpoint=names, task=task.name, setting=setting, n_train=n_train,
                subset_seed=seed, metric="accuracy", value=correct / n,
                n_items=n, chance=task.chance,
            )))
    return pl.concat(frames)


def simulate(design: Design = Design(), seed: int = 0, out: str | Path | None = None) -> ResultsFolder:
    """Draw one dataset from ``design``; write it to ``out`` when given.

    Metadata: ``simulated`` (True), ``generator``, ``seed``, ``d0`` (fit with ``--d0`` this) and
    ``truth`` (per task, ``emergence_loss`` = L* and the generating parameters).
    """
    rng = np.random.default_rng(seed)
    checkpoints = simulate_checkpoints(design)
    true_loss = checkpoints["pretrain_loss"].to_numpy()
    results = simulate_results(design, true_loss, checkpoints["checkpoint"].to_list(), rng)
    measured = true_loss + rng.normal(0.0, design.loss_noise_sd, len(true_loss))
    checkpoints = checkpoints.with_columns(pl.Series("pretrain_loss", measured))
    meta = {"simulated": True, "generator": GENERATOR, "seed": seed, "d0": design.d0,
            "truth": {t.name: t.truth() for t in design.tasks}}
    if out is None:
        from fitting.schema import validate_checkpoints, validate_results

        ckpts = validate_checkpoints(checkpoints)
        return ResultsFolder(ckpts, validate_results(results, ckpts), None, meta)
    return write_results(out, checkpoints, results, metadata=meta)
