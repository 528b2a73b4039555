"""The estimator (:class:`HierarchicalEmergenceLaw`) and its posterior on disk (netCDF)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from emergence.atomic import atomic_path
from emergence.errors import FitError
from fitting.bayes.config import BayesConfig
from fitting.bayes.data import BayesData
from fitting.bayes.diagnostics import check_diagnostics
from fitting.bayes.sampling import compiled_nutpie_for, mle_start, model_for, sample
from fitting.uncertainty import PERCENTILES


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
