"""A cache of backtest fits and ground truths, so that ``emergence report`` does not redo what
``emergence backtest`` just did (and a second ``report`` redoes nothing), and neither redoes the
ground truth ``emergence fit`` computed.

The unit is one fit of the backtest (a cutoff or an ablation row: a ``fitting.backtest._Job``)
and its outcome (a ``TaskPrediction`` or the reason there is none). The key is a SHA-256 of
everything the outcome depends on:

- the fit's exact input: every field of its ``TaskData`` (the rows the results folder's tables
  give for the task, cut to the cutoff or ablation variant; arrays by dtype, shape and bytes),
  so a changed table changes the key of every fit whose rows it changes;
- the ground truth it is scored against (fitted once on all the task's checkpoints) and whether
  the folder is simulated;
- the whole ``FitConfig`` (law, D0, likelihood, n_boot, seed, starts, profile, ...);
- the code: the package version, the bytes of ``fitting/**/*.py`` and the numpy/scipy versions
  (another version of the optimiser gives other last digits).

The other unit is a task's ground truth with its bootstrap interval (:func:`ground_truth_key`:
the task's whole ``TaskData`` and the ground-truth settings of the ``FitConfig``, with the code),
which ``fit``, ``backtest`` and ``report`` each need for every task and is the same for all three.

Where: ``$EMERGENCE_CACHE_DIR``, else ``$XDG_CACHE_HOME/emergence``, else ``~/.cache/emergence``;
entries under ``backtest-v1/``, never inside the results folder (the shipped datasets are in
git and may be read-only). One entry is one ``.npz`` file (numpy arrays plus the scalar fields
as UTF-8 JSON in a byte array; read with ``allow_pickle=False``: no pickle anywhere), written
through :mod:`emergence.atomic`, so a reader sees a whole entry or none. An entry that cannot
be read, whose stored key differs or whose contents do not parse is a miss: the fit is rerun and
the entry rewritten. A cache folder that cannot be written is warned about once and otherwise
ignored. Method ``bayes`` is not cached (its predictions carry sampler state). Nothing is ever
deleted: ``rm -r ~/.cache/emergence`` empties it (each entry is a few kB).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class FitFailure:
    """A backtest fit that gave no prediction. ``stop``: the data no longer allow a fit
    (FitError), so smaller cutoffs will not either; otherwise the fit itself failed."""

    message: str
    stop: bool

FORMAT = "emergence-backtest-cache-v1"
_CODE_FINGERPRINT: str | None = None


def default_dir() -> Path:
    """``$EMERGENCE_CACHE_DIR``, else ``$XDG_CACHE_HOME/emergence``, else ``~/.cache/emergence``."""
    env = os.environ.get("EMERGENCE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "emergence"


def code_fingerprint() -> str:
    """Package version, numpy/scipy versions and the bytes of ``fitting/**/*.py``."""
    global _CODE_FINGERPRINT
    if _CODE_FINGERPRINT is None:
        import scipy

        import emergence

        h = hashlib.sha256()
        h.update(f"{FORMAT} {emergence.__version__} numpy {np.__version__} scipy {scipy.__version__}".encode())
        for path in sorted(Path(__file__).resolve().parent.rglob("*.py")):
            h.update(path.relative_to(Path(__file__).resolve().parent).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
        _CODE_FINGERPRINT = h.hexdigest()
    return _CODE_FINGERPRINT


def _feed(h, value: Any) -> None:
    """Hash a value exactly: arrays by dtype/shape/bytes, dataclasses field by field, floats by repr."""
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        if arr.dtype == object:
            h.update(b"O" + repr(arr.tolist()).encode())
        else:
            h.update(f"A{arr.dtype.str}{arr.shape}".encode() + arr.tobytes())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        h.update(f"D{type(value).__module__}.{type(value).__qualname__}(".encode())
        for f in dataclasses.fields(value):
            h.update(f.name.encode() + b"=")
            _feed(h, getattr(value, f.name))
            h.update(b",")
        h.update(b")")
    elif isinstance(value, (list, tuple)):
        h.update(b"L(")
        for v in value:
            _feed(h, v)
            h.update(b",")
        h.update(b")")
    elif isinstance(value, dict):
        h.update(b"M(")
        for k in sorted(value, key=repr):
            _feed(h, k)
            h.update(b":")
            _feed(h, value[k])
            h.update(b",")
        h.update(b")")
    else:
        h.update(f"{type(value).__name__}:{value!r}".encode())


def job_key(job) -> str:
    """SHA-256 of one backtest fit's inputs and of the code (see the module docstring)."""
    h = hashlib.sha256(code_fingerprint().encode())
    for part in (job.data, job.config, job.ground_truth, bool(job.simulated)):
        _feed(h, part)
        h.update(b"|")
    return h.hexdigest()


GROUND_TRUTH_SETTINGS = ("likelihood", "gt_alpha", "gt_min_rise", "spec", "gt_rule", "gt_boot", "seed")


def ground_truth_key(data, config) -> str:
    """SHA-256 of a task's data, the settings ``FitConfig.ground_truth`` uses, and the code."""
    h = hashlib.sha256(code_fingerprint().encode())
    h.update(b"ground_truth|")
    _feed(h, data)
    for name in GROUND_TRUTH_SETTINGS:
        h.update(f"|{name}=".encode())
        _feed(h, getattr(config, name))
    return h.hexdigest()


def cacheable(job) -> bool:
    return job.config.method == "mle"


# --------------------------------------------------------------------------- (de)serialisation


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _pct(d) -> list:
    return [[int(k), v] for k, v in d.items()]


def encode(outcome) -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON-able fields, arrays) of a TaskPrediction or a backtest FitFailure."""
    from fitting.predict import TaskPrediction

    if isinstance(outcome, FitFailure):
        return dict(kind="failure", message=outcome.message, stop=bool(outcome.stop)), {}
    if type(outcome) is not TaskPrediction:
        raise TypeError(f"cannot cache a {type(outcome).__name__}")
    meta: dict[str, Any] = dict(kind="prediction")
    arrays: dict[str, np.ndarray] = {}
    for f in dataclasses.fields(TaskPrediction):
        value = getattr(outcome, f.name)
        if f.name in ("emergence_loss_pct", "emergence_flops_pct", "flops_multiple_pct", "boot_pct"):
            meta[f.name] = _pct(value)
        elif f.name == "ground_truth":
            meta[f.name] = None if value is None else dataclasses.asdict(value)
        elif f.name == "samples":
            meta[f.name] = value is not None
            if value is not None:
                arrays["samples"] = np.asarray(value)
        elif f.name == "profile":
            if value is None:
                meta[f.name] = None
            else:
                meta[f.name] = dict(low=value.low, high=value.high, open_low=bool(value.open_low),
                                    open_high=bool(value.open_high), level=value.level,
                                    theta=value.theta is not None, dispersion=float(value.dispersion))
                arrays["profile_grid"], arrays["profile_deviance"] = np.asarray(value.grid), np.asarray(value.deviance)
                if value.theta is not None:
                    arrays["profile_theta"] = np.asarray(value.theta)
        else:
            meta[f.name] = value
    return meta, arrays


def decode(meta: dict, arrays) -> Any:
    from fitting.ground_truth import GroundTruth
    from fitting.predict import TaskPrediction
    from fitting.uncertainty import ProfileInterval

    if meta["kind"] == "failure":
        return FitFailure(str(meta["message"]), bool(meta["stop"]))
    if meta["kind"] != "prediction":
        raise ValueError(f"unknown entry kind {meta['kind']!r}")
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(TaskPrediction):
        value = meta[f.name]
        if f.name in ("emergence_loss_pct", "emergence_flops_pct", "flops_multiple_pct", "boot_pct"):
            value = {int(k): v for k, v in value}
        elif f.name == "ground_truth":
            value = None if value is None else GroundTruth(**value)
        elif f.name == "samples":
            value = np.array(arrays["samples"]) if value else None
        elif f.name == "profile" and value is not None:
            value = ProfileInterval(value["low"], value["high"], value["open_low"], value["open_high"],
                                    value["level"], np.array(arrays["profile_grid"]),
                                    np.array(arrays["profile_deviance"]),
                                    np.array(arrays["profile_theta"]) if value["theta"] else None,
                                    dispersion=float(value.get("dispersion", 1.0)))
        kw[f.name] = value
    return TaskPrediction(**kw)


# --------------------------------------------------------------------------- the store


class BacktestCache:
    """Outcomes of backtest fits on disk, by :func:`job_key` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = (Path(root) if root is not None else default_dir()) / "backtest-v1"
        self.hits = self.misses = self.writes = 0
        self._warned = False

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def get(self, job) -> Any | None:
        """The cached outcome of ``job``, or None (not cached, unreadable, corrupt, other key)."""
        return self._read(job_key(job)) if cacheable(job) else None

    def put(self, job, outcome) -> None:
        if not cacheable(job):
            return
        try:
            meta, arrays = encode(outcome)
        except TypeError:
            return
        self._write(job_key(job), meta, arrays)

    def ground_truth(self, data, config):
        """``config.ground_truth(data)`` (a ``FitConfig``), from the cache when an entry has it."""
        from fitting.ground_truth import GroundTruth

        key = ground_truth_key(data, config)
        meta = self._read(key, decoder=lambda meta, _: meta)
        if meta is not None and meta.get("kind") == "ground_truth":
            try:
                return GroundTruth(**meta["value"])
            except TypeError:  # another version's fields: recompute
                pass
        truth = config.ground_truth(data)
        self._write(key, dict(kind="ground_truth", value=dataclasses.asdict(truth)), {})
        return truth

    def _read(self, key: str, decoder=None) -> Any | None:
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(bytes(npz["meta"]).decode("utf-8"))
                if meta.get("format") != FORMAT or meta.get("key") != key:
                    raise ValueError("another key")
                outcome = (decoder or decode)(meta["outcome"], {k: npz[k] for k in npz.files if k != "meta"})
        except (FileNotFoundError, NotADirectoryError):  # not cached (yet)
            self.misses += 1
            return None
        except Exception as err:  # a corrupt or foreign entry is a miss, never a crash
            self._warn(f"ignoring unreadable cache entry {path} ({type(err).__name__}: {err})")
            self.misses += 1
            return None
        self.hits += 1
        return outcome

    def _write(self, key: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        from emergence import atomic

        blob = json.dumps(dict(format=FORMAT, key=key, outcome=meta), default=_json_default).encode("utf-8")
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(blob, dtype=np.uint8), **arrays)
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(path, buf.getvalue())
            self.writes += 1
        except OSError as err:
            self._warn(f"cannot write the backtest cache {self.root} ({err}); continuing without it")

    def _warn(self, message: str) -> None:
        if not self._warned:
            print(f"warning: {message}", file=sys.stderr)
            self._warned = True
