"""Maximum-likelihood fit of the emergence law to one task's results.

Public API
----------
``EmergenceLawFit(spec, likelihood, n_starts, seed).fit(data) -> self``
    scikit-learn style estimator. Fitted attributes: ``theta_`` (P,), ``params_`` (dict),
    ``emergence_loss_`` (float, or ``None`` when the fit did not converge), ``converged_``,
    ``loglik_``, ``message_``, ``n_obs_``. ``predict(loss, n_train, few_shot)`` and
    ``loglik(data)`` (held-out log-likelihood).
``fit_ground_truth(data) -> GroundTruth``
    The few-shot elbow of all checkpoints (the backtest's truth), or null when few-shot
    performance has not left its base (likelihood-ratio test + minimal rise, see below).
``compare_laws(data, forms) -> list[LawComparison]``
    Leave-one-checkpoint-out held-out log-likelihood of each law form.

Likelihood (``likelihood=``)
    ``"binomial"`` (default, accuracy-like metrics): successes = round(value · n_items) out of
    n_items per row. The law is an identity link, so predicted probabilities outside (0, 1)
    are possible; outside [ε, 1 − ε] (ε = 1e-6) the negative log-likelihood is continued by
    its quadratic expansion (C¹, minimum at p ≈ 0 or 1), so the optimiser is pushed back
    instead of seeing -inf or a reward for an impossible probability.
    ``"gaussian"``: unweighted least squares on ``value`` (the paper's setting and any metric),
    σ profiled out of the reported log-likelihood.

Optimiser
    Deterministic multi-start: ``n_starts`` starting points (one heuristic start plus a Latin
    hypercube drawn from ``seed`` inside a data-scaled box) are run together by a vectorised
    projected Levenberg-Marquardt / Fisher-scoring loop (all starts in one numpy batch, analytic
    Jacobian), and the best one is polished with ``scipy.optimize.minimize(method="L-BFGS-B")``
    inside the same bounds. ``converged_`` is True when the polish reports success or the batch
    loop met its tolerance at the same optimum; otherwise the fit says so
    (``emergence_loss_ is None`` and ``message_`` gives the reason). The same batch loop
    refits bootstrap resamples (``fitting.uncertainty``).

Parameter sharing follows the paper (see ``fitting.law``): A, B, Δ, U shared by every data
level and the few-shot curve; only the elbow moves with D through k, α, C.
"""

from __future__ import annotations

import numpy as np

from emergence.errors import FitError
from fitting import law as law_
from fitting.data import TaskData
from fitting.likelihood import LIKELIHOODS, Likelihood, binomial_loglik
from fitting.optimise import Problem, bounds, lm_batch, make_problem, polish, starts

PIN_NATS = 0.05  # a prediction this close to the fit's lowest checkpoint loss is pinned there
MIN_RISE = 0.05  # metric units: the least rise above base that counts as a rise (ground truth's too)


def fitted_rise(spec: law_.LawSpec, data: TaskData, theta: np.ndarray) -> np.ndarray:
    """The largest rise above base that the law with parameters ``theta`` (..., P) puts on any
    row of ``data`` (metric units), one per parameter set: shape (...)."""
    p = spec.unpack(theta)
    base = p["B"][..., None] + np.where(data.few_shot, p["delta"][..., None], 0.0)
    perf = law_.performance(spec, theta, data.loss, data.n_train, data.few_shot)
    return np.max(perf - base, axis=-1, initial=0.0)


def pinned_edge(spec: law_.LawSpec, data: TaskData, likelihood: str, theta: np.ndarray,
                min_rise: float = MIN_RISE) -> str | None:
    """Whether a converged prediction (parameters ``theta``) sits on an edge of what its data
    can say, so that it cannot be told apart from that edge.

    - ``"no rise"``: the fitted law rises by less than ``min_rise`` above its base on every row
      of the data (the ground truth's rule for "emerged"): nothing in the data has left chance,
      the likelihood is (nearly) flat in C, and the prediction is wherever the optimiser stopped.
    - ``"search bound"``: the few-shot elbow C sits on its search box (``ELBOW_REACH`` nats beyond
      the data): nothing in the data locates it, typically finetuning lifts no checkpoint yet.
    - ``"lowest checkpoint"``: the prediction is within ``PIN_NATS`` of the fit's lowest
      checkpoint loss. Before emergence every few-shot result is at chance, so the likelihood
      forbids an elbow above the lowest loss: when the finetuned curves point higher, the
      maximum sits on that checkpoint and says only "not before this checkpoint". A prediction
      that happens to be right there looks the same. Either way a backtest counts it a success
      whenever that checkpoint lies within the tolerance of the truth, which is a property of
      where the checkpoints fall.
    - ``None``: neither.
    """
    if fitted_rise(spec, data, theta) < min_rise:
        return "no rise"
    lo, hi = bounds(spec, data, likelihood)
    i = spec.param_names.index("C")
    slack = 1e-3 * (hi[i] - lo[i])
    if theta[i] - lo[i] <= slack or hi[i] - theta[i] <= slack:
        return "search bound"
    if abs(float(law_.emergence_loss(spec, theta)) - float(data.ckpt_loss.min())) <= PIN_NATS:
        return "lowest checkpoint"
    return None


class EmergenceLawFit:
    """Maximum-likelihood emergence law for one task (see the module docstring)."""

    def __init__(self, spec: law_.LawSpec = law_.LawSpec(), likelihood: Likelihood = "binomial",
                 n_starts: int = 24, seed: int = 0, max_iter: int = 300):
        self.spec = spec
        self.likelihood = likelihood
        self.n_starts = n_starts
        self.seed = seed
        self.max_iter = max_iter

    def _validate(self, data: TaskData) -> None:
        if not isinstance(self.spec, law_.LawSpec):
            raise FitError(f"spec must be a LawSpec, got {type(self.spec).__name__}")
        if self.likelihood not in LIKELIHOODS:
            raise FitError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.likelihood == "binomial" and not data.proportion:
            raise FitError(f"task {data.task!r}: metric {data.metric!r} is not a proportion of items; "
                           "use --likelihood gaussian")
        if not data.has_finetune:
            raise FitError(f"task {data.task!r} has only few-shot results: the emergence law needs "
                           "finetune results (the ground-truth elbow still works)")
        n_free = len(self.spec.param_names)
        if data.n_checkpoints < 3 or data.n_rows <= n_free:
            raise FitError(f"task {data.task!r}: {data.n_checkpoints} checkpoint(s) and {data.n_rows} "
                           f"rows are too few for the {n_free}-parameter law (need >= 3 checkpoints)")

    def fit(self, data: TaskData) -> "EmergenceLawFit":
        self._validate(data)
        problem = make_problem(self.spec, data, self.likelihood)
        self.theta_, self.converged_, self.message_, self.start_objectives_ = self._optimise(problem, data)
        return self._set(data)

    def refit_from(self, data: TaskData, candidates: np.ndarray, tol: float = 1e-7) -> float:
        """Certify the optimum against other parameter points (the profile's pinned fits, the
        bootstrap resamples' solutions): when one of them scores better on ``data``, refit
        from the best few, unpinned, and keep the result. Returns the gain in log-likelihood
        (0.0 when the fit already was the best point seen). A multi-start fit can stop on a
        ridge that a neighbouring pinned fit gets past (issue 20: an MLE outside its own
        profile interval)."""
        self._check_fitted()
        problem = make_problem(self.spec, data, self.likelihood)
        cand = np.atleast_2d(np.asarray(candidates, dtype=float))
        cand = np.clip(cand[np.all(np.isfinite(cand), axis=1)], problem.lower, problem.upper)
        if not len(cand):
            return 0.0
        f0 = float(problem.objective(self.theta_[None])[0])
        f = problem.objective(cand)
        atol = tol * (1 + abs(f0))
        if float(f.min()) >= f0 - atol:
            return 0.0
        theta, f_lm, _, _ = lm_batch(problem, cand[np.argsort(f)[:4]], max_iter=self.max_iter)
        best = int(np.argmin(f_lm))
        polished, f_pol, _, _ = polish(problem, theta[best], max_iter=2 * self.max_iter)
        theta_hat, f_new = (polished, f_pol) if f_pol <= f_lm[best] else (theta[best], float(f_lm[best]))
        if f_new >= f0 - atol:
            return 0.0
        before = self.loglik_
        self.theta_, self.converged_ = theta_hat, True
        self.message_ = f"{self.message_}; optimum improved from a profile/bootstrap point"
        self._set(data)
        return float(self.loglik_ - before)

    def _set(self, data: TaskData) -> "EmergenceLawFit":
        """The fitted attributes that follow from ``theta_``."""
        self.params_ = dict(zip(self.spec.param_names, self.theta_.tolist()))
        self.n_obs_, self.n_checkpoints_ = data.n_rows, data.n_checkpoints
        if self.likelihood == "gaussian":  # σ² of the training fit, used to score held-out rows
            residual = self.predict(data.loss, data.n_train, data.few_shot) - data.value
            self.sigma2_ = max(float(np.mean(residual**2)), 1e-12)
        self.loglik_ = self.loglik(data)
        e = float(law_.emergence_loss(self.spec, self.theta_))
        self.emergence_loss_ = e if self.converged_ else None
        return self

    def _optimise(self, problem: Problem, data: TaskData):
        """Multi-start batch LM, then L-BFGS-B polish of the best: (theta, converged, message, f_starts)."""
        theta, f, done, _ = lm_batch(problem, starts(self.spec, data, self.n_starts, self.seed), max_iter=self.max_iter)
        best = int(np.argmin(f))
        polished, f_pol, ok, message = polish(problem, theta[best], max_iter=2 * self.max_iter)
        theta_hat = polished if f_pol <= f[best] else theta[best]
        agree = abs(f_pol - f[best]) <= 1e-6 * (1 + abs(f[best]))
        converged = bool(ok or (done[best] and agree))
        return theta_hat, converged, message if converged else f"did not converge: {message}", f

    def _check_fitted(self) -> None:
        if not hasattr(self, "theta_"):
            raise FitError("this EmergenceLawFit is not fitted yet; call fit(data) first")

    def predict(self, loss, n_train, few_shot) -> np.ndarray:
        """Predicted performance (N,) for aligned rows."""
        self._check_fitted()
        return law_.performance(self.spec, self.theta_, loss, n_train, few_shot)

    def loglik(self, data: TaskData, theta: np.ndarray | None = None) -> float:
        """Log-likelihood of ``data`` under the fitted (or given) parameters.

        Binomial: the full binomial log-likelihood. Gaussian: normal with σ² = the mean squared
        residual of the training fit (so a held-out set is scored with the training σ).
        """
        theta = self.theta_ if theta is None else theta
        p = law_.performance(self.spec, theta, data.loss, data.n_train, data.few_shot)
        if self.likelihood == "binomial":
            return float(binomial_loglik(p, data.successes.astype(float), data.n_items.astype(float)).sum())
        r2 = (p - data.value) ** 2
        return float(np.sum(-0.5 * (np.log(2 * np.pi * self.sigma2_) + r2 / self.sigma2_)))
