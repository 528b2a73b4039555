"""One exception family for everything a user can get wrong.

The CLI prints an :class:`EmergenceError` as one line (no traceback) and exits with its
``exit_code``; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EmergenceError(Exception):
    """A problem the user can fix; its message says what, where, and what to do."""

    exit_code = 2


class ContractError(EmergenceError):
    """A results folder that does not follow the data contract (fitting.schema)."""


class SourceError(ContractError):
    """An importer's input (lm-eval, Pythia, ObsScaling, Gadre files) that is missing or malformed."""


class SpecError(EmergenceError):
    """A harvest spec file that is malformed or names something that does not exist."""


class CheckpointError(EmergenceError):
    """A checkpoint that cannot be loaded (missing, unsafe format, wrong revision)."""


class OutputError(EmergenceError):
    """An output path that cannot be written, or whose writing would replace what is there."""


class FitError(EmergenceError):
    """A fit that cannot be done with the data given (too few points, no finetune rows, ...)."""


class DiagnosticsError(EmergenceError):
    """MCMC diagnostics failed the gate (r_hat, ESS, divergences)."""

    exit_code = 3


class MissingExtraError(EmergenceError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str):
        super().__init__(
            f"this command needs {package!r}; install it with: pip install 'emergence[{extra}]'"
        )


def one_line(err: BaseException) -> str:
    """``"TypeName: first line of the message"`` (at most 300 characters of it): a library's
    exception as it goes inside one of our one-line errors."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {(text[0] if text else '')[:300]}"
