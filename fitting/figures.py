"""Figures of the report (matplotlib, Agg backend), drawn from plain arrays and DataFrames.

Each function returns a :class:`matplotlib.figure.Figure`; :func:`save_png` writes it. Nothing
here fits anything: the caller passes the numbers (so the figures are easy to test and reuse).

- :func:`task_fit_figure`: accuracy vs pretraining loss per data level, the extrapolated
  few-shot curve, ground-truth and predicted elbows with the 5–95% band (the paper's Figure 4).
- :func:`backtest_figure`: each cutoff's FLOPs against its prediction error, with intervals and
  the tolerance band (Figure 7).
- :func:`cdf_figure`: the bootstrap CDF of the predicted emergence loss per task (Figure 5).
- :func:`axes_limits`: the x and y limits of every visible axis of a figure (what tests read).

A proportion metric (accuracy) is drawn within [0, 1]: fitted and extrapolated curves are
clipped there and the y axis never leaves it; any other metric keeps a data-driven axis.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from emergence import atomic  # noqa: E402

FEW_SHOT_COLOR = "black"
TRUTH_COLOR = "#2ca02c"
PRED_COLOR = "#d62728"
DPI = 110


@dataclass(frozen=True)
class Curve:
    """One observed series and its fitted curve: data level ``label`` (few-shot or D examples)."""

    label: str
    loss: np.ndarray  # (n,) pretraining loss of each observation, nats
    value: np.ndarray  # (n,) observed accuracy
    grid: np.ndarray  # (g,) loss grid of the fitted curve
    fitted: np.ndarray  # (g,) fitted accuracy on the grid
    few_shot: bool = False
    held_out: np.ndarray | None = None  # (n,) bool: observation not used by the fit


def _level_colors(n: int) -> list:
    cmap = plt.get_cmap("viridis")
    return [cmap(x) for x in np.linspace(0.15, 0.85, max(n, 1))]


def _elbow_lines(ax, ground_truth: float | None, prediction: Sequence[float] | None) -> None:
    """Vertical lines: ground-truth elbow (green) and predicted elbow with its 5–95% band (red)."""
    if prediction is not None and np.isfinite(prediction[0]):
        mle, p05, p95 = prediction
        if np.isfinite(p05) and np.isfinite(p95):
            ax.axvspan(p05, p95, color=PRED_COLOR, alpha=0.12, lw=0, label="predicted 5–95%")
        ax.axvline(mle, color=PRED_COLOR, ls="--", lw=1.5, label=f"predicted elbow {mle:.3f}")
    if ground_truth is not None and np.isfinite(ground_truth):
        ax.axvline(ground_truth, color=TRUTH_COLOR, lw=1.5, label=f"ground truth {ground_truth:.3f}")


def _scatter(ax, curve: Curve, color) -> None:
    held = np.zeros(len(curve.loss), bool) if curve.held_out is None else curve.held_out
    marker = "s" if curve.few_shot else "o"
    ax.scatter(curve.loss[~held], curve.value[~held], s=18, color=color, marker=marker, zorder=3)
    if held.any():  # held-out points: hollow, so the reader sees what the fit did not see
        ax.scatter(curve.loss[held], curve.value[held], s=18, facecolors="none",
                   edgecolors=color, marker=marker, zorder=3)


def task_fit_figure(
    task: str,
    curves: Sequence[Curve],
    *,
    chance: float | None = None,
    ground_truth: float | None = None,
    prediction: Sequence[float] | None = None,  # (mle, p05, p95) in nats
    truth_curve: tuple[np.ndarray, np.ndarray] | None = None,  # (grid, accuracy) of the ground-truth hinge
    subtitle: str = "",
    proportion: bool = True,  # the metric lies in [0, 1] (accuracy): curves and the y axis stay there
    ylabel: str = "accuracy",
) -> Figure:
    """Accuracy vs pretraining loss (lower loss = better model, so the x axis is reversed)."""
    fig, ax = plt.subplots(figsize=(7.0, 4.4), dpi=DPI)
    clip = _unit_clip if proportion else (lambda y: np.asarray(y, float))
    finetune = [c for c in curves if not c.few_shot]
    colors = _level_colors(len(finetune))
    for curve, color in zip(finetune, colors):
        _scatter(ax, curve, color)
        ax.plot(curve.grid, clip(curve.fitted), color=color, lw=1.2, label=curve.label)
    for curve in (c for c in curves if c.few_shot):
        _scatter(ax, curve, FEW_SHOT_COLOR)
        ax.plot(curve.grid, clip(curve.fitted), color=FEW_SHOT_COLOR, lw=2.0, ls="-",
                label=f"{curve.label} (extrapolated)")
    if truth_curve is not None:
        ax.plot(truth_curve[0], clip(truth_curve[1]), color=TRUTH_COLOR, lw=1.0, ls="-.",
                label="ground-truth hinge (all ckpts)")
    if chance is not None:
        ax.axhline(chance, color="grey", lw=0.8, ls=":", label=f"chance {chance:g}")
    _elbow_lines(ax, ground_truth, prediction)
    grids = [c.grid for c in curves if len(c.grid)]
    if grids:  # the fitted range, not the (possibly huge) interval band, sets the x axis
        ax.set_xlim(max(g.max() for g in grids), min(g.min() for g in grids))
    else:
        ax.invert_xaxis()
    if proportion:
        ax.set_ylim(*_unit_ylim(curves, chance))
    ax.set_xlabel("pretraining loss (nats/token)  →  better models")
    ax.set_ylabel(ylabel)
    ax.set_title(task + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, loc="upper left", frameon=False, ncol=2)
    fig.tight_layout()
    return fig


def _unit_clip(y) -> np.ndarray:
    """A proportion's curve clipped to [0, 1] (a law extrapolated past the data runs beyond 1)."""
    return np.clip(np.asarray(y, float), 0.0, 1.0)


def _unit_ylim(curves: Sequence[Curve], chance: float | None) -> tuple[float, float]:
    """y limits inside [0, 1]: the observed values, the chance line and the clipped curves, padded."""
    parts = [np.asarray(c.value, float) for c in curves] + [_unit_clip(c.fitted) for c in curves]
    values = np.concatenate([p[np.isfinite(p)] for p in parts] + [np.array([] if chance is None else [chance])])
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    pad = 0.05 * max(hi - lo, 0.1)
    return max(0.0, lo - pad), min(1.0, hi + pad)


def axes_limits(fig: Figure) -> list[dict[str, tuple[float, float]]]:
    """``{"x": (left, right), "y": (bottom, top)}`` of each visible axis (a reversed axis keeps its order)."""
    return [{"x": tuple(float(v) for v in ax.get_xlim()), "y": tuple(float(v) for v in ax.get_ylim())}
            for ax in fig.axes if ax.get_visible()]


def backtest_figure(
    task: str,
    max_flops: np.ndarray,  # (c,) cutoff FLOPs
    prediction: np.ndarray,  # (c,) MLE emergence loss (NaN where the fit failed)
    p05: np.ndarray,
    p95: np.ndarray,
    *,
    ground_truth: float | None,
    tolerance: float,
    success: np.ndarray | None = None,  # (c,) bool
    post_emergence_flops: float | None = None,
    profile: tuple[np.ndarray, np.ndarray] | None = None,  # (c,) low, high of a 90% profile interval
) -> Figure:
    """Error of each cutoff's prediction against the cutoff's FLOPs (the paper's Figure 7).

    With no ground truth (the task never emerged) the predictions themselves are plotted.
    """
    fig, ax = plt.subplots(figsize=(7.0, 3.6), dpi=DPI)
    x = np.asarray(max_flops, float)
    ref = ground_truth if ground_truth is not None else 0.0
    y, lo, hi = (np.asarray(a, float) - ref for a in (prediction, p05, p95))
    ok = np.isfinite(y)
    if ground_truth is not None:
        ax.axhspan(-tolerance, tolerance, color=TRUTH_COLOR, alpha=0.12, lw=0,
                   label=f"success: |error| ≤ {tolerance:g} nats")
        ax.axhline(0.0, color=TRUTH_COLOR, lw=1)
    judged = success is not None and ground_truth is not None
    good = ok & (np.asarray(success, bool) if judged else True)
    if profile is not None:
        _profile_bars(ax, x, *(np.asarray(a, float) - ref for a in profile))
    _error_bars(ax, x, y, lo, hi, good, ok & ~good)
    if post_emergence_flops is not None:
        ax.axvline(post_emergence_flops, color="grey", ls="--", lw=1,
                   label="earliest post-emergence checkpoint")
    _clip_outliers(ax, x, y, ok, tolerance if ground_truth is not None else None)
    ax.set_xscale("log")
    ax.set_xlabel("cutoff: FLOPs of the most expensive checkpoint kept")
    ax.set_ylabel("prediction − ground truth (nats)" if ground_truth is not None
                  else "predicted emergence loss (nats)")
    ax.set_title(task if ground_truth is not None else f"{task} (never emerged: no ground truth)",
                 fontsize=10)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, frameon=False, loc="best")
    fig.tight_layout()
    return fig


def _error_bars(ax, x, y, lo, hi, good, bad) -> None:
    """Points with 5–95% bars (a missing interval draws no bar): blue successes, red failures."""
    yerr = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
    yerr = np.where(np.isfinite(yerr), yerr, 0.0)
    for mask, color, label in ((good, "#1f77b4", "prediction (5–95%)"),
                               (bad, PRED_COLOR, "failed prediction (5–95%)")):
        if mask.any():
            ax.errorbar(x[mask], y[mask], yerr=yerr[:, mask], fmt="o", color=color, ms=5,
                        capsize=3, lw=1, label=label)


def _profile_bars(ax, x, low, high) -> None:
    """Wide grey bars behind the points: the profile-likelihood interval of each cutoff."""
    has = np.isfinite(low) & np.isfinite(high)
    if has.any():
        ax.vlines(x[has], low[has], high[has], color="grey", lw=7, alpha=0.3, label="profile-likelihood 90%")


def _clip_outliers(ax, x, y, ok, tolerance: float | None) -> None:
    """Keep the y axis on the informative range (about ±1 nat of the truth, at least 3x the
    tolerance); predictions beyond it are drawn as triangles on the edge with their value."""
    if tolerance is None or not ok.any():
        return
    core = np.abs(y[ok])
    limit = max(3 * tolerance, min(1.0, 1.3 * float(np.max(core))))
    ax.set_ylim(-limit, limit)
    for xi, yi in zip(x[ok], y[ok]):
        if abs(yi) > limit:
            edge = np.sign(yi) * limit * 0.93
            ax.plot([xi], [edge], marker="^" if yi > 0 else "v", color=PRED_COLOR, ms=7, zorder=4)
            ax.annotate(f"{yi:+.2f}", (xi, edge), textcoords="offset points", xytext=(6, -3), fontsize=7,
                        color=PRED_COLOR)


def _robust_xlim(ax, s: np.ndarray, marks: Sequence[float]) -> bool:
    """Zoom on the 2–98% range of the samples (plus the marks); True when tails were cut."""
    lo, hi = np.percentile(s, [2, 98])
    finite = [m for m in marks if m is not None and np.isfinite(m)]
    lo, hi = min([lo, *finite]), max([hi, *finite])
    pad = 0.08 * max(hi - lo, 1e-3)
    ax.set_xlim(lo - pad, hi + pad)
    return bool(s.min() < lo - pad or s.max() > hi + pad)


def cdf_figure(
    samples: Mapping[str, np.ndarray],  # task -> (n_boot,) bootstrap emergence losses
    ground_truth: Mapping[str, float | None],
    mle: Mapping[str, float],
) -> Figure:
    """Empirical CDF of each task's bootstrap emergence loss (the paper's Figure 5)."""
    tasks = list(samples)
    ncol = min(2, max(len(tasks), 1))
    nrow = int(np.ceil(len(tasks) / ncol)) or 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.8 * nrow), dpi=DPI, squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        s = np.sort(np.asarray(samples[task], float))
        s = s[np.isfinite(s)]
        cut = False
        if s.size:
            ax.step(s, np.arange(1, s.size + 1) / s.size, where="post", color="#1f77b4",
                    label=f"bootstrap (n={s.size})")
            cut = _robust_xlim(ax, s, [mle.get(task), ground_truth.get(task)])
        if np.isfinite(mle.get(task, np.nan)):
            ax.axvline(mle[task], color=PRED_COLOR, ls="--", lw=1.2, label="MLE")
        gt = ground_truth.get(task)
        if gt is not None and np.isfinite(gt):
            ax.axvline(gt, color=TRUTH_COLOR, lw=1.2, label="ground truth")
        ax.set_title(task + (" (2–98% range shown)" if cut else ""), fontsize=9)
        ax.set_xlabel("emergence loss (nats)", fontsize=8)
        ax.set_ylabel("CDF", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25)
        ax.legend(fontsize=6, frameon=False, loc="upper left")
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def save_png(data: bytes, path: str | os.PathLike) -> Path:
    """Write PNG bytes atomically (a reader never sees half a file)."""
    return atomic.write_bytes(path, data)
