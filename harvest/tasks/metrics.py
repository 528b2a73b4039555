"""What a task reports: its metrics, each with its chance level (floor) and scale.

A task declares ``metrics()``, the first one its primary metric (what a fit uses by default):

| task | metrics (primary first) | chance | scale | lm-eval counterpart |
| --- | --- | --- | --- | --- |
| MMLU, CommonsenseQA, synthetic | ``accuracy`` | 1 / choices | [0, 1] | ``acc`` |
| CoLA | ``mcc``, ``accuracy`` | 0, 0.5 | [-1, 1], [0, 1] | ``mcc`` (GLUE's metric) |
| GSM8K | ``exact_match``, ``exact_match_flexible`` | 0, 0 | [0, 1] | ``exact_match`` with the ``strict-match`` and ``flexible-extract`` filters |

Item rows carry the primary metric's ``prediction`` and ``correct``; a generation task whose
other metrics extract a different answer adds ``prediction_<metric>`` and ``correct_<metric>``
(:func:`item_columns`). :func:`unit_results` turns one unit's item rows into one results row per
metric. A mean over items (accuracy, exact match) is a proportion; Matthews correlation is
computed over the whole unit's (gold, prediction) pairs, as lm-eval does (``sklearn``'s
``matthews_corrcoef``, 0 when a row or column of the confusion matrix is empty).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

ACCURACY, MCC = "accuracy", "mcc"
EXACT_MATCH, EXACT_MATCH_FLEXIBLE = "exact_match", "exact_match_flexible"


@dataclass(frozen=True)
class Metric:
    """One number per evaluation unit: its name in ``results.parquet``, floor and scale."""

    name: str
    chance: float  # what a model without the capability scores (the law's base starts here)
    low: float = 0.0  # the metric's range
    high: float = 1.0
    aggregate: str = "mean"  # "mean" of per-item ``correct``, or "mcc" over (gold, prediction)
    lm_eval: str = "acc"  # lm-eval's name for it (metric[,filter])

    def value(self, golds: Sequence[str], predictions: Sequence[str], correct: Sequence[bool]) -> float:
        if not len(correct):
            raise ValueError(f"metric {self.name!r}: no items")
        if self.aggregate == "mcc":
            return matthews_corrcoef(golds, predictions)
        return sum(bool(c) for c in correct) / len(correct)

    @property
    def proportion(self) -> bool:
        """A share of items (binomial likelihood applies); else a score on [low, high]."""
        return self.aggregate == "mean"


def accuracy_metric(chance: float) -> Metric:
    return Metric(ACCURACY, float(chance))


def matthews_corrcoef(golds: Sequence[Any], predictions: Sequence[Any]) -> float:
    """Matthews correlation of labels (any number of classes), exactly as scikit-learn computes it.

    ``cov(y, ŷ) / sqrt(cov(y, y) · cov(ŷ, ŷ))`` over the confusion matrix; 0.0 when either
    variance is 0 (a constant prediction, or a single gold class), as sklearn returns.
    """
    if len(golds) != len(predictions):
        raise ValueError("golds and predictions differ in length")
    labels = sorted({*map(str, golds), *map(str, predictions)})
    index = {label: i for i, label in enumerate(labels)}
    k, n = len(labels), len(golds)
    true_counts, pred_counts, hits = [0] * k, [0] * k, 0
    for g, p in zip(map(str, golds), map(str, predictions)):
        true_counts[index[g]] += 1
        pred_counts[index[p]] += 1
        hits += g == p
    cov_ytyp = hits * n - sum(t * p for t, p in zip(true_counts, pred_counts))
    cov_ypyp = n * n - sum(p * p for p in pred_counts)
    cov_ytyt = n * n - sum(t * t for t in true_counts)
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return cov_ytyp / math.sqrt(cov_ytyt * cov_ypyp)


def encode_metrics(metrics: Sequence[Metric]) -> str:
    """A unit's metrics as one string column of its item rows (JSON: name, chance, low, high,
    aggregate, lm_eval per metric, primary first), so the store can aggregate each."""
    return json.dumps([[m.name, m.chance, m.low, m.high, m.aggregate, m.lm_eval] for m in metrics])


def decode_metrics(text: str) -> tuple[Metric, ...]:
    return tuple(Metric(str(n), float(c), float(lo), float(hi), str(a), str(e)) for n, c, lo, hi, a, e in json.loads(text))


def item_columns(metric: str, primary: str) -> tuple[str, str]:
    """The item columns holding ``metric``'s (prediction, correct)."""
    return ("prediction", "correct") if metric == primary else (f"prediction_{metric}", f"correct_{metric}")


def unit_results(metrics: Sequence[Metric], rows: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """One ``{"metric", "value", "chance"}`` per metric, from one unit's item columns.

    ``rows`` maps column names to one unit's values (a ``polars.DataFrame.to_dict(as_series=False)``
    works): ``gold`` and, per metric, the columns of :func:`item_columns`; a metric whose own
    columns are absent uses the primary ones (multiple choice: one prediction, several metrics).
    """
    out = []
    for metric in metrics:
        pred_col, ok_col = item_columns(metric.name, metrics[0].name)
        if ok_col not in rows:
            pred_col, ok_col = "prediction", "correct"
        value = metric.value(rows["gold"], rows[pred_col], rows[ok_col])
        out.append({"metric": metric.name, "value": float(value), "chance": metric.chance})
    return out
