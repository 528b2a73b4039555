"""Output folders: checked before any work is done, so a bad ``--out`` costs nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from emergence.errors import OutputError
from fitting.schema import CHECKPOINTS_FILE, RESULTS_FILE

RESULTS_TABLES = (CHECKPOINTS_FILE, RESULTS_FILE)


def check_out_dir(path: str | os.PathLike, *, option: str = "--out", files: Iterable[str] = (),
                  dirs: Iterable[str] = ()) -> Path:
    """``path`` is a folder, or can be created as one; ``files`` inside it are not folders and
    ``dirs`` are not files. Raises :class:`OutputError` naming the path otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: {option} must be a folder, and this is a file")
    ancestor = next(p for p in (path, *path.parents) if p.exists())
    if not ancestor.is_dir():
        raise OutputError(f"{path}: cannot create this folder, {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write in {ancestor} (permission denied)")
    for name in files:
        if (path / name).is_dir():
            raise OutputError(f"{path / name}: is a folder, and {option} needs to write a file there")
    for name in dirs:
        if (path / name).exists() and not (path / name).is_dir():
            raise OutputError(f"{path / name}: is a file, and {option} needs a folder there")
    return path


def refuse_to_replace(path: str | os.PathLike, *, flag: str = "--overwrite") -> None:
    """Refuse to write a results folder over one that already holds results tables."""
    existing = [name for name in RESULTS_TABLES if (Path(path) / name).exists()]
    if existing:
        raise OutputError(f"{path}: already holds {existing[0]}; pass {flag} to replace it, or choose another folder")
