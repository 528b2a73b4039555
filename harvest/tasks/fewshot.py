"""Deterministic k-shot prompts, built exactly as lm-evaluation-harness builds them.

One ``random.Random(seed)`` per task; for each eval row, in order, ``rnd.sample(pool, k)``
(when the pool is the eval split itself: ``k + 1`` rows drawn and the row itself dropped).
So a prompt depends on the seed, the pool and the row's position among the eval rows.

A task whose ``fewshot_draws_extra`` is true (CoLA, CommonsenseQA) draws ``k + 1`` rows and
keeps the first ``k`` even when the pool is another split: lm-eval 0.4.13 passes the eval row to
its sampler when the task's ``fewshot_split`` equals its ``test_split``, and in the YAMLs of
those tasks both are unset (``None == None``), so it draws one row more per item. The shots of
the first item are the same either way; every later item's differ unless the extra draw is made.

A task whose ``fewshot_sampler`` is ``"first_n"`` (MMLU, as lm-eval's ``first_n`` sampler) takes
the first k rows of its pool instead (minus the row itself when the pool is the eval split), so
every row with the same pool gets the same shots and its prompts share one long token prefix.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from harvest.tasks.base import FEWSHOT_DELIMITER, TARGET_DELIMITER, Doc, Task


@dataclass(frozen=True)
class EvalItem:
    """One scored item: its prompt and what counts as correct."""

    item_id: str
    context: str
    continuations: tuple[str, ...] | None  # multiple choice: " " + each choice
    gold: int | None
    doc: Doc


def draw_shots(rnd: random.Random, pool: list[Doc], doc: Doc, k: int, same_split: bool) -> list[Doc]:
    if k == 0:
        return []
    if not same_split:
        return rnd.sample(pool, k)
    shots = [d for d in rnd.sample(pool, k + 1) if d != doc][:k]
    if len(shots) < k:  # duplicates of ``doc`` in the pool
        shots = rnd.sample([d for d in pool if d != doc], k)
    return shots


def first_shots(pool: list[Doc], doc: Doc, k: int, same_split: bool) -> list[Doc]:
    """lm-eval's ``first_n`` sampler: the first ``k`` rows of the pool, in file order."""
    return ([d for d in pool if d != doc] if same_split else pool)[:k]


def build_context(task: Task, doc: Doc, shots: list[Doc]) -> str:
    demos = "".join(task.doc_to_text(s) + TARGET_DELIMITER + task.target(s) + FEWSHOT_DELIMITER for s in shots)
    return task.prefix(doc) + demos + task.doc_to_text(doc)


def build_items(task: Task, rows: list[tuple[str, Doc]], pool: list[Doc], k: int, seed: int,
                same_split: bool) -> list[EvalItem]:
    """``rows`` are (item id, doc) in evaluation order."""
    if k > len(pool) - (1 if same_split else 0):
        from emergence.errors import SpecError

        raise SpecError(f"task {task.name!r}: {k} shots requested but the few-shot split has {len(pool)} rows")
    rnd = random.Random(seed)
    pick = draw_shots if getattr(task, "fewshot_sampler", "random") == "random" else lambda _rnd, *a: first_shots(*a)
    items = []
    # lm-eval's extra draw (where lm-eval would fail for want of a k + 1-th row: k drawn)
    extra = same_split or (bool(getattr(task, "fewshot_draws_extra", False)) and k < len(pool))
    for item_id, doc in rows:
        shots = pick(rnd, task.fewshot_pool(pool, doc), doc, k, extra)
        context = build_context(task, doc, shots)
        if task.kind == "multiple_choice":
            conts = tuple(TARGET_DELIMITER + c for c in task.choices(doc))
            items.append(EvalItem(item_id, context, conts, task.gold(doc), doc))
        else:
            items.append(EvalItem(item_id, context, None, None, doc))
    return items


def prompts_hash(items: list[EvalItem]) -> str:
    """sha256 over every item's id, context and continuations: what the model is asked."""
    h = hashlib.sha256()
    for it in items:
        for part in (it.item_id, it.context, *(it.continuations or ()), str(it.gold)):
            h.update(part.encode())
            h.update(b"\x1f")
    return h.hexdigest()
