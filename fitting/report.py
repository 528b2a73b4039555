"""The report: one self-contained HTML page and one Markdown file, with PNG figures.

``write_report(results_dir, out, config)`` runs the backtest (and its ablations) and writes

    out/index.html    figures embedded as base64 PNG: opens offline, can be mailed as one file
    out/report.md     the same content; figures linked as figures/*.png
    out/figures/*.png

Content: provenance (and a banner when the data are simulated; a paragraph on what the shipped
micro-ladder shows and does not), a per-task verdict first (:func:`verdict`: advance warning
yes or no, how far ahead and how sure, or why not), a summary table (prediction from the
pre-emergence checkpoints and which checkpoints those are, 5–95% interval, ground truth, the fit
on all checkpoints as ``emergence fit`` gives it, FLOP multipliers with the unpinned reading
first, coverage) and a glossary, per task the fit (the paper's Figure 4), the backtest
(Figure 7) and its cutoff table, the bootstrap CDFs (Figure 5) and the ablation table
(Table 2). Tables are built once (:class:`Table`) and rendered to both formats.

Size: one cohesive thing, what the report says (tables, verdicts, figures' data); its rendering
is ``fitting.report_render``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from emergence import __version__, atomic
from emergence.paths import check_out_dir
from fitting import figures as fig_
from fitting import law as law_
from fitting.backtest import BacktestConfig, TaskBacktest, ablation_table, backtest
from fitting.data import TaskData
from fitting.report_render import Figure, Glossary, ReportPaths, Section, Table, render_html, render_markdown
from fitting.schema import ResultsFolder, load_results

# --------------------------------------------------------------------------- formatting


def _f(x, spec: str = ".3f", none: str = "–") -> str:
    return none if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def _yes(flag) -> str:
    return "–" if flag is None else ("yes" if flag else "no")


def _mult(x) -> str:
    return "–" if x is None else f"{x:.2f}×"


def _interval(lo, hi) -> str:
    return "–" if lo is None or hi is None else f"{lo:.3f} – {hi:.3f}"


# --------------------------------------------------------------------------- tables


def summary_table(results: Sequence[TaskBacktest], truth: dict[str, Any] | None) -> Table:
    """Per task: the verdict, the pre-emergence prediction (and what it was fitted on), its
    interval, the ground truth, the fit on every checkpoint, multipliers (unpinned first), coverage."""
    headers = ["task", "advance warning", "ground truth (nats, 5–95%)", "pre-emergence prediction (nats)", "5–95%",
               "error", "fitted on", "fit on all checkpoints (as emergence fit)",
               "predicted FLOPs (× largest fitted)", "FLOP multiplier (unpinned)", "paper's reading",
               "strict", "coverage", "coverage (profile)"]
    if truth:
        headers.insert(3, "simulated truth")
    rows, bad = [], set()
    for i, r in enumerate(results):
        main = r.main_cutoff
        pred = main.prediction if main is not None else None
        cov, n = r.coverage
        pcov, pn = r.coverage_profile
        row = [r.task, "yes" if verdict(r).warning else "no",
               r.truth_label,
               _f(main.emergence_loss) + (f" (pinned: {main.pinned})" if main.pinned else "") if main else "–",
               _interval(main.p05, main.p95) if main else "–",
               _f(main.error, "+.3f") if main else "–",
               fitted_on(r, main, short=True) if main else "no pre-emergence fit",
               _all_checkpoints_cell(r),
               _flops_cell(pred), _mult(r.flop_multiplier_unpinned),
               _mult(r.flop_multiplier) + (" (pinned)" if _paper_rests_on_pinned(r) else ""),
               _mult(r.flop_multiplier_strict),
               f"{cov}/{n}" if n else "–", f"{pcov}/{pn}" if pn else "–"]
        if truth:
            row.insert(3, _f((truth.get(r.task) or {}).get("emergence_loss")))
        if main is not None and main.success is False:
            bad.add((i, headers.index("error")))
        if not verdict(r).warning:
            bad.add((i, headers.index("advance warning")))
        rows.append(row)
    caption = ("Every term is defined in the glossary below. The pre-emergence prediction is the forecast "
               "a user would have made before the task emerged; the fit on all checkpoints is what "
               "`emergence fit` reports.")
    return Table(headers, rows, caption, bad)


def glossary() -> Glossary:
    """The terms of the summary and cutoff tables, one line each."""
    return Glossary([
        ("advance warning", "yes when a fit that is not pinned, made only on checkpoints before the task "
                            "emerged, predicted the ground truth within the tolerance; the verdict says how many "
                            "FLOPs ahead (the unpinned multiplier) and how wide its interval is, or why not."),
        ("ground truth", "the few-shot elbow (the pretraining loss where accuracy leaves chance) fitted to every "
                         "checkpoint, between the last checkpoint at chance and the first clearly above it, with "
                         "its 5–95% bootstrap interval over checkpoints and items; \"never emerged\" when few-shot "
                         "accuracy never left chance, \"elbow not located\" when it was above chance from the "
                         "first checkpoints."),
        ("pre-emergence prediction", "the law fitted on the checkpoints cheaper than the first post-emergence "
                                     "checkpoint (all checkpoints when the task never emerged); \"fitted on\" "
                                     "names them."),
        ("fit on all checkpoints", "the same law fitted on every checkpoint, post-emergence ones included: "
                                   "what `emergence fit` reports; not a forecast once the task has emerged."),
        ("5–95%", "the bootstrap interval of the prediction (resampling checkpoints and items), widened to the "
                  "90% profile-likelihood interval when that is wider."),
        ("error, success", "error = prediction − ground truth, in nats; a cutoff succeeds when its fit converged "
                           "and |error| ≤ the tolerance (0.1 nats by default)."),
        ("pinned", "a prediction the data do not locate: its fit lifts nothing above chance (\"no rise\"), or it "
                   "sits on the fit's lowest checkpoint loss or the search edge; it \"succeeds\" whenever "
                   "that bound happens to lie near the truth."),
        ("FLOP multiplier", "FLOPs of the first post-emergence checkpoint ÷ FLOPs of the most capable checkpoint "
                            "of the earliest successful cutoff; above 1 means warning ahead of emergence. "
                            "Unpinned: counting only successes that are not pinned. Paper's reading: any "
                            "success, marked (pinned) when it rests on a pinned fit. Strict: every larger cutoff "
                            "also succeeds."),
        ("predicted FLOPs", "the FLOPs at the predicted elbow from the fitted loss-vs-FLOPs law, and its multiple "
                            "of the largest fitted checkpoint; * extrapolated beyond that law's data."),
        ("coverage", "cutoffs whose 5–95% interval contains the ground truth; profile: the 90% "
                     "profile-likelihood interval, a side the data do not bound counting as open."),
        ("cutoff, †", "a backtest refit on the checkpoints with FLOPs ≤ the cutoff; † it already keeps a "
                      "post-emergence checkpoint (no longer a forecast)."),
    ])


def fitted_on(r: TaskBacktest, cut, short: bool = False) -> str:
    """Which checkpoints a prediction was fitted on, in words: 'all 64 checkpoints' or 'the 8
    checkpoints with FLOPs ≤ 1e+11, all before the ground-truth elbow (loss ≥ 4.43)'."""
    total = max((c.n_checkpoints for c in r.cutoffs), default=cut.n_checkpoints)
    if cut.n_checkpoints >= total:
        return f"all {total} ckpts" if short else f"all {total} checkpoints"
    if short:
        return f"{cut.n_checkpoints} ckpts, FLOPs ≤ {cut.max_flops:.2g} (loss ≥ {cut.most_capable_loss:.2f})"
    where = ("all before the ground-truth elbow" if cut.pre_emergence
             else "including post-emergence ones" if cut.pre_emergence is False else "")
    return (f"the {cut.n_checkpoints} checkpoints with FLOPs ≤ {cut.max_flops:.2g}"
            + (f", {where}" if where else "") + f" (loss ≥ {cut.most_capable_loss:.2f})")


def _all_checkpoints_cut(r: TaskBacktest):
    """The cutoff that keeps every checkpoint (the fit `emergence fit` makes), when it was fitted."""
    if not r.cutoffs:
        return None
    top = max(r.cutoffs, key=lambda c: c.max_flops)
    return top if top.prediction is not None or top.emergence_loss is not None else None


def _all_checkpoints_cell(r: TaskBacktest) -> str:
    top = _all_checkpoints_cut(r)
    if top is None:
        return "–"
    if top is r.main_cutoff:
        return "same fit"
    return f"{_f(top.emergence_loss)}" + (f" (pinned: {top.pinned})" if top.pinned else "") + f" ({top.n_checkpoints} ckpts)"


def _paper_rests_on_pinned(r: TaskBacktest) -> bool:
    first = r.earliest_success
    return first is not None and bool(first.pinned)


# --------------------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class Verdict:
    """A task's plain answer: did the prediction give advance warning? ``text`` starts with it."""

    warning: bool
    text: str


_PINNED_WHY = {
    "no rise": "their fits lift nothing above chance, so the data do not locate the elbow and the "
               "prediction is wherever the optimiser stopped",
    "lowest checkpoint": "they sit on the fit's lowest checkpoint loss, which the at-chance few-shot results "
                         "bound, so they say only \"not before this checkpoint\"",
    "search bound": "they sit on the edge of the search range: nothing in the data locates them",
}


def verdict(r: TaskBacktest, loss_range: tuple[float, float] | None = None) -> Verdict:
    """Advance warning yes or no, from the backtest's records alone.

    Yes when the unpinned reading (the earliest successful cutoff whose prediction is not
    pinned) lies before emergence (multiplier > 1): the text gives the multiplier, the cutoff's
    checkpoints, its error and its 5–95% interval. Otherwise no, with the reason: never emerged,
    nothing fitted, no pre-emergence fit, successes only pinned, or predictions outside the
    tolerance. ``loss_range`` (the data's lowest and highest checkpoint loss) lets the text say
    when an interval is wider than the data."""
    tol = r.tolerance
    if not r.emerged:
        why = r.ground_truth.reason if r.ground_truth is not None and r.ground_truth.reason else ""
        text = ("Advance warning: no — nothing has emerged to warn of: few-shot accuracy never left chance "
                "in these checkpoints" + (f" ({why})" if why else "") + ".")
        main = r.main_cutoff
        if main is not None and main.emergence_loss is not None:
            text += (f" Fitted on {fitted_on(r, main)}, the law forecasts emergence at {main.emergence_loss:.3f} "
                     f"nats{_sure(main, loss_range)}" + _pinned_clause(main) + "; no ground truth yet to check it.")
        return Verdict(False, text)
    if not r.located:
        return Verdict(False, "Advance warning: not scored — few-shot accuracy left chance, but the elbow is not "
                              f"located inside the data ({r.ground_truth.reason}): no ground truth to check a forecast against.")
    if not r.cutoffs or all(c.prediction is None and c.emergence_loss is None for c in r.cutoffs):
        return Verdict(False, f"Advance warning: no — no cutoff could be fitted ({r.note or 'too few checkpoints'}).")
    mult = r.flop_multiplier_unpinned
    first = r.earliest_unpinned_success
    if mult is not None and mult > 1 and first is not None:
        text = (f"Advance warning: yes — {mult:.2f}× FLOPs ahead of emergence. Fitted on {fitted_on(r, first)}, "
                f"the law put the elbow at {first.emergence_loss:.3f} nats against a ground truth of "
                f"{r.ground_truth_loss:.3f} (error {first.error:+.3f}, within ±{tol:g}){_sure(first, loss_range)}.")
        strict = r.flop_multiplier_strict
        if strict is not None and strict >= mult:
            text += " Every larger cutoff also succeeds."
        else:
            text += (f" Not every larger cutoff succeeds (strict reading {_mult(strict)}): "
                     "read the backtest below before relying on it.")
        return Verdict(True, text)
    pre = [c for c in r.cutoffs if c.pre_emergence and (c.prediction is not None or c.emergence_loss is not None)]
    if not pre:
        why = ("the task emerged before enough checkpoints existed to fit a forecast: every fitted cutoff "
               "already keeps a post-emergence checkpoint")
    else:
        wins = [c for c in pre if c.success]
        if wins and all(c.pinned for c in wins):
            kinds = sorted({c.pinned for c in wins})
            why = (f"the {len(wins)} pre-emergence fit{'s' if len(wins) > 1 else ''} within ±{tol:g} nats of the "
                   f"truth {'are' if len(wins) > 1 else 'is'} pinned ({', '.join(kinds)}): "
                   + "; ".join(_PINNED_WHY.get(k, k) for k in kinds)
                   + ". Their success says where the checkpoints fall, not where the law puts the elbow")
        else:
            scored = [c for c in pre if c.error is not None]
            closest = min(scored, key=lambda c: abs(c.error)) if scored else None
            why = f"no fit on pre-emergence checkpoints came within ±{tol:g} nats of the ground truth"
            if closest is not None:
                why += f" (closest: {closest.error:+.3f} with {closest.n_checkpoints} checkpoints)"
            if all(c.pinned for c in pre):
                why += "; all of them are pinned"
    text = f"Advance warning: no — {why}."
    if mult is not None:
        text += f" The first unpinned success already keeps a post-emergence checkpoint ({mult:.2f}×)."
    main = r.main_cutoff
    if main is not None and main.emergence_loss is not None:
        text += (f" The forecast a user would have made before emergence, fitted on {fitted_on(r, main)}: "
                 f"{main.emergence_loss:.3f} nats{_sure(main, loss_range)}, error {_f(main.error, '+.3f')}"
                 + _pinned_clause(main) + ".")
    return Verdict(False, text)


def _pinned_clause(c) -> str:
    return f" (pinned: {c.pinned})" if c.pinned else ""


def _sure(c, loss_range: tuple[float, float] | None) -> str:
    """', 5–95% a – b' and, when it is, 'wider than the whole loss range of the data'."""
    if c.p05 is None or c.p95 is None:
        return ", no interval"
    text = f", 5–95% {c.p05:.3f} – {c.p95:.3f}"
    if loss_range is not None and c.p05 <= loss_range[0] and c.p95 >= loss_range[1]:
        text += f" (wider than the loss range of all the data, {loss_range[0]:.2f} – {loss_range[1]:.2f})"
    return text


def readings(r: TaskBacktest) -> str:
    """The FLOP multipliers, the unpinned reading first and the paper's beside it."""
    if not r.located:
        return "no multiplier (" + ("elbow not located" if r.emerged else "never emerged") + ")"
    paper = _mult(r.flop_multiplier)
    if _paper_rests_on_pinned(r):
        paper += " (rests on a pinned fit)"
    return (f"FLOP multiplier, unpinned reading {_mult(r.flop_multiplier_unpinned)}; "
            f"paper's reading {paper}; strict {_mult(r.flop_multiplier_strict)}")


def _flops_cell(pred) -> str:
    if pred is None or pred.emergence_flops is None:
        return "–"
    text = f"{pred.emergence_flops:.2g} ({pred.flops_multiple:.2g}×)"
    return text + ("*" if pred.flops_extrapolated else "")


def cutoff_table(r: TaskBacktest) -> Table:
    headers = ["cutoff FLOPs", "checkpoints", "most capable (loss)", "prediction", "5–95%", "error",
               "success", "covered", "profile 90%", "covered (profile)"]
    rows, bad = [], set()
    for i, c in enumerate(r.cutoffs):
        post = "" if c.pre_emergence is not False else " †"
        rows.append([f"{c.max_flops:.3g}", str(c.n_checkpoints), f"{c.most_capable} ({c.most_capable_loss:.3f}){post}",
                     _f(c.emergence_loss) + (" (pinned)" if c.pinned else ""), _interval(c.p05, c.p95), _f(c.error, "+.3f"),
                     _yes(c.success) if c.converged or c.success is None else "fit failed", _yes(c.covered),
                     _profile(c), _yes(c.covered_profile)])
        bad |= {(i, j) for j, flag in ((6, c.success), (7, c.covered), (9, c.covered_profile)) if flag is False}
    caption = (f"success: |error| ≤ {r.tolerance:g} nats; † keeps a post-emergence checkpoint; pinned and "
               "profile 90% (open: a side the data do not bound within 0.5 nats): see the glossary.")
    return Table(headers, rows, caption, bad)


def _profile(c) -> str:
    if c.profile_low is None or c.profile_high is None:
        return "–"
    low = "open" if "low" in c.profile_open else f"{c.profile_low:.3f}"
    high = "open" if "high" in c.profile_open else f"{c.profile_high:.3f}"
    return f"{low} – {high}"


def ablations_as_table(results: Sequence[TaskBacktest]) -> Table | None:
    tab = ablation_table(results)
    if tab is None:
        return None
    base = [tab.cells.get((tab.rows[0], t)) for t in tab.tasks]
    rows, bad = [["checkpoints in the base", *("–" if b is None else str(b.n_checkpoints) for b in base)]], set()
    for i, name in enumerate(tab.rows, start=1):
        cells = [tab.cell_text(name, t) for t in tab.tasks]
        bad |= {(i, j + 1) for j, text in enumerate(cells) if "✗" in text}
        rows.append([name, *cells])
    caption = (f"|MLE error| in nats against the ground truth, one refit per variant of the base data "
               f"(the pre-emergence checkpoints); ✗: error > {tab.tolerance:g} nats or the fit failed; "
               "n/a: the data do not allow this variant.")
    return Table(["variant", *tab.tasks], rows, caption, bad)


def generated_at() -> dt.datetime:
    """Now (UTC), or ``SOURCE_DATE_EPOCH`` when set (the reproducible-builds convention: two
    reports of the same inputs are then the same bytes)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch.isdigit():
        return dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc)
    return dt.datetime.now(dt.timezone.utc)


def provenance_table(folder: ResultsFolder, source: str, config: BacktestConfig) -> Table:
    meta = {k: v for k, v in folder.metadata.items() if k != "truth"}
    rows = [["results folder", source],
            ["checkpoints / result rows", f"{folder.checkpoints.height} / {folder.results.height}"],
            ["method", f"{config.fit.method} ({config.fit.law_name} law, {config.fit.likelihood} likelihood, "
                       f"{config.fit.n_boot} bootstrap resamples, seed {config.fit.seed})"],
            ["tolerance", f"{config.tolerance:g} nats"],
            ["toolkit", f"emergence {__version__}"],
            ["generated", generated_at().strftime("%Y-%m-%d %H:%M UTC")]]
    rows += [[f"metadata: {k}", _short(v)] for k, v in sorted(meta.items())]
    return Table(["", ""], rows, "provenance: the folder's Parquet metadata and this run's settings")


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- figures


def fit_plot(data: TaskData, r: TaskBacktest, config: BacktestConfig):
    """Figure 4 for one task as a matplotlib figure: data per level, the main fit's curves, the
    elbows (accuracy kept within [0, 1] for a proportion metric)."""
    main = r.main_cutoff
    pred = main.prediction if main is not None else None
    spec = config.fit.spec
    kept = set(pred_checkpoints(data, main)) if main is not None else set(data.checkpoints)
    held = np.array([data.checkpoints[i] not in kept for i in data.ckpt])
    grid = _loss_grid(data, main)
    theta = _theta(pred, spec)
    curves = [_curve(data, held, grid, spec, theta, level) for level in [None, *data.data_levels]]
    interval = None if main is None else (main.emergence_loss if main.emergence_loss is not None else np.nan,
                                          main.p05 if main.p05 is not None else np.nan,
                                          main.p95 if main.p95 is not None else np.nan)
    sub = (f"fitted on {fitted_on(r, main)}; hollow points held out" if main is not None else "no fit possible")
    gt = r.ground_truth
    hinge = None if not r.located else (grid, law_.relu_curve(grid, gt.A, gt.B, gt.E))
    return fig_.task_fit_figure(r.task, curves, chance=data.chance, ground_truth=r.ground_truth_loss,
                                prediction=interval, truth_curve=hinge, subtitle=sub,
                                proportion=data.proportion, ylabel="accuracy" if data.proportion else data.metric)


def fit_figure(data: TaskData, r: TaskBacktest, config: BacktestConfig) -> Figure | None:
    caption = (f"{r.task}: {'accuracy' if data.proportion else data.metric} against pretraining loss, one colour "
               "per finetuning data level (D examples), black: few-shot, with the law's extrapolation to D₀"
               + (" (clipped to [0, 1])" if data.proportion else "") + "; dashed red: predicted elbow and its "
               "5–95% band; green: the ground-truth elbow fitted to every checkpoint.")
    return _figure(f"fit_{_slug(r.task)}", fit_plot(data, r, config), caption)


def _figure(name: str, fig, caption: str) -> Figure:
    """A report figure from a matplotlib one: its axis limits kept (for tests), then the PNG."""
    limits = fig_.axes_limits(fig)
    return Figure(name, fig_.png_bytes(fig), caption, limits)


def _loss_grid(data: TaskData, main) -> np.ndarray:
    """The data's loss range, extended (by at most 0.5 nats) to show a predicted elbow beyond it."""
    lo, hi = float(data.loss.min()), float(data.loss.max())
    target = main.emergence_loss if main is not None and main.emergence_loss is not None else lo
    return np.linspace(max(min(lo, target) - 0.1, lo - 0.5), hi + 0.05, 300)


def pred_checkpoints(data: TaskData, cut) -> list[str]:
    return [c for c, f in zip(data.checkpoints, data.ckpt_flops) if f <= cut.max_flops]


def _theta(pred, spec: law_.LawSpec) -> np.ndarray | None:
    if pred is None or not pred.params or not all(n in pred.params for n in spec.param_names):
        return None
    return np.array([pred.params[n] for n in spec.param_names], float)


def _curve(data: TaskData, held, grid, spec, theta, level: int | None) -> fig_.Curve:
    rows = data.few_shot if level is None else (~data.few_shot & (data.n_train == level))
    if theta is None:
        fitted = np.full_like(grid, np.nan)
    else:
        n = np.full(grid.shape, 0 if level is None else level)
        fitted = law_.performance(spec, theta, grid, n, np.full(grid.shape, level is None))
    label = "few-shot" if level is None else f"D = {level}"
    return fig_.Curve(label, data.loss[rows], data.value[rows], grid, fitted, level is None, held[rows])


def backtest_figure(r: TaskBacktest) -> Figure | None:
    if not r.cutoffs:
        return None
    arr = lambda name: np.array([np.nan if getattr(c, name) is None else getattr(c, name) for c in r.cutoffs], float)
    fig = fig_.backtest_figure(r.task, arr("max_flops"), arr("emergence_loss"), arr("p05"), arr("p95"),
                               ground_truth=r.ground_truth_loss, tolerance=r.tolerance,
                               success=np.array([bool(c.success) for c in r.cutoffs]),
                               post_emergence_flops=r.post_emergence_flops,
                               profile=(arr("profile_low"), arr("profile_high")))
    caption = (f"{r.task} backtest: each point refits on the checkpoints with FLOPs ≤ the cutoff; bars: "
               f"5–95% bootstrap interval; wide grey bars: 90% profile-likelihood interval (a side the data do "
               f"not bound stops at ±0.5 nats); green band: ±{r.tolerance:g} nats of the ground truth; dashed "
               "grey: the first post-emergence checkpoint (cutoffs left of it are forecasts).")
    return _figure(f"backtest_{_slug(r.task)}", fig, caption)


def cdf_figure(results: Sequence[TaskBacktest]) -> Figure | None:
    samples, truth, mle = {}, {}, {}
    for r in results:
        main = r.main_cutoff
        pred = main.prediction if main is not None else None
        if pred is None or pred.samples is None or len(pred.samples) == 0:
            continue
        samples[r.task], truth[r.task] = pred.samples, r.ground_truth_loss
        mle[r.task] = np.nan if main.emergence_loss is None else main.emergence_loss
    if not samples:
        return None
    fig = fig_.cdf_figure(samples, truth, mle)
    caption = ("Distribution of the predicted emergence loss of each task's pre-emergence fit (bootstrap "
               "resamples of checkpoints and items); dashed red: MLE; green: ground truth.")
    return _figure("bootstrap_cdf", fig, caption)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


# --------------------------------------------------------------------------- assembling


def build_sections(folder: ResultsFolder, results: Sequence[TaskBacktest], config: BacktestConfig,
                   source: str) -> list[Section]:
    truth = folder.metadata.get("truth") if folder.metadata.get("simulated") else None
    data = {r.task: TaskData.from_folder(folder, r.task, config.fit.metric) for r in results}
    ranges = {t: (float(d.ckpt_loss.min()), float(d.ckpt_loss.max())) for t, d in data.items() if d.n_checkpoints}
    about = dataset_note(folder, source, results)
    paragraphs = ([about] if about else []) + _summary_lines(results, ranges)
    intro = Section("Summary", paragraphs, [summary_table(results, truth), glossary()])
    sections = [intro]
    for r in results:
        blocks = [b for b in (fit_figure(data[r.task], r, config), backtest_figure(r)) if b is not None]
        if r.cutoffs:
            blocks.append(cutoff_table(r))
        sections.append(Section(f"Task {r.task}", [_task_text(r)], blocks, level=3,
                                lead=verdict(r, ranges.get(r.task)).text))
    cdf = cdf_figure(results)
    if cdf is not None:
        sections.append(Section("Uncertainty of the prediction", [], [cdf]))
    abl = ablations_as_table(results)
    if abl is not None:
        sections.append(Section("Ablations (the paper's Table 2)", [], [abl]))
    sections.append(Section("Provenance", [], [provenance_table(folder, source, config)]))
    return sections


def _summary_lines(results: Sequence[TaskBacktest], ranges: dict[str, tuple[float, float]]) -> list[str]:
    """One paragraph per task: the verdict's first sentence, then the multipliers (unpinned first)."""
    lines = []
    for r in results:
        head = verdict(r, ranges.get(r.task)).text.split(". ")[0].rstrip(".")
        lines.append(f"{r.task}: {head}. {readings(r)}.")
    return lines


# --------------------------------------------------------------------------- the shipped micro-ladder


MICROLADDER_FAMILY = "microladder-"  # checkpoint families written by `emergence harvest microladder`


def is_microladder(folder: ResultsFolder, source: str = "") -> bool:
    """True for a folder made by ``emergence harvest microladder``: its metadata says so
    (``dataset = "microladder"``), its manifest.json names that command, or every checkpoint
    family carries the ladder's name."""
    if folder.metadata.get("dataset") == "microladder":
        return True
    manifest = Path(source) / "manifest.json" if source else None
    if manifest is not None and manifest.is_file():
        try:
            command = str(json.loads(manifest.read_text()).get("command", ""))
        except (OSError, ValueError, AttributeError):
            command = ""
        if "harvest microladder" in command:
            return True
    families = folder.checkpoints["family"].to_list() if "family" in folder.checkpoints.columns else []
    return bool(families) and all(str(f).startswith(MICROLADDER_FAMILY) for f in families)


def dataset_note(folder: ResultsFolder, source: str, results: Sequence[TaskBacktest]) -> str | None:
    """For the micro-ladder: what the dataset demonstrates and what it does not, its numbers
    computed from this report's results (docs/findings.md has the discussion)."""
    if not is_microladder(folder, source):
        return None
    from fitting.predict import FitConfig, family_elbows

    text = ("About this dataset: the micro-ladder is real, not simulated: four tiny Llama models (36 thousand to "
            "0.46 million parameters) pretrained from scratch on a CPU on a synthetic topic language, 16 checkpoints "
            "each, measured with this toolkit (pretraining loss, 2-shot accuracy, rank-4 LoRA finetuning on "
            "8–512 examples). It demonstrates the whole pipeline on measured data. What its numbers say here:")
    for r in results:
        if not r.located:
            text += f" {r.task} {'never left chance' if not r.emerged else 'left chance before its elbow can be located'};"
            continue
        per = family_elbows(folder, r.task, FitConfig())
        located = {f.removeprefix(MICROLADDER_FAMILY): e for f, e in per.items() if e is not None}
        clause = f" {r.task} leaves chance at {r.ground_truth_loss:.2f} nats pooled"
        if len(located) >= 2:
            spread = max(located.values()) - min(located.values())
            clause += (" (per size " + ", ".join(f"{f} {e:.2f}" for f, e in located.items())
                       + f": a spread of {spread:.2f} nats, " + ("within" if spread <= r.tolerance else "beyond")
                       + f" the {r.tolerance:g}-nat tolerance, so emergence "
                       + ("happens at about one loss across sizes" if spread <= r.tolerance
                          else "does not happen at one loss across sizes") + ")")
        top = _all_checkpoints_cut(r)
        if top is not None and top.emergence_loss is not None:
            clause += (f"; the paper's law fitted on all checkpoints puts it at {top.emergence_loss:.2f} "
                       f"({top.emergence_loss - r.ground_truth_loss:+.2f})")
        pre = sum(1 for c in r.cutoffs if c.pre_emergence)
        text += clause + f"; {pre} backtest cutoff{'s' * (pre != 1)} come before emergence;"
    text = text.rstrip(";") + "."
    warned = [r.task for r in results if verdict(r).warning]
    text += (f" In this report {', '.join(warned)} {'gives' if len(warned) == 1 else 'give'} an unpinned advance "
             "warning; read its verdict and backtest before trusting it." if warned else
             " It does not demonstrate advance warning: no task gives one in this report (the verdicts below say why).")
    return text + " Details: docs/findings.md and docs/microladder.md."


def _task_text(r: TaskBacktest) -> str:
    if not r.located:
        what = "left chance, elbow not located" if r.emerged else "never left chance"
        text = f"Few-shot performance {what} ({r.ground_truth.reason if r.ground_truth else 'no few-shot rows'})."
    else:
        text = (f"Ground-truth elbow {r.ground_truth_loss:.3f} nats; first post-emergence checkpoint "
                f"{r.post_emergence_checkpoint} ({r.post_emergence_flops:.3g} FLOPs).")
    first = r.earliest_success
    if first is not None:
        text += (f" Earliest successful cutoff: {first.n_checkpoints} checkpoints up to "
                 f"{first.max_flops:.3g} FLOPs (most capable: {first.most_capable})"
                 + (f", its prediction pinned ({first.pinned})." if first.pinned else "."))
    if r.n_pinned_successes:
        text += (f" {r.n_pinned_successes} of the successes are pinned predictions (on the fit's "
                 "lowest checkpoint loss or the search edge, or from a fit in which nothing rises: "
                 "they cannot be told apart from that bound).")
    main = r.main_cutoff
    if main is not None and main.note:
        text += f" Pre-emergence fit: {main.note}."
    if r.cost is not None:
        text += f" {r.cost.text()[0].upper()}{r.cost.text()[1:]}."
    return text + (f" Note: {r.note}." if r.note and r.located else "")


def simulated_banner(folder: ResultsFolder) -> str | None:
    if not folder.metadata.get("simulated"):
        return None
    seed = folder.metadata.get("seed")
    return ("SIMULATED DATA: these results were drawn from a known emergence law "
            f"(fitting.simulate, seed {seed}), not measured on real models.")


# --------------------------------------------------------------------------- entry points


REPORT_FILES = ("index.html", "report.md")


def render_report(folder: ResultsFolder, results: Sequence[TaskBacktest], config: BacktestConfig,
                  out: str | os.PathLike, source: str = "") -> ReportPaths:
    """Write index.html, report.md and figures/*.png for already computed backtests."""
    out = check_out_dir(out, files=REPORT_FILES, dirs=("figures",))
    sections = build_sections(folder, results, config, source)
    banner = simulated_banner(folder)
    title = "Emergence prediction report" + (" (simulated data)" if banner else "")
    # The whole report folder is swapped in at once: a kill or a concurrent writer never
    # leaves new figures beside old HTML (other files in the folder are kept).
    with atomic.replace_folder(out, drop=(*REPORT_FILES, "figures")) as staging:
        figures = [fig_.save_png(b.png, staging / "figures" / f"{b.name}.png")
                   for s in sections for b in s.blocks if isinstance(b, Figure)]
        atomic.write_text(staging / "report.md", render_markdown(title, sections, banner))
        atomic.write_text(staging / "index.html", render_html(title, sections, banner))
    figures = [out / "figures" / f.name for f in figures]
    return ReportPaths(out / "index.html", out / "report.md", figures)


def write_report(results_dir: str | os.PathLike, out: str | os.PathLike,
                 config: BacktestConfig = BacktestConfig(), tasks: Sequence[str] | None = None,
                 progress: bool = False, cache=None) -> ReportPaths:
    """Load a results folder, backtest it (with ablations when configured), write the report.

    ``cache``: a :class:`fitting.backtest_cache.BacktestCache` (fits ``emergence backtest``
    already made are reused)."""
    check_out_dir(out, files=REPORT_FILES, dirs=("figures",))  # before minutes of fitting, not after
    folder = load_results(results_dir)
    results = backtest(folder, config, tasks=tasks, progress=progress, cache=cache)
    return render_report(folder, results, config, out, source=str(results_dir))
