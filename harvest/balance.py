"""Balanced shares of a sweep for ``n`` workers (one per GPU) or shards: deterministic, by cost.

Costs are estimates (:func:`harvest.dryrun.sweep_costs`: FLOPs of each cell and of each
checkpoint's base units). A checkpoint's work stays together, so its base model loads once per
worker, unless its cost is more than one worker's fair share (total / n): then it is cut into
the fewest pieces no larger than that share (each piece costs one more load of the checkpoint).
Pieces go to workers longest-processing-time first (LPT, Graham 1969): by decreasing cost, each
to the least loaded worker, so the busiest worker has at most 4/3 of the optimum's load. Ties
go by name and worker index, so every shard of a SLURM array computes the same assignment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence


def lpt(costs: dict[str, float], n: int) -> list[list[str]]:
    """Names of ``costs`` in ``n`` bins, longest first onto the least loaded bin (fewest items,
    then lowest index, on a tie); each bin lists its names in the order they were placed."""
    if n < 1:
        raise ValueError(f"need at least one bin, got {n}")
    bins: list[list[str]] = [[] for _ in range(n)]
    loads = [0.0] * n
    for name in sorted(costs, key=lambda k: (-costs[k], k)):
        i = min(range(n), key=lambda b: (loads[b], len(bins[b]), b))
        bins[i].append(name)
        loads[i] += costs[name]
    return bins


@dataclass(frozen=True)
class Share:
    """One worker's (or shard's) part of a sweep: its cells, the checkpoints whose base units
    (pretraining loss, few-shot) it measures, and their estimated cost."""

    cells: tuple[Any, ...]  # harvest.sweep.Cell, in the plan's order
    base: tuple[str, ...]
    cost: float

    @property
    def checkpoints(self) -> list[str]:
        return list(dict.fromkeys([*self.base, *(c.checkpoint for c in self.cells)]))


def balance(cells: Sequence[Any], base: Sequence[str], cell_cost: dict[str, float], base_cost: dict[str, float],
            n: int) -> list[Share]:
    """``n`` shares of ``cells`` (objects with ``key`` and ``checkpoint``) and of the base units
    of the checkpoints in ``base``: disjoint, covering, balanced (module docstring)."""
    groups: dict[str, list[Any]] = {name: [] for name in base}
    for cell in cells:
        groups.setdefault(cell.checkpoint, []).append(cell)
    own = {name: base_cost.get(name, 0.0) if name in base else 0.0 for name in groups}
    total = sum(own.values()) + sum(cell_cost[c.key] for c in cells)
    fair = total / n
    pieces: dict[str, tuple[str, list[Any], float]] = {}  # piece name -> (checkpoint, cells, cost)
    for name, group in groups.items():
        cost = own[name] + sum(cell_cost[c.key] for c in group)
        k = min(len(group), math.ceil(cost / fair - 1e-9)) if fair > 0 else 1
        if k <= 1:
            pieces[f"{name}\x00{0}"] = (name, group, cost)
            continue
        for j, keys in enumerate(lpt({c.key: cell_cost[c.key] for c in group}, k)):
            chosen = set(keys)
            part = [c for c in group if c.key in chosen]  # piece 0 also measures the base units
            pieces[f"{name}\x00{j}"] = (name, part, sum(cell_cost[c.key] for c in part) + (own[name] if j == 0 else 0))
    shares = []
    order = {c.key: i for i, c in enumerate(cells)}
    for names in lpt({piece: cost for piece, (_, _, cost) in pieces.items()}, n):
        mine = sorted((c for piece in names for c in pieces[piece][1]), key=lambda c: order[c.key])
        owners = {pieces[piece][0] for piece in names if piece.endswith("\x000")}
        shares.append(Share(tuple(mine), tuple(b for b in base if b in owners), sum(pieces[piece][2] for piece in names)))
    return shares
