"""Which training examples a finetuning cell sees: deterministic draws of ``n_train`` examples.

A subset is a function of ``(n_pool, n_train, subset_seed, nested)`` only, computed from
BLAKE2b hashes of the example indices, so it is the same on every machine, Python and NumPy
version, and a Ray worker or SLURM shard draws exactly what the local run draws.

- ``nested=True`` (default): example ``i`` gets the key ``hash(seed, i)``; a subset of size
  ``n`` is the ``n`` smallest keys. For one seed, smaller subsets are contained in larger ones,
  so differences between data levels come from the amount of data, not from which examples
  were drawn (the pilot micro-ladder used nested subsets; the paper does not say).
- ``nested=False``: the key is ``hash(seed, n, i)``, so every size is an independent draw.

Different seeds give different subsets in both modes; subsets come back in pool order.
"""

from __future__ import annotations

import hashlib
from typing import Sequence, TypeVar

from emergence.errors import SpecError

T = TypeVar("T")


def _key(*parts: int) -> bytes:
    text = ":".join(str(p) for p in parts).encode()
    return hashlib.blake2b(text, digest_size=8).digest()


def subset_indices(n_pool: int, n_train: int, subset_seed: int, nested: bool = True) -> list[int]:
    """Sorted indices of the ``n_train`` examples drawn from a pool of ``n_pool``."""
    if n_train < 1:
        raise SpecError(f"n_train must be at least 1; got {n_train}")
    if n_train > n_pool:
        raise SpecError(f"n_train={n_train} is larger than the train split ({n_pool} examples)")
    salt = (subset_seed,) if nested else (subset_seed, n_train)
    ranked = sorted(range(n_pool), key=lambda i: _key(*salt, i))
    return sorted(ranked[:n_train])


def draw_subset(pool: Sequence[T], n_train: int, subset_seed: int, nested: bool = True) -> list[T]:
    """The examples of one cell (see :func:`subset_indices`)."""
    return [pool[i] for i in subset_indices(len(pool), n_train, subset_seed, nested)]


def geometric_levels(n_pool: int, minimum: int, count: int, maximum: int | None = None) -> list[int]:
    """``count`` data levels spaced evenly in log from ``minimum`` to ``maximum`` (default: all).

    Rounded to integers; duplicates (when the range is narrow) are dropped, so fewer may come back.
    """
    top = n_pool if maximum is None else min(maximum, n_pool)
    if not 1 <= minimum <= top:
        raise SpecError(f"geometric data levels: min={minimum} must lie in [1, {top}] (train split has {n_pool})")
    if count < 1:
        raise SpecError(f"geometric data levels: count must be at least 1; got {count}")
    if count == 1:
        return [top]
    ratio = (top / minimum) ** (1 / (count - 1))
    levels = [round(minimum * ratio**k) for k in range(count)]
    levels[-1] = top
    return sorted(set(levels))
