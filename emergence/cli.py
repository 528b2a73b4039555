"""The ``emergence`` command: one Typer app composed from each stage's commands.

Command modules import torch, PyMC and vLLM only inside the commands that need them, so
``emergence --help`` is instant on a laptop.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from emergence.errors import EmergenceError
from fitting import cli as fitting_cli
from harvest import cli as harvest_cli

app = typer.Typer(
    name="emergence",
    help="Predict at what pretraining loss (and FLOPs) a capability will emerge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
fitting_cli.register(app)
app.add_typer(harvest_cli.app, name="harvest")

_stderr = Console(stderr=True)


def main() -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit code.

    Typer runs in standalone mode, so usage errors (no command, an unknown command or option,
    a bad value) are shown by typer itself with exit 2, whichever click (vendored or not) the
    installed typer uses; this module never imports click.
    """
    from rich.markup import escape  # messages quote TOML tables like [sweep]: not markup

    try:
        app()
    except EmergenceError as err:
        _stderr.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except OSError as err:  # a path the command could not read or write (checked early where we can)
        where = f"{err.filename}: " if err.filename else ""
        _stderr.print(f"[bold red]error:[/] {escape(where + str(err.strerror or err))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
