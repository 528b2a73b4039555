"""The diagnostics gate: r_hat, bulk and tail ESS per task and variable, divergent transitions."""

from __future__ import annotations

import warnings

from emergence.errors import DiagnosticsError
from fitting.bayes.config import Gate


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
