r"""The hierarchical emergence law as a PyMC model of the data (dims task, level, curve, obs).

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

with hyperpriors scaled to what the design can identify (:class:`~fitting.bayes.config.Priors`;
docs/bayes.md). The
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

The ReLU kink is kept (the paper's law); ``LawSpec(hinge="softplus", temperature=...)`` smooths
it inside the sampler (it did not change tree depth or step size on the default simulated data).
"""

from __future__ import annotations

import numpy as np

from fitting import law as law_
from fitting.bayes.config import SIGMA_LOG_SD, BayesConfig, _import_pymc
from fitting.bayes.data import BayesData
from fitting.likelihood import EPS  # probabilities are clipped to [EPS, 1 - EPS] (a saturated curve has p = 1)


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


def model_coords(data: BayesData) -> dict[str, object]:
    """The model's named dims: task, level (few_shot then the finetuning sizes), curve, obs."""
    return {"task": data.tasks, "level": data.levels, "curve": data.curves, "obs": np.arange(data.n_obs)}


def build_model(data: BayesData, config: BayesConfig = BayesConfig()):
    """The hierarchical emergence law as a PyMC model with dims task, level, curve, obs.

    The item counts live in a ``pm.Data`` container (``correct_obs``), so one compiled model
    serves every dataset of the same design (``fitting.bayes.sampling.model_for`` caches it).
    Bounds checks are off: every scale parameter is positive by construction and p is clipped.
    """
    pm, pt = _import_pymc()
    log_ratio, mask, x_ref = elbow_basis(data.level_values, config.law.elbow)
    cell = data.task_idx * len(data.levels) + data.level_idx  # (task, level) cell of each row
    with pm.Model(coords=model_coords(data), check_bounds=False) as model:
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
