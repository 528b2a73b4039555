"""Model comparison: the law forms ranked by PSIS-LOO of the pooled posterior."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Sequence

from emergence.errors import FitError
from fitting import law as law_
from fitting.bayes.config import BAYES_FORMS, BayesConfig
from fitting.bayes.data import BayesData
from fitting.bayes.estimator import HierarchicalEmergenceLaw


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
