"""What a prediction cost: the finetuning and evaluation FLOPs behind one task's results, against
pretraining FLOPs.

The harvest records ``finetune_flops`` (6 · params · tokens trained) and ``eval_flops``
(2 · params · tokens scored) per result row (docs/contract.md); imported results usually carry
neither, and the block then says so instead of reporting zero. The user's question is "how much
did this forecast cost next to what it forecasts": the spend is compared with the pretraining
FLOPs of the largest checkpoint and of the predicted emergence point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from fitting.schema import ResultsFolder


@dataclass(frozen=True)
class Cost:
    finetune_flops: float  # summed over the task's finetune rows that record it
    eval_flops: float  # summed over every row of the task that records it
    rows: int  # the task's result rows
    rows_without: int  # rows recording neither (imported results, older harvests)
    largest_pretraining_flops: float  # the most expensive checkpoint's pretraining FLOPs
    emergence_flops: float | None = None  # the predicted emergence point's pretraining FLOPs

    @property
    def total(self) -> float:
        return self.finetune_flops + self.eval_flops

    @property
    def known(self) -> bool:
        return self.rows_without < self.rows

    def to_json(self) -> dict[str, Any]:
        share = (lambda x: None if not x or not self.known else self.total / x)
        return dict(finetune_flops=self.finetune_flops if self.known else None,
                    eval_flops=self.eval_flops if self.known else None,
                    total_flops=self.total if self.known else None, rows=self.rows, rows_without=self.rows_without,
                    largest_pretraining_flops=self.largest_pretraining_flops,
                    vs_largest_pretraining=share(self.largest_pretraining_flops),
                    emergence_flops=self.emergence_flops, vs_emergence=share(self.emergence_flops))

    def text(self) -> str:
        """One line: ``"finetuning 2.6e13 + evaluation 4.1e12 FLOPs = 1.8x the largest checkpoint's
        pretraining, 0.06x the predicted emergence point's"``."""
        if not self.known:
            return f"cost: not recorded in these results ({self.rows} rows without finetune_flops or eval_flops)"
        out = (f"cost: finetuning {self.finetune_flops:.2g} + evaluation {self.eval_flops:.2g} FLOPs = "
               f"{self.total / self.largest_pretraining_flops:.3g}x the largest checkpoint's pretraining")
        if self.emergence_flops:
            out += f", {self.total / self.emergence_flops:.3g}x the predicted emergence point's"
        if self.rows_without:
            out += f" ({self.rows_without} of {self.rows} rows record no cost)"
        return out


def task_cost(folder: ResultsFolder, task: str, emergence_flops: float | None = None) -> Cost:
    """The cost block of one task of a results folder."""
    rows = folder.results.filter(pl.col("task") == task)
    cols = set(rows.columns)
    fine = rows["finetune_flops"] if "finetune_flops" in cols else pl.Series([None] * rows.height, dtype=pl.Float64)
    ev = rows["eval_flops"] if "eval_flops" in cols else pl.Series([None] * rows.height, dtype=pl.Float64)
    without = int((fine.is_null() & ev.is_null()).sum())
    return Cost(finetune_flops=float(fine.fill_null(0.0).sum()), eval_flops=float(ev.fill_null(0.0).sum()),
                rows=rows.height, rows_without=without,
                largest_pretraining_flops=float(folder.checkpoints["flops"].max()),
                emergence_flops=emergence_flops)
