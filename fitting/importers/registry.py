"""The importer registry and the steps every import shares.

An importer reads one public format and returns an :class:`Imported`: a checkpoints table
whose ``family``, ``params``, ``tokens`` or ``pretrain_loss`` may still be null where the
source does not record them, a few-shot results table, optional items, and provenance. This
module then completes the checkpoints (user table, command-line defaults, an explicitly chosen
loss proxy), refuses what is still missing with one line that says how to supply it, and
writes a validated folder with :func:`fitting.schema.write_results`.
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Any

import polars as pl

from emergence.errors import ContractError, SourceError
from emergence.paths import check_out_dir, refuse_to_replace
from fitting import schema
from fitting.importers.base import Imported, Importer, ImportOptions
from fitting.importers.losses import chinchilla_loss, CHINCHILLA_SOURCE
from fitting.importers.sources import big_number
from fitting.importers.tables import read_checkpoint_table

IMPORTER_VERSION = "1"
REQUIRED = ("family", "params", "tokens", "pretrain_loss")
FEW_SHOT_ONLY_NOTE = (
    "few-shot results only (no finetune rows): the ground-truth few-shot elbow and the "
    "loss-vs-FLOPs law can be fitted; the emergence law (a prediction before emergence) "
    "needs finetune results at several data levels"
)

# Format name -> "module:function", imported when used (one entry per importer).
IMPORTERS = {
    "lm-eval": "fitting.importers.lmeval:read",
    "pythia": "fitting.importers.pythia:read",
    "obsscaling": "fitting.importers.obsscaling:read",
    "gadre": "fitting.importers.gadre:read",
    "amuro-char": "fitting.importers.amuro_char:read",
    "pythia-arithmetic": "fitting.importers.pythia_arithmetic:read",
}
FORMATS = tuple(IMPORTERS)


def import_results(fmt: str, path: str | Path, out: str | Path, options: ImportOptions = ImportOptions()) -> schema.ResultsFolder:
    """Read ``path`` in format ``fmt`` and write a validated few-shot results folder to ``out``."""
    importer = _lookup(fmt)
    if options.finetunes is not None and fmt != "lm-eval":
        raise SourceError(f"--finetunes applies to lm-eval imports only, not {fmt}")
    out = Path(out)
    _check_out(out, options.overwrite)
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: not found")
    imported = importer(path, options)
    _check_source_task_names(imported.results, path)
    imported = _select_tasks(imported, options.only_tasks, path)
    checkpoints = complete_checkpoints(imported, options, fmt)
    metadata = _metadata(fmt, path, imported, options)
    metadata["pretrain_loss_sources"] = dict(checkpoints["pretrain_loss_source"].value_counts().iter_rows())
    return schema.write_results(out, checkpoints, imported.results, imported.items, metadata)


def _lookup(fmt: str) -> Importer:
    if fmt not in IMPORTERS:
        near = difflib.get_close_matches(fmt, FORMATS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ContractError(f"unknown import format {fmt!r} (known: {', '.join(FORMATS)}){hint}")
    module, name = IMPORTERS[fmt].split(":")
    return getattr(importlib.import_module(module), name)


def _check_out(out: Path, overwrite: bool) -> None:
    check_out_dir(out, files=(schema.CHECKPOINTS_FILE, schema.RESULTS_FILE, schema.ITEMS_FILE))
    if not overwrite:
        refuse_to_replace(out)


def _select_tasks(imported: Imported, only: tuple[str, ...], path: Path) -> Imported:
    """Keep only the chosen tasks, and only checkpoints (and items) that still have results."""
    if only:
        _check_task_names(imported.results, only, path)
        imported.results = imported.results.filter(pl.col("task").is_in(list(only)))
        if imported.items is not None:
            imported.items = imported.items.filter(pl.col("task").is_in(list(only)))
    used = imported.results["checkpoint"].unique().implode()
    imported.checkpoints = imported.checkpoints.filter(pl.col("checkpoint").is_in(used))
    return imported


def _check_source_task_names(results: pl.DataFrame, path: Path) -> None:
    """Refuse, before anything is fitted or written, a task name no report could show."""
    for name in results["task"].unique(maintain_order=True).to_list():
        problem = schema.task_name_problem(name)
        if problem is not None:
            raise SourceError(f"{path}: task name {schema.shown_name(name)} {problem}")


def _check_task_names(results: pl.DataFrame, only: tuple[str, ...], path: Path) -> None:
    known = sorted(results["task"].unique().to_list())
    for task in only:
        if task not in known:
            near = difflib.get_close_matches(task, known, n=3)
            hint = f"did you mean {', '.join(near)}?" if near else f"{len(known)} tasks, e.g. {', '.join(known[:8])}"
            raise SourceError(f"{path}: no task {task!r} in this source ({hint})")


# --------------------------------------------------------------------------- completion


def complete_checkpoints(imported: Imported, options: ImportOptions, fmt: str) -> pl.DataFrame:
    """Fill source gaps from the user table, then defaults, then an opted-in loss proxy."""
    ckpts = _with_loss_source(imported.checkpoints, "source")
    if options.checkpoints:
        ckpts = _apply_user_table(ckpts, options.checkpoints)
    ckpts = _apply_defaults(ckpts, options)
    if options.loss_proxy:
        ckpts = _apply_loss_proxy(ckpts, imported, options.loss_proxy, fmt)
    _require_complete(ckpts, imported, fmt)
    return ckpts


def _with_loss_source(ckpts: pl.DataFrame, label: str) -> pl.DataFrame:
    for name, dtype in schema.CHECKPOINT_COLUMNS.items():
        if name not in ckpts.columns:
            ckpts = ckpts.with_columns(pl.lit(None, dtype).alias(name))
    source = pl.when(pl.col("pretrain_loss").is_not_null()).then(pl.lit(label)).otherwise(pl.lit(None, pl.String))
    return ckpts.with_columns(source.alias("pretrain_loss_source"))


def _apply_user_table(ckpts: pl.DataFrame, path: Path) -> pl.DataFrame:
    table = read_checkpoint_table(path)
    known = ckpts["checkpoint"].to_list()
    for name in table.frame["checkpoint"].to_list():
        if name not in set(known):
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; names look like {known[0]!r}"
            raise SourceError(f"{path}: checkpoint {name!r} is not in the imported data{hint}")
    joined = ckpts.join(table.frame, on="checkpoint", how="left", suffix="__user")
    fills = []
    for name in table.frame.columns:
        if name == "checkpoint":
            continue
        fills.append(pl.coalesce(pl.col(f"{name}__user").cast(ckpts.schema[name]), pl.col(name)).alias(name))
    if "pretrain_loss" in table.frame.columns:
        fills.append(pl.when(pl.col("pretrain_loss__user").is_not_null()).then(pl.lit(f"user table {path}"))
                     .otherwise(pl.col("pretrain_loss_source")).alias("pretrain_loss_source"))
    return joined.with_columns(fills).select(ckpts.columns)


def _apply_defaults(ckpts: pl.DataFrame, options: ImportOptions) -> pl.DataFrame:
    defaults = {"family": options.family, "params": options.params, "tokens": options.tokens,
                "pretrain_loss": options.pretrain_loss}
    single = {k: v for k, v in defaults.items() if k != "family" and v is not None}
    for name in ("params", "tokens"):
        value = single.get(name)
        if value is not None and not 0 < value < 2**63:
            raise SourceError(f"--{name} {big_number(value)}: must be a positive count below 9.2e18")
    if single and ckpts.height != 1:
        name = next(iter(single))
        raise SourceError(f"--{name.replace('_', '-')} sets one checkpoint's value but this import has "
                          f"{ckpts.height} checkpoints; give them in a --checkpoints table instead")
    fills = [pl.col(k).fill_null(pl.lit(v, ckpts.schema[k])) for k, v in defaults.items() if v is not None]
    if options.pretrain_loss is not None:
        fills.append(pl.col("pretrain_loss_source").fill_null(pl.lit("--pretrain-loss option")))
    return ckpts.with_columns(fills) if fills else ckpts


def _apply_loss_proxy(ckpts: pl.DataFrame, imported: Imported, name: str, fmt: str) -> pl.DataFrame:
    proxies = {"chinchilla": chinchilla_proxy, **imported.loss_proxies}
    if name not in proxies:
        raise SourceError(f"unknown --loss-proxy {name!r} for {fmt} (available: {', '.join(sorted(proxies))})")
    loss, description = proxies[name](ckpts)
    missing = loss.is_null() & ckpts["pretrain_loss"].is_null()
    if missing.any():
        row = int(missing.arg_true()[0])
        raise SourceError(f"--loss-proxy {name}: no proxy value for checkpoint {ckpts['checkpoint'][row]!r} "
                          f"({description})")
    fill = ckpts["pretrain_loss"].is_null()
    return ckpts.with_columns(
        pl.when(fill).then(loss).otherwise(pl.col("pretrain_loss")).alias("pretrain_loss"),
        pl.when(fill).then(pl.lit(f"proxy {name}: {description}")).otherwise(pl.col("pretrain_loss_source"))
        .alias("pretrain_loss_source"),
    )


def chinchilla_proxy(ckpts: pl.DataFrame) -> tuple[pl.Series, str]:
    """The Chinchilla fit L(N, D) evaluated at each checkpoint's params and tokens."""
    return chinchilla_loss(ckpts["params"], ckpts["tokens"]), CHINCHILLA_SOURCE


def _require_complete(ckpts: pl.DataFrame, imported: Imported, fmt: str) -> None:
    for column in REQUIRED:
        nulls = ckpts[column].is_null().arg_true()
        if len(nulls):
            name = ckpts["checkpoint"][int(nulls[0])]
            raise SourceError(f"checkpoint {name!r} has no {column}: the {fmt} source does not record it "
                              f"({len(nulls)} of {ckpts.height} checkpoints lack it); {_hint(column, imported)}")


def _hint(column: str, imported: Imported) -> str:
    table = f"give --checkpoints FILE with columns checkpoint,{column}"
    if column == "pretrain_loss":
        proxies = sorted({"chinchilla", *imported.loss_proxies})
        return f"{table}, or opt in to a proxy with --loss-proxy {'|'.join(proxies)} (marked as a proxy in the output)"
    if column == "family":
        return f"{table} (or --family NAME for every checkpoint lacking one)"
    return f"{table} (or --{column} N when importing a single checkpoint)"


def _metadata(fmt: str, path: Path, imported: Imported, options: ImportOptions) -> dict[str, Any]:
    meta = {"import": {"format": fmt, "source": str(path.resolve()), "importer_version": IMPORTER_VERSION,
                       "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in options.__dict__.items()}},
            "few_shot_only": True, "note": FEW_SHOT_ONLY_NOTE}
    return {**meta, **imported.metadata}
