"""Resumable storage: one Parquet part per unit of work, compacted into the contract's tables.

A unit (one checkpoint's pretraining loss, or one checkpoint x task x setting evaluation) is
keyed by :func:`unit_key`, a sha256 of everything that determines its numbers (checkpoint and
revision, task config, prompt hash, engine and library versions). Its rows go to
``RESULTS_DIR/parts/<kind>/<key>.parquet``, written atomically (temp file + rename), so after a
``kill -9`` a part is either whole or absent; a restarted run skips every part that exists and
computes the rest, so it writes no duplicates and gives the same numbers.

Part formats (extra columns are allowed and carried along):

- ``loss``: one row ``checkpoint, pretrain_loss, bits_per_byte, loss_tokens, loss_bytes,
  loss_documents, loss_window``.
- evaluation kinds (``eval``; the finetuning sweep adds its own kinds): one row per item with
  the items columns of :mod:`fitting.schema` plus ``metric`` and ``chance`` and any per-unit
  constants (``shots``, ``prompt_hash``, costs, ...). :func:`compact` derives each results row
  (``value`` = mean of ``correct``, ``n_items`` = row count) and keeps the per-unit constants as
  extra results columns.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import polars as pl
import pyarrow.parquet as pq

from emergence.errors import OutputError
from emergence.paths import RESULTS_TABLES, check_out_dir
from harvest.tasks.metrics import decode_metrics, unit_results
from fitting.schema import ITEM_COLUMNS, ITEM_KEY, ITEMS_FILE, METADATA_KEY, ResultsFolder, write_parquet_atomic, write_results

PARTS_DIR = "parts"
ITEM_EXTRA = ("gold",)  # item-level columns kept in items.parquet besides the contract's
METRIC_ITEM_PREFIXES = ("prediction_", "correct_")  # a unit's other metrics' item columns (kept too)
RESULT_GROUP = [k for k in ITEM_KEY if k != "item_id"]


def unit_key(**parts: Any) -> str:
    """sha256 of the canonical JSON of ``parts``: equal inputs, equal key."""
    canonical = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def claim_results_dir(out_dir: str | os.PathLike) -> Path:
    """Check ``out_dir`` before any work: a folder harvest can write, and never a results folder
    that harvest did not make (its tables would be replaced by the compaction of the parts)."""
    out = check_out_dir(out_dir, files=(*RESULTS_TABLES, ITEMS_FILE, "manifest.json"), dirs=(PARTS_DIR,))
    existing = [name for name in RESULTS_TABLES if (out / name).exists()]
    if existing and not (out / PARTS_DIR).is_dir():
        raise OutputError(f"{out}: holds {existing[0]} that no harvest wrote here (no {PARTS_DIR}/ folder), "
                          "and a harvest would replace it; choose another --out")
    return out


class Store:
    """The parts folder of one results folder."""

    def __init__(self, out_dir: str | os.PathLike):
        self.root = Path(out_dir)
        self.parts = self.root / PARTS_DIR

    def path(self, kind: str, key: str) -> Path:
        return self.parts / kind / f"{key}.parquet"

    def has(self, kind: str, key: str) -> bool:
        return self.path(kind, key).is_file()

    def write(self, kind: str, key: str, rows: pl.DataFrame, meta: dict[str, Any] | None = None) -> None:
        """Write one unit's rows atomically; ``meta`` (timings, config) goes to Parquet metadata."""
        write_parquet_atomic(rows, self.path(kind, key), {"unit": key, "kind": kind, **(meta or {})})

    def read(self, kind: str, keys: Iterable[str]) -> pl.DataFrame:
        frames = [pl.read_parquet(self.path(kind, k)) for k in keys]
        return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()

    def meta(self, kind: str, key: str) -> dict[str, Any]:
        raw = (pq.read_schema(self.path(kind, key)).metadata or {}).get(METADATA_KEY, b"{}")
        return json.loads(raw)

    def remove_stale_temps(self) -> int:
        """Delete temp files left by a killed writer (never a finished part)."""
        stale = list(self.parts.rglob(".*.tmp")) if self.parts.is_dir() else []
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)


def results_from_items(items: pl.DataFrame) -> pl.DataFrame:
    """One results row per unit and metric: the unit's primary metric from ``correct`` (accuracy =
    its mean), n_items, and the per-unit constants; a unit whose rows name several metrics
    (``metrics``, :func:`harvest.tasks.metrics.encode_metrics`: CoLA's MCC and accuracy, GSM8K's two
    answer filters) gets one row per metric, each aggregated its own way over its own columns."""
    extra = [c for c in items.columns if c.startswith(METRIC_ITEM_PREFIXES)]
    constant = [c for c in items.columns if c not in ITEM_COLUMNS and c not in ITEM_EXTRA and c not in extra]
    plain = items if "metrics" not in items.columns else items.filter(pl.col("metrics").is_null())
    out = (
        plain.group_by(RESULT_GROUP, maintain_order=True)
        .agg(pl.col("correct").cast(pl.Float64).mean().alias("value"), pl.len().cast(pl.Int64).alias("n_items"),
             *[pl.col(c).first() for c in constant])
    )
    if "metrics" not in items.columns or plain.height == items.height:
        return out.drop("metrics", strict=False)
    rows = []
    for _, unit in items.filter(pl.col("metrics").is_not_null()).group_by(RESULT_GROUP, maintain_order=True):
        first = unit.row(0, named=True)
        cols = unit.to_dict(as_series=False)
        for row in unit_results(decode_metrics(first["metrics"]), cols):
            rows.append({**{c: first[c] for c in (*RESULT_GROUP, *constant)}, **row, "n_items": unit.height})
    multi = pl.DataFrame(rows).select(out.columns) if out.height else pl.DataFrame(rows)
    return pl.concat([out, multi], how="diagonal_relaxed").drop("metrics", strict=False)


def compact(store: Store, checkpoints: pl.DataFrame, units: Iterable[tuple[str, str]],
            metadata: dict[str, Any] | None = None) -> ResultsFolder:
    """Write ``checkpoints.parquet``, ``results.parquet`` and ``items.parquet`` from the parts.

    ``units`` are the (kind, key) evaluation parts of this run, so parts left by an older,
    different spec never mix in. Validated by :func:`fitting.schema.write_results`.
    """
    by_kind: dict[str, list[str]] = {}
    for kind, key in units:
        by_kind.setdefault(kind, []).append(key)
    frames = [store.read(kind, keys) for kind, keys in by_kind.items()]
    rows = pl.concat(frames, how="diagonal_relaxed") if frames else _empty_items()
    results = results_from_items(rows) if rows.height else _empty_results()
    keep = [c for c in (*ITEM_COLUMNS, *ITEM_EXTRA) if c in rows.columns]
    keep += [c for c in rows.columns if c.startswith(METRIC_ITEM_PREFIXES)]
    items = rows.select(keep).sort(ITEM_KEY) if rows.height else None
    # In place (not a folder swap): shards and workers may be writing parts into this folder.
    return write_results(store.root, checkpoints, results.sort(RESULT_GROUP), items, metadata,
                         whole_folder=False)


def _empty_items() -> pl.DataFrame:
    return pl.DataFrame(schema=ITEM_COLUMNS)


def _empty_results() -> pl.DataFrame:
    from fitting.schema import RESULT_COLUMNS

    return pl.DataFrame(schema=RESULT_COLUMNS)
