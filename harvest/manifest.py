"""``manifest.json``: what produced a results folder (versions, seeds, spec hash, timings)."""

from __future__ import annotations

import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from emergence.atomic import write_json
from harvest.engines import ENGINE_LIBRARIES

MANIFEST_FILE = "manifest.json"
# This package, every engine's libraries (harvest.engines.ENGINE_LIBRARIES: a new engine's are
# recorded without a second list here), and what the harvest reads and writes with.
LIBRARIES = tuple(dict.fromkeys(("emergence", *(lib for libs in ENGINE_LIBRARIES.values() for lib in libs),
                                 "transformers", "peft", "datasets", "tokenizers", "polars", "pyarrow")))


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


def write_manifest(folder: Path, spec, plans, log, results) -> dict[str, Any]:
    """Write the manifest atomically; earlier runs' timings survive in the previous manifest."""
    path = Path(folder) / MANIFEST_FILE
    runs = _previous_runs(path)
    runs.append({"started": _iso(log.started), "finished": _iso(time.time()),
                 "wall_seconds": round(time.time() - log.started, 3), "command": sys.argv,
                 "units_computed": log.units})
    manifest = {
        "spec": str(Path(spec.source).resolve()) if spec.source != "<memory>" else spec.source, "spec_hash": spec.spec_hash, "seed": spec.seed,
        "engine": {"name": spec.engine.name, "options": spec.engine.options, "dtype": spec.engine.dtype,
                   "dtype_setting": spec.engine.dtype_setting, "device": spec.engine.device},
        "versions": library_versions(), "host": platform.node(),
        "tasks": {p.spec.name: {**p.identity(), "n_items": len(p.items)} for p in plans},
        "checkpoints": [c.name for c in spec.checkpoints],
        "tables": {"checkpoints": results.checkpoints.height, "results": results.results.height,
                   "items": 0 if results.items is None else results.items.height},
        "runs": runs,
    }
    write_json(path, manifest, indent=2)
    return manifest


def _previous_runs(path: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads(path.read_text()).get("runs", []))
    except (OSError, ValueError):
        return []


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))



