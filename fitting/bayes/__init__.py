"""Bayesian hierarchical emergence law (PyMC), with diagnostics that gate the answer (docs/bayes.md).

One module per job; this package re-exports their public names:

- :mod:`fitting.bayes.config`: priors, sampler settings, the gate, ``BayesConfig`` (hashed);
- :mod:`fitting.bayes.data`: ``BayesData``, several tasks' item counts as aligned arrays;
- :mod:`fitting.bayes.model`: the PyMC model (the maths is in its docstring);
- :mod:`fitting.bayes.sampling`: one model per design, the maximum-likelihood start, NUTS/nutpie;
- :mod:`fitting.bayes.diagnostics`: the r_hat / ESS / divergence gate;
- :mod:`fitting.bayes.estimator`: ``HierarchicalEmergenceLaw`` and the saved posterior;
- :mod:`fitting.bayes.compare`: law forms ranked by PSIS-LOO;
- :mod:`fitting.bayes.hook`: the ``fitting.predict`` hook (``predict_data``, ``predict_all``);
- :mod:`fitting.bayes.calibration`: simulation-based calibration.

The command line's options and tables are in ``fitting.cli_bayes``. PyMC, ArviZ and nutpie are
imported only when a model is built, sampled or diagnosed (the ``bayes`` extra).
"""

from __future__ import annotations

from fitting.bayes.calibration import prior_datasets, rank_uniformity, run_sbc, sbc_parameters, sbc_ranks
from fitting.bayes.compare import compare_laws
from fitting.bayes.config import (
    BAYES_FORMS,
    SIGMA_LOG_SD,
    TASK_VARS,
    BayesConfig,
    Gate,
    Priors,
    SamplerConfig,
    _import_pymc,
    default_sampler,
)
from fitting.bayes.data import BayesData, bayes_data, with_counts
from fitting.bayes.diagnostics import check_diagnostics, enforce_gate
from fitting.bayes.estimator import HierarchicalEmergenceLaw, load_posterior, percentile_dict, save_posterior
from fitting.bayes.hook import config_from, fit_tasks, posterior_rise, predict_all, predict_data, quiet_stdout
from fitting.bayes.model import EPS, build_model, delta_logit_sd, elbow_basis, marginal_log_sd, model_coords
from fitting.bayes.sampling import (
    compile_nutpie,
    compiled_nutpie_for,
    design_key,
    mle_start,
    model_for,
    prior_predictive,
    sample,
)

__all__ = [
    "BAYES_FORMS", "EPS", "SIGMA_LOG_SD", "TASK_VARS",
    "BayesConfig", "BayesData", "Gate", "HierarchicalEmergenceLaw", "Priors", "SamplerConfig",
    "_import_pymc", "bayes_data", "build_model", "check_diagnostics", "compare_laws", "compile_nutpie",
    "compiled_nutpie_for", "config_from", "default_sampler", "delta_logit_sd", "design_key",
    "elbow_basis", "enforce_gate", "fit_tasks", "load_posterior", "marginal_log_sd", "mle_start",
    "model_coords", "model_for", "percentile_dict", "posterior_rise", "predict_all", "predict_data",
    "prior_datasets", "prior_predictive", "quiet_stdout", "rank_uniformity", "run_sbc", "sample",
    "save_posterior", "sbc_parameters", "sbc_ranks", "with_counts",
]

