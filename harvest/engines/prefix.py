"""Which multiple-choice contexts share a token prefix worth running once (the HF engine's
prefix sharing: an MMLU subject's description and fixed shots run once per group of items)."""

from __future__ import annotations

from typing import Sequence

# A common context prefix shorter than this (in tokens) is not worth its own forward pass.
MIN_SHARED_TOKENS = 16
# ... and a group whose sharing saves fewer tokens than this runs with the other items: its own
# prefix pass, partly filled batches and cache copies cost about what they save (on CPU, pairs of
# random-shot 5-shot items that share their first shot, 35 tokens, were no faster grouped).
MIN_SAVED_TOKENS = 256


def shared_prefix_groups(contexts: Sequence[Sequence[int]], min_shared: int) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """Indices of ``contexts`` (token ids) grouped by a common token prefix: ([(n_shared, members)], alone).

    Token ids, not strings, are compared, so a prefix is shared only when tokenising each whole
    context gave the same ids (a word straddling the boundary tokenises apart and shortens it).
    Sorted contexts are cut into runs where neighbours share >= ``min_shared`` tokens; a run stops
    when its shared prefix would fall below half of what it was. Each member keeps at least one
    token of its own (its last position gives the first choice token's logits).
    """
    order = sorted(range(len(contexts)), key=lambda i: list(contexts[i]))
    groups: list[tuple[int, list[int]]] = []
    alone: list[int] = []
    run, shared = order[:1], 0
    for prev, cur in zip(order, order[1:]):
        a, b = contexts[prev], contexts[cur]
        common = min(_common_prefix(a, b), len(a) - 1, len(b) - 1)
        narrowed = common if len(run) == 1 else min(shared, common)
        if narrowed >= min_shared and (len(run) == 1 or 2 * narrowed >= shared):
            run.append(cur)
            shared = narrowed
        else:
            _close_run(run, shared, groups, alone)
            run, shared = [cur], 0
    if run:
        _close_run(run, shared, groups, alone)
    return groups, alone


def worth_sharing(groups: list[tuple[int, list[int]]], alone: list[int], min_saved: int) -> tuple[list, list[int]]:
    """Split ``groups`` into those whose shared prefix saves >= ``min_saved`` tokens of forward
    pass ((members - 1) x shared tokens) and the rest, whose members join ``alone``."""
    kept = [(n, members) for n, members in groups if (len(members) - 1) * n >= min_saved]
    dropped = [i for n, members in groups if (len(members) - 1) * n < min_saved for i in members]
    return kept, alone + dropped


def _close_run(run: list[int], shared: int, groups: list, alone: list) -> None:
    if len(run) > 1:
        groups.append((shared, run))
    else:
        alone.extend(run)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
