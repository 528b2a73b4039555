"""A counting progress bar on stderr (stdout stays clean for ``--json``), or nothing.

    with CountBar("backtest", total, enabled) as tick:
        ...
        tick("ml_topic cutoff")   # one more done; the label shown beside the prefix
"""

from __future__ import annotations

from typing import Callable

Tick = Callable[[str], None]


class CountBar:
    def __init__(self, prefix: str, total: int, enabled: bool = True):
        self.prefix, self.total, self.enabled = prefix, total, enabled

    def __enter__(self) -> Tick:
        if not self.enabled:
            return lambda _label: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn(f"{self.prefix} {{task.description}}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=Console(stderr=True))
        self.bar.__enter__()
        tid = self.bar.add_task("", total=self.total)
        return lambda label: self.bar.update(tid, advance=1, description=label)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)
