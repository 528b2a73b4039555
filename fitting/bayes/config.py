"""What determines a posterior: priors, sampler settings, the diagnostics gate (all hashed).

Sampler defaults (issue 16): nutpie when installed, else PyMC's NUTS
(``SamplerConfig(sampler="auto")``), ``target_accept=0.95``, 2000 tuning steps and nutpie's
low-rank mass matrix (38/40 simulated datasets pass the gate: docs/bayes.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from emergence.errors import FitError, MissingExtraError
from fitting import law as law_

if TYPE_CHECKING:
    from fitting.bayes.data import BayesData

SIGMA_LOG_SD = 0.5  # between-task sds ~ LogNormal(log scale, 0.5): 95% within x/2.7 of scale
TASK_VARS = ("A", "B", "k", "alpha", "C", "delta", "emergence_loss")
# the named forms whose every term the hierarchical model has (LawTerm.bayes; it has no ceiling)
BAYES_FORMS = tuple(n for n, s in law_.LAW_FORMS.items() if all(t.bayes for t in s.terms))


def _import_pymc():
    try:
        import pymc as pm
        import pytensor.tensor as pt
    except ImportError:  # pragma: no cover - depends on the install
        raise MissingExtraError("pymc", "bayes") from None
    return pm, pt


@dataclass(frozen=True)
class Priors:
    """Priors scaled to what a design can identify. Loss scales are nats/token; A is accuracy per nat.

    ``*_mu`` are (mean, sd) of a Normal on the population mean of the log parameter;
    ``*_sigma`` the median of a LogNormal(log median, ``SIGMA_LOG_SD``) on the population sd
    (between-task spread; zero-avoiding, see ``fitting.bayes.model``).
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
        missing = [t.param for t in self.law.terms if not t.bayes]
        if missing:
            raise FitError(f"the Bayesian model supports law forms {', '.join(BAYES_FORMS)}; not "
                           f"{self.law.label!r} (it has no parameter {', '.join(missing)})")
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
