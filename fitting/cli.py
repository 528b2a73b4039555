"""Fitting commands of the ``emergence`` CLI (fit, backtest, report, simulate, import)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the fitting commands to the top-level app."""
