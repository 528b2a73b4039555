"""Atomic writes: a reader sees the old file (or folder) or the new one, never a mix or a half.

The one way the project writes outputs:

- :func:`atomic_path` yields a unique temporary path beside the target; when the block ends
  without an error the file is flushed to disk, given the mode the user's umask asks for, and
  renamed over the target (``os.replace``: atomic on POSIX and Windows). An error or a kill
  leaves the target untouched (a kill leaves a hidden ``.NAME.*.tmp`` beside it).
- :func:`write_bytes`, :func:`write_text` and :func:`write_json` are that for whole payloads.
- :func:`replace_folder` yields a staging folder beside a folder; when the block ends, the
  staging folder is swapped in by one atomic rename (Linux ``renameat2(RENAME_EXCHANGE)``), so
  a folder of several files (three Parquet tables; a report's HTML, Markdown and figures) is
  all old or all new, whatever instant a kill lands.

Temporary names are unique (``mkstemp``/``mkdtemp``), so concurrent writers never share one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import json
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from emergence.errors import OutputError

_UMASK_LOCK = threading.Lock()
STAGING = ".staging-"  # staging folders: .NAME.staging-<pid>-XXXX beside the folder
RETIRED = ".retired-"  # the old folder after the swap, removed at once


def umask() -> int:
    """The process's umask (reading it means setting it: done under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write the new ``path`` to; renamed over ``path`` on success.

    The file gets mode ``0o666 & ~umask`` (as ``open()`` would give a new file), not
    ``mkstemp``'s private 0600, so other users on a shared filesystem can read outputs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any, indent: int = 1) -> Path:
    return write_text(path, json.dumps(data, indent=indent, default=str) + "\n")


# --------------------------------------------------------------------------- whole folders


@functools.lru_cache(maxsize=1)
def _renameat2():
    """libc's ``renameat2`` (Linux, glibc >= 2.28), or None; looked up once per process."""
    libc_name = ctypes.util.find_library("c")  # runs ldconfig: not on every write
    return getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None) if libc_name else None


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one atomic step; False where the OS cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # filesystem or kernel without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def _carry(old: Path, new: Path, drop: set[str]) -> None:
    """Hard-link (or copy) the entries of ``old`` that the writer does not replace into ``new``."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for entry in old.iterdir():
        if entry.name in drop or entry.name.startswith((f".{old.name}{STAGING}", f".{old.name}{RETIRED}")):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=link)
        else:
            link(entry, new / entry.name)


def _remove_stale(folder: Path) -> None:
    """Staging folders of writers that were killed (their process is gone)."""
    for stale in folder.parent.glob(f".{folder.name}{STAGING}*"):
        pid = stale.name[len(f".{folder.name}{STAGING}"):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def replace_folder(folder: str | os.PathLike, drop: Iterable[str] = (), keep_others: bool = True) -> Iterator[Path]:
    """A staging folder that becomes ``folder`` in one atomic step when the block ends.

    The staging folder starts with the entries of the old ``folder`` (hard links, so nothing
    is copied), except those named in ``drop``: the writer replaces or removes those; with
    ``keep_others=False`` it starts empty (the new folder holds only what the writer writes). An error
    or a kill before the swap leaves ``folder`` as it was; after the swap it is all new.
    Where the OS has no atomic exchange (not Linux), the old folder is renamed away and the
    new one renamed in: two renames microseconds apart.
    """
    folder = Path(folder)
    cwd = Path.cwd().resolve()
    if folder.exists() and (folder.resolve() == cwd or folder.resolve() in cwd.parents):
        raise OutputError(f"{folder}: is the current folder (or holds it), and writing replaces it; "
                          "run the command from outside it, or choose another folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(folder)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}{STAGING}{os.getpid()}-"))
    try:
        if keep_others and folder.is_dir():
            _carry(folder, staging, set(drop))
        yield staging
        os.chmod(staging, 0o777 & ~umask())
        _swap_in(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after the swap: the old folder


def _swap_in(staging: Path, folder: Path) -> None:
    if not folder.exists():
        try:
            os.rename(staging, folder)
            return
        except OSError as err:  # another writer created it meanwhile: swap with theirs
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    if not _exchange(staging, folder):
        retired = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}{RETIRED}"))
        os.rename(folder, retired / folder.name)
        os.rename(staging, folder)
        shutil.rmtree(retired, ignore_errors=True)
