"""What ``emergence harvest microladder`` does: run the ladder, then optionally ship its tables."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from rich.console import Console

from harvest.microladder.run import ANALYSES, LadderConfig, LadderError, load_config, quick_config, run_ladder

SHIPPED = ("checkpoints.parquet", "results.parquet", "items.parquet")


def run_microladder(out: Path, *, quick: bool = False, ship: Path | None = None, analysis: bool = True,
                    config: Path | None = None) -> Path:
    if quick and config is not None:
        raise LadderError("give --quick or --config, not both")
    console = Console(stderr=True)
    cfg = load_config(config) if config is not None else quick_config() if quick else LadderConfig()
    command = " ".join(["emergence", *sys.argv[1:]]) if sys.argv else "emergence harvest microladder"
    manifest = run_ladder(out, cfg, command=command, say=lambda m: console.print(f"[microladder] {m}", highlight=False),
                          analysis=analysis)
    if ship is not None:
        ship_tables(out, ship)
        console.print(f"[microladder] shipped tables to {ship}", highlight=False)
    return manifest


def ship_tables(out: Path, dest: Path) -> None:
    """Copy the harvested tables, the manifest, the analysis JSON and the report (never weights)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED:
        shutil.copy2(out / "results" / name, dest / name)
    for name in ("manifest.json", "harvest.toml", *(f"{stem}.json" for stem in ANALYSES)):
        if (out / name).is_file():
            shutil.copy2(out / name, dest / name)
    if (out / "report").is_dir():
        shutil.copytree(out / "report", dest / "report", dirs_exist_ok=True)
    json.loads((dest / "manifest.json").read_text())  # it must be valid JSON
