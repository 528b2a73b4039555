"""Sampling the model: one model per design, the maximum-likelihood start, PyMC's NUTS or nutpie.

NUTS starts at each task's maximum-likelihood fit (:func:`mle_start`): from PyMC's default
jittered start chains got stuck on the flat parts of the clipped ReLU.

Compilation dominates small fits: the item counts are a ``pm.Data`` container, so one model per
design and process serves every dataset of that design (:func:`model_for`, and for nutpie
:func:`compiled_nutpie_for`: numba compiles once, ``with_data`` swaps the counts in and each fit
gets its own maximum-likelihood start).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings

import numpy as np

from emergence.errors import FitError, MissingExtraError
from fitting import law as law_
from fitting.bayes.config import BayesConfig, SamplerConfig, _import_pymc
from fitting.bayes.data import BayesData
from fitting.bayes.model import build_model, delta_logit_sd, elbow_basis

# --------------------------------------------------------------------------- one model per design


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
        if len(data.tasks) == 1:  # no population level (model._population)
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
