"""Rich progress bars on stderr with an items/s column (stdout stays clean for --json)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items per second of a bar (blank until known)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.1f} items/s", style="progress.data.speed")


def harvest_progress(show: bool = True) -> Progress:
    console = Console(stderr=True, quiet=not show)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                    TimeElapsedColumn(), console=console, disable=not show, transient=False)
