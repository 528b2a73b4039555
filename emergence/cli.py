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
    """Entry point: user errors become one line on stderr and a non-zero exit code."""
    try:
        app(standalone_mode=False)
    except EmergenceError as err:
        from rich.markup import escape  # messages quote TOML tables like [sweep]: not markup

        _stderr.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:
        _stderr.print("aborted")
        sys.exit(130)
    except OSError as err:  # a path the command could not read or write (checked early where we can)
        from rich.markup import escape

        where = f"{err.filename}: " if err.filename else ""
        _stderr.print(f"[bold red]error:[/] {escape(where + str(err.strerror or err))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as err:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise


if __name__ == "__main__":
    main()
