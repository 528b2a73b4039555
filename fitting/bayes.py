r"""Bayesian hierarchical emergence law (PyMC), with diagnostics that gate the answer.

The likelihood is the maximum-likelihood fit's (``fitting.law``), written again in PyTensor:
for evaluation i of task t on a checkpoint of pretraining loss :math:`L_i`, finetuned on
:math:`D_i` examples (:math:`D_0` for few-shot), with :math:`y_i` of :math:`n_i` items correct,

.. math::

    y_i &\sim \mathrm{Binomial}\big(n_i,\ \mathrm{clip}(p_i, \epsilon, 1-\epsilon)\big) \\
    p_i &= B_t + \Delta_t [\text{few-shot}] + A_t\, h\big(E_t(D_i) - L_i\big) \\
    E_t(D) &= k_t (\log D)^{\alpha_t} + C_t \quad\text{or}\quad k_t D^{\alpha_t} + C_t

Coordinates. The sampler does not see (k, α, C) directly: given the data they lie on a
curved ridge. Each task's elbow law is written with a reference size x_ref (the geometric mean
of the finetuning levels' x = log D, or D for the power law) in Box-Cox form,

.. math::

    E_t(D) = E_{\mathrm{ref},t} + g_t \, \frac{(x/x_\mathrm{ref})^{\alpha_t} - 1}{\alpha_t},
    \qquad k_t = \frac{g_t}{\alpha_t x_\mathrm{ref}^{\alpha_t}}, \quad C_t = E_{\mathrm{ref},t} - g_t/\alpha_t

which is the same law (k and C are stored as deterministics): E_ref is the elbow at the
reference size, g the elbow's slope per e-fold of x there, α its curvature.

Hierarchy (partial pooling across tasks, so a task with thin data borrows strength):

.. math::

    \log A_t \sim N(\mu_A, \sigma_A), \quad \log g_t \sim N(\mu_g, \sigma_g), \quad
    \log \alpha_t \sim N(\mu_\alpha, \sigma_\alpha)

with hyperpriors scaled to what the design can identify (:class:`Priors`; docs/bayes.md). The
between-task sds are LogNormal, not HalfNormal: with a handful of tasks a prior with mass at
sigma = 0 gives the (mu, sigma) funnel that made most prior-drawn datasets diverge. E_ref
(normal around the midpoint of the task's losses, 95% inside its loss range), the base B_t
(logit-normal around the task's chance level) and Δ_t are per task; the few-shot base
B_t + Δ_t is invlogit(logit B_t + δ_t) (:func:`delta_logit_sd`), so it stays in (0, 1).
Optional extra level: each
finetuning subset (task, D, subset seed) shifts its elbow by ε_s ~ N(0, σ_s).

One task alone (a backtest's refits): there is no population to learn (mu, sigma) from, so the
task's log A, log g, log α get the population prior's marginal Normal (mean of mu, variance
sd_mu² + E[σ²]) and the hyperparameters are not sampled: sampled, they formed a funnel (mu's
width is sigma) where a fresh install's backtest met a divergent transition (issue 16).

Centred parameterisation by default (the issue measured ~200 divergences and 10x the time for
the non-centred form with informative binomial data); ``centered=False`` selects it.

Sampler defaults (issue 16): nutpie when installed, else PyMC's NUTS
(``SamplerConfig(sampler="auto")``), ``target_accept=0.95``, 2000 tuning steps and nutpie's
low-rank mass matrix (38/40 simulated datasets pass the gate: docs/bayes.md). NUTS starts at each task's maximum-likelihood fit (``mle_start``): from PyMC's default
jittered start chains got stuck on the flat parts of the clipped ReLU. The ReLU kink is kept
(the paper's law); ``LawSpec(hinge="softplus", temperature=...)`` smooths it inside the sampler
(it did not change tree depth or step size on the default simulated data).

Compilation dominates small fits: the item counts are a ``pm.Data`` container, so one model per
design and process serves every dataset of that design (:func:`model_for`, and for nutpie
:func:`compiled_nutpie_for`: numba compiles once, ``with_data`` swaps the counts in and each fit
gets its own maximum-likelihood start).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from emergence.atomic import atomic_path
from emergence.errors import DiagnosticsError, FitError, MissingExtraError
from fitting import law as law_
from fitting.likelihood import EPS  # probabilities are clipped to [EPS, 1 - EPS] (a saturated curve has p = 1)
from fitting.schema import ResultsFolder
from fitting.uncertainty import PERCENTILES

SIGMA_LOG_SD = 0.5  # between-task sds ~ LogNormal(log scale, 0.5): 95% within x/2.7 of scale
TASK_VARS = ("A", "B", "k", "alpha", "C", "delta", "emergence_loss")
BAYES_FORMS = tuple(n for n, s in law_.LAW_FORMS.items() if not s.ceiling)  # the model has no ceiling


def _import_pymc():
    try:
        import pymc as pm
        import pytensor.tensor as pt
    except ImportError:  # pragma: no cover - depends on the install
        raise MissingExtraError("pymc", "bayes") from None
    return pm, pt


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Priors:
    """Priors scaled to what a design can identify. Loss scales are nats/token; A is accuracy per nat.

    ``*_mu`` are (mean, sd) of a Normal on the population mean of the log parameter;
    ``*_sigma`` the median of a LogNormal(log median, ``SIGMA_LOG_SD``) on the population sd
    (between-task spread; zero-avoiding, see the module docstring).
    A misspelt key fails loudly: build from a dict with :meth:`from_dict`.
    """

    log_A_mu: tuple[float, float] = (float(np.log(0.7)), 0.5)  # A ~ 0.7 acc/nat, x/2.7 at 95%
    log_A_sigma: float = 0.3
    log_g_mu: tuple[float, float] = (float(np.log(0.2)), 0.5)  # elbow slope g (nats per e-fold of x)
    log_g_sigma: float = 0.3
    log_alpha_mu: tuple[float, float] = (0.0, 0.3)  # α near 1 for the log power law
    log_alpha_sigma: float = 0.2
    E_ref_sd: float = 0.25  # E_ref ~ N(midpoint of the task's losses, E_ref_sd · max(loss range, 0.5))
    B_logit_sd: float = 0.5  # logit B_t ~ N(logit(chance_t), B_logit_sd)
    delta_sd: float = 0.05  # few-shot base shift Δ_t: ~delta_sd accuracy near chance (a logit shift, delta_logit_sd)
    subset_sigma: float = 0.02  # σ_s ~ HalfNormal(subset_sigma) nats (extra level only)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Priors":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise FitError(f"unknown prior {unknown[0]!r}; known priors: {', '.join(sorted(known))}")
        return cls(**values)

    @classmethod
    def for_law(cls, spec: law_.LawSpec) -> "Priors":
        """Defaults per elbow form (the prior on log α is the form's: ``law.ELBOW_SHAPES``)."""
        return cls(log_alpha_mu=spec.elbow_shape.log_alpha_prior)


def default_sampler() -> str:
    """"nutpie" when it is installed (faster, and its compiled model is reused), else "pymc"."""
    import importlib.util

    return "nutpie" if importlib.util.find_spec("nutpie") is not None else "pymc"


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample. ``sampler="nutpie"`` needs the nutpie extra; seeds make runs reproducible.

    ``sampler="auto"`` (the default) becomes "nutpie" when nutpie is installed, else "pymc" (the
    resolved name is what the config holds, hashes and saves). ``target_accept`` 0.95 (PyMC's
    default is 0.8): see docs/bayes.md, issue 16 (a lone divergent transition failed the gate).
    """

    sampler: Literal["auto", "pymc", "nutpie"] = "auto"
    chains: int = 4
    draws: int = 1000
    tune: int = 2000  # issue 16: with the low-rank mass matrix, 38/40 simulated datasets pass the gate
    cores: int = 2
    seed: int = 0
    target_accept: float = 0.95
    progressbar: bool = True
    low_rank: bool = True  # nutpie only: low-rank modified mass matrix adaptation (no divergences, docs/bayes.md)

    def __post_init__(self) -> None:
        if self.sampler not in ("auto", "pymc", "nutpie"):
            raise FitError(f"sampler must be 'auto', 'pymc' or 'nutpie', got {self.sampler!r}")
        if self.sampler == "auto":
            object.__setattr__(self, "sampler", default_sampler())
        if not 0 < self.target_accept < 1:
            raise FitError(f"target_accept must be in (0, 1), got {self.target_accept!r}")
        for name in ("chains", "draws", "tune", "cores"):
            if getattr(self, name) < 1:
                raise FitError(f"{name} must be >= 1, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Gate:
    """Diagnostics every task must pass before its numbers are reported."""

    r_hat_max: float = 1.01
    ess_min: float = 400.0  # bulk and tail
    max_divergences: int = 0


@dataclass(frozen=True)
class BayesConfig:
    """Everything that determines a posterior (hashed into the saved netCDF)."""

    law: law_.LawSpec = law_.LawSpec()
    priors: Priors | None = None  # None: Priors.for_law(law)
    sampler: SamplerConfig = SamplerConfig()
    centered: bool = True
    subset_effect: bool = False  # extra level: elbow jitter per finetuning subset
    gate: Gate = Gate()
    allow_bad_diagnostics: bool = False  # gate failures warn instead of raising (not hashed)
    save_posterior: str | None = None  # netCDF path written by predict_all (not hashed)

    def __post_init__(self) -> None:
        if self.law.ceiling:
            raise FitError("the Bayesian model supports law forms log_power, power, no_delta, "
                           "softplus; not 'ceiling'")
        if self.priors is None:
            object.__setattr__(self, "priors", Priors.for_law(self.law))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self, data: "BayesData | None" = None) -> str:
        """sha256 of the config without run-cosmetic fields, plus the data when given."""
        cfg = self.to_dict()
        for key in ("allow_bad_diagnostics", "save_posterior"):
            cfg.pop(key)
        cfg["sampler"].pop("progressbar")
        payload = json.dumps(cfg, sort_keys=True, default=str)
        if data is not None:
            payload += data.fingerprint()
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class BayesData:
    """The observations of several tasks, aligned 1-D arrays of length N (one per evaluation)."""

    tasks: tuple[str, ...]
    levels: tuple[str, ...]  # "few_shot", then finetuning sizes as text, ascending
    level_values: np.ndarray  # (n_levels,) D per level; D_0 for few_shot
    curves: tuple[str, ...]  # "task|n_train|subset_seed" of each finetuning subset
    task_idx: np.ndarray  # (N,) int
    level_idx: np.ndarray  # (N,) int
    curve_idx: np.ndarray  # (N,) int, -1 for few-shot rows
    loss: np.ndarray  # (N,) pretraining loss, nats
    few_shot: np.ndarray  # (N,) bool
    correct: np.ndarray  # (N,) int items correct
    n_items: np.ndarray  # (N,) int
    chance: np.ndarray  # (n_tasks,)
    sources: tuple = ()  # the per-task fitting.data.TaskData it was built from

    @classmethod
    def from_tasks(cls, sources: Sequence, d0: float = 1.0) -> "BayesData":
        """Stack several tasks' ``fitting.data.TaskData`` (one hierarchical fit)."""
        return _from_tasks(sources, d0)

    @property
    def n_obs(self) -> int:
        return int(self.loss.shape[0])

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for arr in (self.task_idx, self.level_idx, self.curve_idx, self.loss, self.correct, self.n_items):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update("|".join(self.tasks + self.levels).encode())
        return h.hexdigest()[:16]

    def task_loss_range(self) -> tuple[np.ndarray, np.ndarray]:
        """(n_tasks,) midpoint and width of each task's checkpoint losses."""
        lo = np.array([self.loss[self.task_idx == t].min() for t in range(len(self.tasks))])
        hi = np.array([self.loss[self.task_idx == t].max() for t in range(len(self.tasks))])
        return (lo + hi) / 2, hi - lo

    def subset(self, tasks: Sequence[str]) -> "BayesData":
        """The same observations restricted to ``tasks`` (e.g. one task fitted alone)."""
        return _from_tasks([td for td in self.sources if td.task in set(tasks)], self.level_values[0])


def bayes_data(folder: ResultsFolder, tasks: Sequence[str] | None = None, d0: float = 1.0,
               metric: str | None = None) -> BayesData:
    """Item counts per evaluation for ``tasks`` (all tasks when None), validated for the model."""
    from fitting.data import TaskData

    names = list(tasks) if tasks else folder.tasks
    return BayesData.from_tasks([TaskData.from_folder(folder, t, metric) for t in names], d0)


def _check_task(td) -> None:
    if not td.proportion:
        raise FitError(f"task {td.task!r}: metric {td.metric!r} has no item counts; the Bayesian "
                       "fit needs accuracy-like metrics (binomial likelihood)")
    if not td.has_finetune:
        raise FitError(f"task {td.task!r}: no finetune results; the emergence law needs finetuning "
                       "data levels (few-shot results alone give only the ground-truth elbow)")


def _from_tasks(sources: Sequence, d0: float) -> BayesData:
    for td in sources:
        _check_task(td)
    tasks = tuple(td.task for td in sources)
    if len(set(tasks)) != len(tasks):
        raise FitError(f"a task is listed twice: {', '.join(tasks)}")
    sizes = sorted({int(n) for td in sources for n in td.data_levels})
    level_of = {n: i + 1 for i, n in enumerate(sizes)}
    curves, curve_idx, level_idx, task_idx = [], [], [], []
    for t, td in enumerate(sources):
        for n, s, few in zip(td.n_train, td.subset_seed, td.few_shot):
            level_idx.append(0 if few else level_of[int(n)])
            task_idx.append(t)
            key = f"{td.task}|{int(n)}|{int(s)}"
            if not few and key not in curves:
                curves.append(key)
            curve_idx.append(-1 if few else curves.index(key))
    cat = lambda f: np.concatenate([f(td) for td in sources])  # noqa: E731
    return BayesData(
        tasks=tasks, levels=("few_shot",) + tuple(str(n) for n in sizes),
        level_values=np.array([d0] + sizes, dtype=float), curves=tuple(curves),
        task_idx=np.array(task_idx), level_idx=np.array(level_idx), curve_idx=np.array(curve_idx),
        loss=cat(lambda td: td.loss).astype(float), few_shot=cat(lambda td: td.few_shot).astype(bool),
        correct=cat(lambda td: td.successes), n_items=cat(lambda td: td.n_items),
        chance=np.array([td.chance for td in sources], dtype=float), sources=tuple(sources),
    )


# --------------------------------------------------------------------------- the model


def elbow_basis(level_values: np.ndarray, form: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Per level: log(x / x_ref) (0 where x = 0), a mask (x > 0), and x_ref.

    x = log D (log power law) or D (power law); x_ref = the geometric mean of the finetuning
    levels' x. Precomputed in numpy so the gradient never meets 0**α at D = 1 (log 1 = 0).
    """
    x = np.asarray(law_.elbow_x(level_values, form), float)
    x_ref = float(np.exp(np.mean(np.log(x[1:])))) if len(x) > 1 else 1.0
    mask = (x > 0).astype(float)
    return np.log(np.where(x > 0, x, 1.0) / x_ref), mask, x_ref


def marginal_log_sd(mu_prior: tuple[float, float], sigma_scale: float) -> float:
    """sd of one task's log parameter under the population prior with (mu, sigma) integrated out:
    sqrt(sd_mu^2 + E[sigma^2]), E[sigma^2] = scale^2 exp(2 SIGMA_LOG_SD^2) for the LogNormal."""
    return float(np.sqrt(mu_prior[1] ** 2 + sigma_scale**2 * np.exp(2 * SIGMA_LOG_SD**2)))


def _population(pm, name: str, mu_prior: tuple[float, float], sigma_scale: float, centered: bool,
                pooled: bool = True):
    """exp of a (task,) Normal drawn from a shared population; returns the positive parameter.

    One task (``pooled=False``): no population level. The data cannot inform (mu, sigma) then,
    and sampling them gave a funnel (mu's width is sigma) whose tail diverged (issue 16); the
    task's log parameter gets the population prior's marginal mean and variance instead.
    """
    if not pooled:
        log_x = pm.Normal(f"log_{name}", mu_prior[0], marginal_log_sd(mu_prior, sigma_scale), dims="task")
        return pm.Deterministic(name, pm.math.exp(log_x), dims="task")
    mu = pm.Normal(f"mu_log_{name}", mu_prior[0], mu_prior[1])
    # zero-avoiding: with a handful of tasks a HalfNormal lets sigma -> 0, a funnel in (mu, sigma)
    sigma = pm.LogNormal(f"sigma_log_{name}", np.log(sigma_scale), SIGMA_LOG_SD)
    if centered:
        log_x = pm.Normal(f"log_{name}", mu, sigma, dims="task")
    else:
        z = pm.Normal(f"z_log_{name}", 0.0, 1.0, dims="task")
        log_x = pm.Deterministic(f"log_{name}", mu + sigma * z, dims="task")
    return pm.Deterministic(name, pm.math.exp(log_x), dims="task")


def _task_parameters(pm, data: BayesData, config: BayesConfig) -> dict:
    pr = config.priors
    mid, width = data.task_loss_range()
    chance = np.clip(data.chance, 0.005, 0.995)
    pooled = len(data.tasks) > 1
    theta = {
        "A": _population(pm, "A", pr.log_A_mu, pr.log_A_sigma, config.centered, pooled),
        "g": _population(pm, "g", pr.log_g_mu, pr.log_g_sigma, config.centered, pooled),
        "alpha": _population(pm, "alpha", pr.log_alpha_mu, pr.log_alpha_sigma, config.centered, pooled),
        "E_ref": pm.Normal("E_ref", mid, pr.E_ref_sd * np.maximum(width, 0.5), dims="task"),
        "logit_B": pm.Normal("logit_B", np.log(chance / (1 - chance)), pr.B_logit_sd, dims="task"),
    }
    theta["B"] = pm.Deterministic("B", pm.math.invlogit(theta["logit_B"]), dims="task")
    if config.law.delta:  # the few-shot base B + Δ, kept inside (0, 1) on the logit scale
        shift = pm.Normal("delta_logit", 0.0, delta_logit_sd(data.chance, pr.delta_sd), dims="task")
        theta["B_few"] = pm.math.invlogit(theta["logit_B"] + shift)
        theta["delta"] = pm.Deterministic("delta", theta["B_few"] - theta["B"], dims="task")
    else:
        theta["delta"] = pm.Data("delta", np.zeros(len(data.tasks)), dims="task")
        theta["B_few"] = theta["B"]
    return theta


def delta_logit_sd(chance: np.ndarray, delta_sd: float) -> np.ndarray:
    """(task,) sd of the few-shot base shift on the logit scale: ``delta_sd`` accuracy near the
    chance level c (slope c(1 − c), floored at 0.05: at most 20·delta_sd logits for chance 0).

    Issue 16: Δ was an accuracy shift, B + Δ could go below 0 on a chance-0 task, and the clip of
    p at ε then acted as a second hinge (p = max(ε, A (E − L) − |B + Δ|)): a few-shot elbow of
    its own, a second posterior mode and hundreds of divergent transitions (measured on a
    ``fitting.simulate_saturating`` dataset: chains split between Δ = −0.18 and Δ ≈ 0).
    """
    c = np.clip(np.asarray(chance, float), 0.005, 0.995)
    return delta_sd / np.maximum(c * (1 - c), 0.05)


def _hinge(pt, x, spec: law_.LawSpec):
    return spec.hinge_shape.value(x, spec.temperature, pt)


def _subset_jitter(pm, pt, data: BayesData, config: BayesConfig):
    """(N,) elbow shift of each row's finetuning subset (0 for few-shot rows)."""
    if not config.subset_effect:
        return 0.0
    sigma = pm.HalfNormal("sigma_subset", config.priors.subset_sigma)
    if config.centered:
        eps = pm.Normal("subset_shift", 0.0, sigma, dims="curve")
    else:
        z = pm.Normal("z_subset_shift", 0.0, 1.0, dims="curve")
        eps = pm.Deterministic("subset_shift", sigma * z, dims="curve")
    padded = pt.concatenate([eps, pt.zeros(1)])  # index -1 (few-shot) picks the 0
    return padded[data.curve_idx]


def build_model(data: BayesData, config: BayesConfig = BayesConfig()):
    """The hierarchical emergence law as a PyMC model with dims task, level, curve, obs.

    The item counts live in a ``pm.Data`` container (``correct_obs``), so one compiled model
    serves every dataset of the same design (:func:`model_for` caches it). Bounds checks are
    off: every scale parameter is positive by construction and p is clipped.
    """
    pm, pt = _import_pymc()
    coords = {"task": data.tasks, "level": data.levels, "curve": data.curves, "obs": np.arange(data.n_obs)}
    log_ratio, mask, x_ref = elbow_basis(data.level_values, config.law.elbow)
    cell = data.task_idx * len(data.levels) + data.level_idx  # (task, level) cell of each row
    with pm.Model(coords=coords, check_bounds=False) as model:
        correct = pm.Data("correct_obs", data.correct, dims="obs")
        th = _task_parameters(pm, data, config)
        g, alpha = th["g"][:, None], th["alpha"][:, None]
        box_cox = (mask[None, :] * pt.exp(alpha * log_ratio[None, :]) - 1.0) / alpha  # (task, level)
        elbow = pm.Deterministic("elbow", th["E_ref"][:, None] + g * box_cox, dims=("task", "level"))
        pm.Deterministic("k", th["g"] / (th["alpha"] * x_ref ** th["alpha"]), dims="task")
        pm.Deterministic("C", elbow[:, 0], dims="task")  # the MLE's C: the elbow at D0 (fitting.law)
        pm.Deterministic("emergence_loss", elbow[:, 0], dims="task")
        e_obs = elbow.ravel()[cell] + _subset_jitter(pm, pt, data, config)
        base = pt.where(data.few_shot, th["B_few"][data.task_idx], th["B"][data.task_idx])
        p = base + th["A"][data.task_idx] * _hinge(pt, e_obs - data.loss, config.law)
        pm.Binomial("correct", n=data.n_items, p=pt.clip(p, EPS, 1 - EPS), observed=correct, dims="obs")
    return model


def design_key(data: BayesData, config: BayesConfig) -> str:
    """What fixes the compiled model: the design (not the item counts) and the model config."""
    h = hashlib.sha256()
    for arr in (data.task_idx, data.level_idx, data.curve_idx, data.loss, data.few_shot, data.n_items,
                data.chance, data.level_values):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update("|".join(data.tasks + data.levels + data.curves).encode())
    model_cfg = {k: v for k, v in config.to_dict().items() if k in ("law", "priors", "centered", "subset_effect")}
    h.update(json.dumps(model_cfg, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


_MODELS: dict[str, dict] = {}  # design_key -> {"model": pm.Model, "nutpie": compiled or absent}
_MAX_MODELS = 8


def model_for(data: BayesData, config: BayesConfig):
    """The PyMC model of ``data``'s design, built once per process and given ``data``'s counts."""
    pm, _ = _import_pymc()
    key = design_key(data, config)
    entry = _MODELS.pop(key, None)  # re-inserted last: least recently used goes first
    if entry is None:
        entry = {"model": build_model(data, config)}
        while len(_MODELS) >= _MAX_MODELS:
            _MODELS.pop(next(iter(_MODELS)))
    _MODELS[key] = entry
    pm.set_data({"correct_obs": data.correct}, model=entry["model"])
    return entry["model"]


def compiled_nutpie_for(data: BayesData, config: BayesConfig):
    """nutpie's compiled model of ``data``'s design (numba compile once per process), with
    ``data``'s counts swapped in by ``with_data``."""
    model = model_for(data, config)
    entry = _MODELS[design_key(data, config)]
    if "nutpie" not in entry:
        entry["nutpie"] = compile_nutpie(model)
    return entry["nutpie"].with_data(correct_obs=data.correct)


# --------------------------------------------------------------------------- starting point


def _mle_params(td, config: BayesConfig) -> dict[str, float]:
    """One task's maximum-likelihood parameters, or prior-typical values if it cannot be fitted."""
    from fitting.fit import EmergenceLawFit

    try:
        params = EmergenceLawFit(config.law, n_starts=8, seed=config.sampler.seed).fit(td).params_
    except FitError:
        params = {}
    mid = (td.loss.min() + td.loss.max()) / 2
    out = dict(A=0.5, B=td.chance, k=0.1, alpha=1.0, C=mid, delta=0.0) | params
    box = dict(A=(0.02, 20.0), k=(1e-3, 5.0), alpha=(0.05, 4.0), B=(1e-3, 1 - 1e-3))
    return {n: float(np.clip(v, *box[n])) if n in box else float(v) for n, v in out.items()}


def mle_start(data: BayesData, config: BayesConfig) -> dict[str, np.ndarray]:
    """Start NUTS at each task's maximum-likelihood fit (values keyed by model variable).

    Chains started from the prior's support point with PyMC's U(-1, 1) jitter got stuck on
    the flat parts of the clipped ReLU (r_hat ~3, hundreds of divergences, measured).
    """
    rows = [_mle_params(td, config) for td in data.sources]
    col = lambda n: np.array([r[n] for r in rows])  # noqa: E731
    x_ref = elbow_basis(data.level_values, config.law.elbow)[2]
    x0 = float(law_.elbow_x(data.level_values[0], config.law.elbow))
    k, alpha = col("k"), col("alpha")
    shift = k * x_ref**alpha  # k·x_ref^α; g = α·shift is the slope per e-fold of x at x_ref
    values = {"A": col("A"), "g": alpha * shift, "alpha": alpha}
    e_ref = col("C") + shift - k * x0**alpha  # the MLE's C is the elbow at D0: E_ref = C + k (x_ref^α − x0^α)
    b = np.clip(col("B"), 0.005, 0.995)  # as the prior's centre: an MLE base of 1e-13 (chance 0) is logit -30
    point: dict[str, np.ndarray] = {"E_ref": e_ref, "logit_B": np.log(b / (1 - b))}
    if config.law.delta:  # the MLE's few-shot base B + Δ as a logit shift (inside 3 prior sds)
        sd = delta_logit_sd(data.chance, config.priors.delta_sd)
        few = np.clip(b + col("delta"), 0.001, 0.999)
        point["delta_logit"] = np.clip(np.log(few / (1 - few)) - np.log(b / (1 - b)), -3 * sd, 3 * sd)
    for name in ("A", "g", "alpha"):
        logs = np.log(values[name])
        if len(data.tasks) == 1:  # no population level (_population)
            point[f"log_{name}"] = logs
            continue
        mu, sd = float(logs.mean()), float(np.clip(logs.std(), 0.05, 1.0))
        point[f"mu_log_{name}"], point[f"sigma_log_{name}"] = np.array(mu), np.array(sd)
        point[f"log_{name}" if config.centered else f"z_log_{name}"] = (
            logs if config.centered else (logs - mu) / sd)
    if config.subset_effect:
        point["sigma_subset"] = np.array(config.priors.subset_sigma / 2)
        point["subset_shift" if config.centered else "z_subset_shift"] = np.zeros(len(data.curves))
    return point


def _jitter(point: dict[str, np.ndarray], n_chains: int, seed: int, scale: float = 0.01) -> list[dict]:
    """Per-chain starts: small jitter (scale in the units of each variable; x e^N for sigmas)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_chains):
        noise = {n: rng.normal(0.0, scale, np.shape(v)) for n, v in point.items()}
        out.append({n: v * np.exp(noise[n]) if n.startswith("sigma") else v + noise[n]
                    for n, v in point.items()})
    return out


# --------------------------------------------------------------------------- sampling


def sample(model, sampler: SamplerConfig, start: dict[str, np.ndarray] | None = None,
           log_likelihood: bool = True, compiled=None):
    """Posterior draws as ArviZ InferenceData (pointwise log-likelihood included for LOO).

    nutpie: ``compiled`` is a compiled model of ``model`` (:func:`compiled_nutpie_for`; compiled
    here when None). Chains start at ``start`` jittered by 0.01 in each unconstrained coordinate.
    """
    pm, _ = _import_pymc()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        if sampler.sampler == "nutpie":
            compiled = compiled if compiled is not None else compile_nutpie(model)
            idata = _sample_nutpie(_with_start(compiled, model, start) if start else compiled, sampler)
        else:
            idata = pm.sample(
                draws=sampler.draws, tune=sampler.tune, chains=sampler.chains, cores=sampler.cores,
                random_seed=sampler.seed, target_accept=sampler.target_accept, model=model,
                progressbar=sampler.progressbar, compute_convergence_checks=False,
                init="adapt_diag" if start else "jitter+adapt_diag",
                initvals=_jitter(start, sampler.chains, sampler.seed) if start else None,
            )
        if log_likelihood:
            pm.compute_log_likelihood(idata, model=model, progressbar=False)
    return idata


def compile_nutpie(model):
    """Compile ``model`` for nutpie (numba; the slow step). Reuse it for other counts of the same
    design with ``compiled.with_data(correct_obs=...)`` and other starts with :func:`_with_start`."""
    try:
        import nutpie
    except ImportError:
        raise MissingExtraError("nutpie", "nutpie") from None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return nutpie.compile_pymc_model(model)


def _with_start(compiled, model, start: dict[str, np.ndarray], scale: float = 0.01):
    """``compiled`` whose chains start at ``start`` (model variables, constrained values) plus
    N(0, scale) jitter in each unconstrained coordinate, one draw per chain seed. The flat
    order is nutpie's: the value variables of ``model.free_RVs``."""
    values = [model.rvs_to_values[rv].name for rv in model.free_RVs]
    flat = np.concatenate([np.ravel(np.log(start[n[: -len("_log__")]]) if n.endswith("_log__") else start[n])
                           for n in values]).astype(float)
    if flat.size != compiled.n_dim:
        raise FitError("the starting point does not match the compiled model's variables")

    def initial_point(seed=None):
        return flat + np.random.default_rng(seed).normal(0.0, scale, flat.size)

    return dataclasses.replace(compiled, initial_point_func=initial_point)


def _sample_nutpie(compiled, sampler: SamplerConfig):
    import nutpie

    return nutpie.sample(
        compiled, draws=sampler.draws, tune=sampler.tune, chains=sampler.chains,
        cores=sampler.cores, seed=sampler.seed, progress_bar=sampler.progressbar,
        target_accept=sampler.target_accept, low_rank_modified_mass_matrix=sampler.low_rank,
    )


def prior_predictive(data: BayesData, config: BayesConfig = BayesConfig(), draws: int = 500):
    """Prior and prior-predictive draws (is the prior plausible before seeing accuracies?)."""
    pm, _ = _import_pymc()
    model = build_model(data, config)
    return pm.sample_prior_predictive(draws, model=model, random_seed=config.sampler.seed)


# --------------------------------------------------------------------------- diagnostics


def _task_of(var, coord) -> str:
    if "task" in var.dims:
        return str(coord["task"])
    if "curve" in var.dims:
        return str(coord["curve"]).split("|")[0]
    return "population"


def _scan(stat, check: str, bad, limit: str) -> list[str]:
    """One failure line per (task, variable) whose ``stat`` value is ``bad``."""
    out = []
    for name, var in stat.data_vars.items():
        flat = var.stack(_i=var.dims) if var.dims else var.expand_dims("_i")
        for i in range(flat.sizes["_i"]):
            value = float(flat[i])
            if bad(value):
                coord = {d: flat[i][d].item() for d in var.dims}
                label = f"{name}[{', '.join(str(v) for v in coord.values())}]" if coord else name
                out.append(f"task {_task_of(var, coord)}: {check} of {label} = {value:.3g} ({limit})")
    return out


def check_diagnostics(idata, gate: Gate = Gate()) -> list[str]:
    """Failures of the gate, one readable line each (empty when everything passes)."""
    import arviz as az

    post = idata.posterior
    names = [v for v in post.data_vars if v not in ("elbow",) and post[v].size // (post.sizes["chain"] * post.sizes["draw"]) <= 512]
    failures = _scan(az.rhat(idata, var_names=names), "r_hat", lambda v: not v <= gate.r_hat_max,
                     f"> {gate.r_hat_max}")
    for method in ("bulk", "tail"):
        ess = az.ess(idata, var_names=names, method=method)
        failures += _scan(ess, f"{method} ESS", lambda v: not v >= gate.ess_min, f"< {gate.ess_min:.0f}")
    n_div = int(idata.sample_stats["diverging"].sum())
    if n_div > gate.max_divergences:
        failures.append(f"all tasks (joint model): {n_div} divergent transitions (> {gate.max_divergences})")
    return failures


def enforce_gate(failures: list[str], allow_bad: bool = False) -> None:
    """Raise DiagnosticsError listing every failure, or warn when ``allow_bad``."""
    if not failures:
        return
    shown = "; ".join(failures[:8]) + (f"; ... {len(failures) - 8} more" if len(failures) > 8 else "")
    message = f"MCMC diagnostics failed: {shown}"
    if not allow_bad:
        raise DiagnosticsError(message + " (rerun with more --tune/--draws, or --allow-bad-diagnostics)")
    warnings.warn(message, stacklevel=2)


# --------------------------------------------------------------------------- the estimator


class HierarchicalEmergenceLaw:
    """Fit the hierarchical emergence law to several tasks at once (scikit-learn style).

    Fitted attributes: ``data_``, ``model_`` (the design's cached PyMC model, shared with later
    fits of the same design: it holds the counts of the latest fit), ``idata_`` (ArviZ),
    ``failures_`` (gate lines), ``config_hash_``.
    """

    def __init__(self, config: BayesConfig = BayesConfig(), log_likelihood: bool = True):
        self.config = config
        self.log_likelihood = log_likelihood  # pointwise log-likelihood for LOO

    def fit(self, data: BayesData) -> "HierarchicalEmergenceLaw":
        self.data_ = data
        self.model_ = model_for(data, self.config)  # shared by every fit of this design
        compiled = compiled_nutpie_for(data, self.config) if self.config.sampler.sampler == "nutpie" else None
        self.start_ = mle_start(data, self.config)
        self.idata_ = sample(self.model_, self.config.sampler, self.start_, self.log_likelihood, compiled)
        self.config_hash_ = self.config.hash(data)
        self.idata_.posterior.attrs.update(self._attrs())
        self.failures_ = check_diagnostics(self.idata_, self.config.gate)
        return self

    def _attrs(self) -> dict[str, str]:
        return {"emergence_config_hash": self.config_hash_, "emergence_law": self.config.law.label,
                "emergence_config": json.dumps(self.config.to_dict(), default=str),
                "emergence_tasks": json.dumps(list(self.data_.tasks))}

    def emergence_draws(self) -> dict[str, np.ndarray]:
        """Per task, the flattened posterior draws of the emergence loss (nats)."""
        post = self.idata_.posterior["emergence_loss"]
        return {t: post.sel(task=t).values.reshape(-1) for t in self.data_.tasks}

    def percentiles(self) -> dict[str, dict[str, float]]:
        """Per task, the emergence-loss posterior percentiles p05 … p95 (Table 3 layout)."""
        return {t: percentile_dict(d) for t, d in self.emergence_draws().items()}

    def save(self, path: str | os.PathLike) -> Path:
        return save_posterior(self.idata_, path)


def percentile_dict(draws: np.ndarray, prefix: str = "p") -> dict[str, float]:
    values = np.percentile(np.asarray(draws, float), PERCENTILES)
    return {f"{prefix}{q:02d}": float(v) for q, v in zip(PERCENTILES, values)}


# --------------------------------------------------------------------------- persistence


def save_posterior(idata, path: str | os.PathLike) -> Path:
    """Write ``idata`` as netCDF atomically (the old file or the new one, never half)."""
    with atomic_path(path) as tmp:
        idata.to_netcdf(tmp)
    return Path(path)


def load_posterior(path: str | os.PathLike, expected_hash: str | None = None):
    """Read a saved posterior; refuse one whose config hash differs from ``expected_hash``."""
    import arviz as az

    path = Path(path)
    if not path.is_file():
        raise FitError(f"{path}: posterior file not found")
    idata = az.from_netcdf(path)
    found = idata.posterior.attrs.get("emergence_config_hash")
    if expected_hash is not None and found != expected_hash:
        raise FitError(f"{path}: posterior was sampled with config {found}, expected {expected_hash}; "
                       "refit instead of reusing it")
    return idata


# --------------------------------------------------------------------------- model comparison


def compare_laws(data: BayesData, forms: Sequence[str] = ("log_power", "power", "no_delta"),
                 base: BayesConfig = BayesConfig()) -> list[dict[str, Any]]:
    """Fit each law form and rank them by PSIS-LOO (``az.compare``); one row per form."""
    import arviz as az

    fits = {}
    for form in forms:
        if form not in BAYES_FORMS:
            raise FitError(f"law form {form!r} is not supported by the Bayesian fit "
                           f"(choose from {', '.join(BAYES_FORMS)})")
        spec = dataclasses.replace(law_.LAW_FORMS[form], d0=base.law.d0)
        cfg = dataclasses.replace(base, law=spec, priors=None)
        fits[form] = HierarchicalEmergenceLaw(cfg).fit(data)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)  # Pareto-k warnings are reported
        table = az.compare({f: fit.idata_ for f, fit in fits.items()}, ic="loo")
    return [_compare_row(form, row, fits[form]) for form, row in table.iterrows()]


def _compare_row(form: str, row, fit: HierarchicalEmergenceLaw) -> dict[str, Any]:
    import arviz as az

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        loo = az.loo(fit.idata_, pointwise=True)
    return {
        "law": form, "rank": int(row["rank"]), "elpd_loo": float(row["elpd_loo"]),
        "p_loo": float(row["p_loo"]), "elpd_diff": float(row["elpd_diff"]),
        "dse": float(row["dse"]), "weight": float(row["weight"]), "se": float(row["se"]),
        "pareto_k_over_0.7": int((loo.pareto_k.values > 0.7).sum()),
        "diagnostics_ok": not fit.failures_,
    }


# --------------------------------------------------------------------------- the predict hook


def config_from(fit_config) -> BayesConfig:
    """The BayesConfig of a ``fitting.predict.FitConfig`` (its ``bayes`` field, law and seed)."""
    base = fit_config.bayes if fit_config.bayes is not None else BayesConfig(
        sampler=SamplerConfig(seed=fit_config.seed))
    if not isinstance(base, BayesConfig):
        raise FitError(f"FitConfig.bayes must be a fitting.bayes.BayesConfig, got {type(base).__name__}")
    if fit_config.likelihood != "binomial":
        raise FitError("the Bayesian fit uses the binomial likelihood only; drop --likelihood gaussian")
    spec = fit_config.spec
    if fit_config.law_name not in BAYES_FORMS and spec.ceiling:
        raise FitError(f"law {fit_config.law_name!r} is not supported by the Bayesian fit "
                       f"(choose from {', '.join(BAYES_FORMS)})")
    priors = base.priors if base.law == spec else None
    return dataclasses.replace(base, law=spec, priors=priors)


def _quiet_stdout(progress: bool):
    """Sampler progress bars go to stderr so that ``--json`` on stdout stays parseable."""
    import contextlib
    import sys

    return contextlib.redirect_stdout(sys.stderr) if progress else contextlib.nullcontext()


def fit_tasks(task_data: Sequence, config: BayesConfig, progress: bool = False) -> HierarchicalEmergenceLaw:
    """One pooled fit of several tasks' ``TaskData``; saves the posterior when configured."""
    cfg = dataclasses.replace(config, sampler=dataclasses.replace(config.sampler, progressbar=progress))
    with _quiet_stdout(progress):
        fit = HierarchicalEmergenceLaw(cfg).fit(BayesData.from_tasks(task_data, config.law.d0))
    if config.save_posterior:
        fit.save(config.save_posterior)
    return fit


def _task_failures(fit: HierarchicalEmergenceLaw, task: str) -> list[str]:
    """Gate lines that concern ``task``: its own, the population's and the joint model's."""
    mine = (f"task {task}:", "task population:", "all tasks")
    return [f for f in fit.failures_ if f.startswith(mine)]


def _record(td, fit: HierarchicalEmergenceLaw, fit_config, ground_truth, simulated: bool):
    from fitting import predict

    record = predict.empty_record(td, fit_config, ground_truth, simulated)
    draws = fit.emergence_draws()[td.task]
    pct = np.percentile(draws, PERCENTILES)
    failures = _task_failures(fit, td.task)
    record.emergence_loss = float(np.median(draws))  # posterior median (no MLE in this method)
    record.emergence_loss_pct = {q: float(v) for q, v in zip(PERCENTILES, pct)}
    record.samples = draws
    record.converged = not failures
    record.message = "; ".join(failures) if failures else "MCMC diagnostics passed"
    post = fit.idata_.posterior
    record.params = {n: float(post[n].sel(task=td.task).median()) for n in TASK_VARS if n in post}
    record.note = f"posterior median and percentiles ({fit.config.sampler.chains} chains x {fit.config.sampler.draws} draws)"
    draws_by_name = {n: post[n].sel(task=td.task).values.ravel() for n in fit.config.law.param_names}
    if posterior_rise(fit.config.law, td, draws_by_name) < fit_config.gt_min_rise:
        record.pinned = "no rise"
        record.note += "; " + predict.PINNED_NOTES["no rise"]
    return predict.with_flops(record, td, fit_config)


def posterior_rise(spec: law_.LawSpec, data, draws: dict[str, np.ndarray], max_draws: int = 2000) -> float:
    """Posterior median of the largest rise above base the law puts on any row of ``data``
    (``draws``: one array of posterior draws per parameter of ``spec``). Below the ground
    truth's minimal rise the data locate no elbow: the prediction is marked "no rise", as the
    MLE's is (``fitting.fit.pinned_edge``; the MLE's edge marks have no posterior analogue)."""
    from fitting.fit import fitted_rise

    theta = np.stack([np.asarray(draws[n], float) for n in spec.param_names], axis=-1)  # (S, P)
    theta = theta[:: max(1, len(theta) // max_draws)]  # thinned: a median needs no more
    return float(np.median(fitted_rise(spec, data, theta)))


def predict_data(data, config, *, ground_truth=None, progress=None, simulated: bool = False):
    """The ``fitting.predict`` hook for one task (no pooling partner: the backtest's refits)."""
    return _predict([data], config, {data.task: ground_truth}, bool(progress), simulated)[0]


def predict_all(folder: ResultsFolder, config, tasks: Sequence[str] | None = None, progress: bool = False):
    """The ``fitting.predict`` hook: one hierarchical fit pooling every task that has finetune data."""
    from fitting.data import TaskData
    from fitting.predict import is_simulated

    names = list(tasks) if tasks else folder.tasks
    data = [TaskData.from_folder(folder, t, config.metric) for t in names]
    return _predict(data, config, {}, progress, is_simulated(folder))


def _predict(task_data: Sequence, fit_config, truths: dict, progress: bool, simulated: bool) -> list:
    from fitting import predict

    config = config_from(fit_config)
    truths = {td.task: truths.get(td.task) or fit_config.ground_truth(td) for td in task_data}
    pooled = [td for td in task_data if td.has_finetune]
    fit = fit_tasks(pooled, config, progress) if pooled else None
    if fit is not None:
        enforce_gate(fit.failures_, config.allow_bad_diagnostics)
    out = []
    for td in task_data:
        if td.has_finetune:
            out.append(_record(td, fit, fit_config, truths[td.task], simulated))
        else:  # the MLE path explains few-shot-only tasks (ground truth and FLOPs only)
            out.append(predict.predict_data(td, dataclasses.replace(fit_config, method="mle", n_boot=0),
                                            ground_truth=truths[td.task], simulated=simulated))
            out[-1].method = "bayes"
    return out


# --------------------------------------------------------------------------- CLI helpers


def config_from_cli(*, chains: int, draws: int, tune: int, sampler: str, seed: int, centered: bool = True,
                    subset_effect: bool = False, allow_bad_diagnostics: bool = False,
                    save_posterior=None) -> BayesConfig:
    """The BayesConfig of ``emergence fit --method bayes`` options (cores: min(chains, 2));
    ``sampler="auto"``: nutpie when installed, else PyMC's NUTS."""
    if sampler == "nutpie":
        try:
            import nutpie  # noqa: F401
        except ImportError:
            raise MissingExtraError("nutpie", "nutpie") from None
    samp = SamplerConfig(sampler=sampler, chains=chains, draws=draws, tune=tune,
                         cores=max(1, min(chains, os.cpu_count() or 1, 2)), seed=seed)
    return BayesConfig(sampler=samp, centered=centered, subset_effect=subset_effect,
                       allow_bad_diagnostics=allow_bad_diagnostics,
                       save_posterior=str(save_posterior) if save_posterior else None)


def compare_laws_command_bayes(folder: ResultsFolder, tasks, forms, *, draws: int, tune: int, sampler: str,
                               seed: int, as_json: bool) -> None:
    """``emergence compare-laws --method bayes``: PSIS-LOO of the pooled fit, one row per form."""
    import sys

    base = BayesConfig(sampler=SamplerConfig(sampler=sampler, draws=draws, tune=tune, seed=seed,
                                             progressbar=False))
    with _quiet_stdout(True):
        rows = compare_laws(bayes_data(folder, tasks), forms or ("log_power", "power", "no_delta"), base)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        _print_loo(rows)


def _print_loo(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="PSIS-LOO by law form (pooled Bayesian fit; higher elpd is better)")
    for name in ("law", "elpd_loo", "se", "elpd_diff", "dse", "weight", "p_loo", "k>0.7", "gate"):
        table.add_column(name, justify="left" if name == "law" else "right")
    for r in rows:
        table.add_row(r["law"], f"{r['elpd_loo']:.1f}", f"{r['se']:.1f}", f"{r['elpd_diff']:.1f}",
                      f"{r['dse']:.1f}", f"{r['weight']:.2f}", f"{r['p_loo']:.1f}",
                      str(r["pareto_k_over_0.7"]), "ok" if r["diagnostics_ok"] else "[red]failed[/]")
    Console().print(table)


def table3_rows(bayes_preds: Sequence, mle_preds: Sequence) -> list[dict[str, Any]]:
    """The paper's Table 3 layout: per task, ground truth, MLE, posterior and bootstrap percentiles."""
    mle = {p.task: p for p in mle_preds}
    rows = []
    for b in bayes_preds:
        m = mle.get(b.task)
        row = {"task": b.task, "ground_truth_loss": b.ground_truth_loss,
               "mle": None if m is None else m.emergence_loss}
        row.update({f"mcmc_p{q:02d}": b.emergence_loss_pct.get(q) for q in PERCENTILES})
        row.update({f"bootstrap_p{q:02d}": None if m is None else m.emergence_loss_pct.get(q)
                    for q in PERCENTILES})
        row.update({f"mcmc_flops_multiple_p{q:02d}": b.flops_multiple_pct.get(q) for q in (5, 50, 95)})
        row["mcmc_converged"] = b.converged
        rows.append(row)
    return rows


def print_table3(rows: list[dict[str, Any]], simulated: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    f = lambda x, spec=".3f": "-" if x is None else format(x, spec)  # noqa: E731
    title = "Emergence loss (nats): MCMC posterior vs bootstrap percentiles (paper's Table 3 layout)"
    table = Table(title=title + (" — SIMULATED data" if simulated else ""))
    for name in ("task", "truth", "MLE", "MCMC p5/p50/p95", "bootstrap p5/p50/p95", "FLOPs x max p5/p50/p95", "gate"):
        table.add_column(name, justify="left" if name == "task" else "right", no_wrap=True)
    for r in rows:
        mc = " / ".join(f(r[f"mcmc_p{q:02d}"]) for q in (5, 50, 95))
        bs = " / ".join(f(r[f"bootstrap_p{q:02d}"]) for q in (5, 50, 95))
        fl = " / ".join(f(r[f"mcmc_flops_multiple_p{q:02d}"], ".2f") for q in (5, 50, 95))
        table.add_row(r["task"], f(r["ground_truth_loss"]), f(r["mle"]), mc, bs, fl,
                      "ok" if r["mcmc_converged"] else "[red]failed[/]")
    Console().print(table)


# --------------------------------------------------------------------------- simulation-based calibration


def with_counts(data: BayesData, correct: np.ndarray) -> BayesData:
    """The same design with other item counts (N,) (kept consistent in the per-task sources)."""
    correct = np.asarray(correct, dtype=np.int64)
    sources = tuple(dataclasses.replace(td, value=correct[data.task_idx == t] / td.n_items)
                    for t, td in enumerate(data.sources))
    return dataclasses.replace(data, correct=correct, sources=sources)


def prior_datasets(data: BayesData, config: BayesConfig, n: int, seed: int) -> list[tuple[dict, np.ndarray]]:
    """``n`` (true parameters, simulated counts) pairs drawn from the model's own prior."""
    prior = prior_predictive(data, dataclasses.replace(config, sampler=dataclasses.replace(config.sampler, seed=seed)), n)
    counts = prior.prior_predictive["correct"].values[0]  # (n, N)
    params = {name: prior.prior[name].values[0] for name in sbc_parameters(prior.prior)}
    return [({k: v[i] for k, v in params.items()}, counts[i]) for i in range(n)]


def sbc_parameters(dataset) -> list[str]:
    """Scalar and per-task quantities whose ranks SBC checks (not elbow/subset shifts)."""
    return [v for v in dataset.data_vars if v != "elbow" and not v.startswith(("z_", "subset"))
            and set(dataset[v].dims) <= {"chain", "draw", "task"}]


def sbc_ranks(idata, truth: dict[str, np.ndarray], tasks: Sequence[str], n_keep: int = 99) -> dict[str, int]:
    """Rank (0..n_keep) of each true value among ``n_keep`` thinned posterior draws."""
    post = idata.posterior.stack(s=("chain", "draw"))
    keep = np.linspace(0, post.sizes["s"] - 1, n_keep).astype(int)
    ranks = {}
    for name, true in truth.items():
        draws = post[name].values  # (s,) or (task, s)
        if draws.ndim == 1:
            ranks[name] = int((draws[keep] < true).sum())
        else:
            for t, task in enumerate(tasks):
                ranks[f"{name}[{task}]"] = int((draws[t, keep] < true[t]).sum())
    return ranks


def rank_uniformity(ranks: np.ndarray, n_keep: int = 99, bins: int = 5) -> tuple[float, float]:
    """p-values of a chi-square (``bins`` equal bins) and a KS test that ranks are uniform."""
    from scipy import stats

    ranks = np.asarray(ranks)
    counts = np.bincount(ranks * bins // (n_keep + 1), minlength=bins)
    chi2 = stats.chisquare(counts).pvalue
    u = (ranks + np.random.default_rng(0).uniform(size=len(ranks))) / (n_keep + 1)
    return float(chi2), float(stats.kstest(u, "uniform").pvalue)


def run_sbc(data: BayesData, config: BayesConfig, n_datasets: int, seed: int = 0,
            progress=None) -> list[dict[str, Any]]:
    """Fit each prior dataset; per dataset the ranks, 90% coverage of the emergence loss, gate.

    Every dataset has ``data``'s design: the model is built (and, for nutpie, compiled) once.
    """
    import time

    out = []
    for i, (truth, counts) in enumerate(prior_datasets(data, config, n_datasets, seed)):
        cfg = dataclasses.replace(config, sampler=dataclasses.replace(config.sampler, seed=seed + 1 + i))
        t0 = time.perf_counter()
        fit = HierarchicalEmergenceLaw(cfg, log_likelihood=False).fit(with_counts(data, counts))
        draws = fit.idata_.posterior["emergence_loss"].values.reshape(-1, len(data.tasks))
        lo, hi = np.percentile(draws, [5, 95], axis=0)
        true_e = truth["emergence_loss"]
        checks = sorted({f.split(": ", 1)[1].split(" of ")[0] if " of " in f else "divergences"
                         for f in fit.failures_})
        out.append(dict(ranks=sbc_ranks(fit.idata_, truth, data.tasks), covered=((lo <= true_e) & (true_e <= hi)).tolist(),
                        divergences=int(fit.idata_.sample_stats["diverging"].sum()), gate_ok=not fit.failures_,
                        failed_checks=checks, seconds=round(time.perf_counter() - t0, 2)))
        if progress is not None:
            progress(i + 1, n_datasets, out[-1])
    return out
