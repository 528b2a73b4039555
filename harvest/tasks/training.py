"""Finetuning pairs as token ids: the target ends with end-of-sequence, a cut is counted.

A task's ``train_examples()`` gives (prompt, " " + answer) text pairs; the end-of-sequence token
is the tokenizer's, so it is added here, as a token id (never as text such as ``"</s>"``, which
a tokenizer may split into pieces), after the target: the model learns to stop after the answer
(a GSM8K solution ends with ``#### N`` then EOS, and generation then stops at EOS, as lm-eval's
``until`` includes it). Prompt and target are split as the engines split them
(:func:`harvest.engines.loading.encode_pair`, lm-eval's rule).

A pair longer than ``max_length`` tokens loses tokens from the left (the prompt's start; the
target's end and EOS are kept) and is *counted*: :func:`encode_training_examples` returns how
many were cut, for the manifest and the sweep's summary line, never a silent cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class TrainingPair:
    """One training example: token ids (prompt, target, EOS) and where the target starts."""

    ids: tuple[int, ...]
    target_start: int
    truncated: bool  # tokens were cut from the left to fit max_length


@dataclass(frozen=True)
class Truncation:
    """How many examples were cut to ``max_length`` (0 when none)."""

    truncated: int
    total: int
    max_length: int

    def warning(self) -> str | None:
        if not self.truncated:
            return None
        return (f"{self.truncated} of {self.total} finetuning examples were longer than max_length "
                f"{self.max_length} tokens and lost their first tokens (raise max_length to keep them whole)")


def encode_training_pair(tokenizer, prompt: str, target: str, max_length: int, eos: bool = True) -> TrainingPair:
    from harvest.engines.loading import encode_pair

    ctx, cont = encode_pair(tokenizer, prompt, target)
    if not cont:
        from emergence.errors import SpecError

        raise SpecError(f"finetuning example has an empty target after tokenisation: {target!r}")
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos and eos_id is not None and cont[-1] != eos_id:
        cont = [*cont, int(eos_id)]
    ids = ctx + cont
    cut = max(0, len(ids) - max_length)  # drop from the left, never the target's end
    return TrainingPair(tuple(ids[cut:]), max(0, len(ctx) - cut), cut > 0)


def encode_training_examples(tokenizer, examples: Sequence[tuple[str, str]], max_length: int,
                             eos: bool = True) -> tuple[list[TrainingPair], Truncation]:
    pairs = [encode_training_pair(tokenizer, p, t, max_length, eos) for p, t in examples]
    return pairs, Truncation(sum(p.truncated for p in pairs), len(pairs), max_length)
