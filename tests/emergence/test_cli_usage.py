"""Usage errors through the installed ``emergence`` script, as a user's shell runs it.

A subprocess, not the in-process runner: the entry point, typer and the click it brings (or
vendors) are exercised as installed, so a change upstream that turns a usage error into a
traceback fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("emergence")
ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    if not SCRIPT.exists():
        pytest.fail(f"{SCRIPT}: the emergence entry point is not installed beside this Python")
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "Usage"),  # no command: the help, as a usage error
        (("nosuchcommand",), "No such command"),
        (("fit",), "Missing argument"),
        (("fit", "--bogus"), "No such option"),
        (("fit", "datasets_cache/simulated", "--n-boot", "abc"), "--n-boot"),
        (("harvest", "nosuch"), "No such command"),
        (("backtest", "datasets_cache/simulated", "--workers", "two"), "--workers"),
    ],
    ids=["no-args", "unknown-command", "missing-argument", "unknown-option", "bad-int",
         "unknown-subcommand", "bad-int-backtest"],
)
def test_usage_errors_exit_2_without_a_traceback(args, says):
    proc = run(*args)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    assert says in proc.stderr + proc.stdout


def test_a_user_error_is_one_line_and_exit_2(tmp_path):
    proc = run("fit", str(tmp_path / "missing"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "missing" in lines[0], proc.stderr


def test_help_exits_0():
    proc = run("--help")
    assert proc.returncode == 0 and "fit" in proc.stdout
