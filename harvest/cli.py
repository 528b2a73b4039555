"""``emergence harvest ...`` commands. Torch is imported inside the commands, never here."""

from __future__ import annotations

import typer

app = typer.Typer(help="Measure checkpoints: pretraining loss, few-shot and finetuned accuracy.",
                  no_args_is_help=True)
