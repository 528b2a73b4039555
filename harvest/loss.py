"""Pretraining loss: mean next-token loss (nats per token) over a fixed held-out text.

The definition (``LOSS_DEFINITION``, recorded with every measurement):

- The held-out text is a list of documents: a ``.txt`` file is one document; a ``.jsonl``,
  ``.json`` or ``.parquet`` file or a dataset (read with ``datasets``, streamed) gives one
  document per row from ``column``. The first ``max_documents`` are used, in order.
- Each document is encoded on its own with the checkpoint's tokenizer, BOS added only where the
  tokenizer adds it by default (Llama: yes; GPT-2/Pythia: no), and cut into consecutive,
  non-overlapping windows of ``window`` tokens; in each window every token but the first is
  predicted from the window's earlier tokens (``harvest/engines/base.py``).
- ``pretrain_loss = Σ -log p / number of predicted tokens`` (nats per token).
- ``bits_per_byte = Σ -log p / (ln 2 · UTF-8 bytes of the documents)``: tokenizer-independent,
  so it compares families with different tokenizers; it is recorded as an extra column.

Nats per token depend on the tokenizer: compare families on one loss axis only when they share
a tokenizer, or use ``bits_per_byte``. Use the same held-out text for a whole family, and a
shared set (such as C4 validation) when families differ.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from emergence.errors import SpecError
from harvest.engines.base import Engine
from harvest.spec import HeldOutSpec

LOSS_DEFINITION = "v1: per-document encode (tokenizer's default BOS), non-overlapping windows, mean nats/token"


@dataclass(frozen=True)
class LossMeasurement:
    pretrain_loss: float  # nats per predicted token
    bits_per_byte: float
    n_tokens: int
    n_bytes: int
    n_documents: int


def read_documents(spec: HeldOutSpec) -> list[str]:
    """The held-out documents named by the spec, in order, at most ``max_documents``."""
    docs = _read_file(spec) if spec.path is not None else _read_dataset(spec)
    docs = [d for d in docs if d]
    if spec.max_documents is not None:
        docs = docs[: spec.max_documents]
    if not docs:
        raise SpecError(f"held_out: no text found in {spec.path or spec.dataset}")
    return docs


def _read_file(spec: HeldOutSpec) -> list[str]:
    path = Path(spec.path)
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
    import polars as pl

    readers = {".jsonl": pl.read_ndjson, ".json": pl.read_ndjson, ".parquet": pl.read_parquet}
    if path.suffix not in readers:
        raise SpecError(f"held_out.path: {path} must be .txt, .jsonl, .json or .parquet")
    try:
        frame = readers[path.suffix](path)
    except Exception as err:
        raise SpecError(f"held_out.path: cannot read {path} ({type(err).__name__})") from None
    if spec.column not in frame.columns:
        raise SpecError(f"held_out.column: {spec.column!r} not in {path} (columns: {', '.join(frame.columns)})")
    return [str(x) for x in frame[spec.column].to_list()]


def _read_dataset(spec: HeldOutSpec) -> list[str]:
    import itertools

    import datasets

    try:
        rows = datasets.load_dataset(spec.dataset, spec.config, split=spec.split, streaming=True)
        rows = itertools.islice(rows, spec.max_documents) if spec.max_documents else rows
        return [str(r[spec.column]) for r in rows]
    except Exception as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise SpecError(f"held_out.dataset: cannot read {spec.dataset!r} split {spec.split!r}: {reason}") from None


def documents_hash(docs: Sequence[str]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.encode())
        h.update(b"\x1e")
    return h.hexdigest()


def measure_loss(engine: Engine, docs: Sequence[str], window: int) -> LossMeasurement:
    """Pretraining loss and bits per byte of ``engine``'s checkpoint on ``docs``."""
    nll, n_tokens = engine.token_nll(list(docs), window)
    if n_tokens == 0:
        raise SpecError("held_out: the text gives no predicted tokens (documents too short?)")
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    return LossMeasurement(nll / n_tokens, nll / (math.log(2) * n_bytes), n_tokens, n_bytes, len(docs))
