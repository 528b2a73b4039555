"""Run the real ``emergence`` entry point in-process, as a user's shell would."""

from __future__ import annotations

import sys

from emergence import cli


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``emergence ARGS`` -> (exit code, stdout, stderr)."""
    argv, sys.argv = sys.argv, ["emergence", *map(str, args)]
    code = 0
    try:
        cli.main()
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return code, out.out, out.err
