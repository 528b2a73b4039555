"""The shipped outputs are what today's code computes (issue 21: speed must not change results).

``datasets_cache/microladder/fit.json`` is ``emergence fit --json`` and ``backtest.json`` is
``emergence backtest --n-boot 200 --json`` of the shipped tables (docs/microladder.md). Both are
recomputed here and compared field by field, floats to 1e-9 relative: the optimiser's result,
not merely its neighbourhood. A deliberate change of results (a new rule, a new default)
regenerates the shipped files in the same commit; a speed-up never does.

The backtest is checked on one task (``ml_topic_short``, 62 cutoff fits, about 30 CPU-s) to
keep CI short (docs/speed.md compares all three tasks).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.cli_runner import run_cli

SHIPPED = Path(__file__).resolve().parents[2] / "datasets_cache" / "microladder"
REL = 1e-9


def differences(a, b, path="") -> list[str]:
    """Where two JSON values differ (floats beyond REL relative)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only on one side" for k in set(a) ^ set(b)]
        return out + [d for k in set(a) & set(b) for d in differences(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        same = a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= REL * max(abs(a), abs(b))
        return [] if same else [f"{path}: {a!r} vs {b!r}"]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def test_the_comparison_sees_a_change():
    shipped = json.loads((SHIPPED / "fit.json").read_text())
    changed = json.loads((SHIPPED / "fit.json").read_text())
    changed[0]["emergence_loss"] *= 1 + 1e-6
    assert differences(shipped, shipped) == []
    assert len(differences(shipped, changed)) == 1


def test_fit_recomputes_the_shipped_fit_json(capsys):
    code, out, err = run_cli(["fit", SHIPPED, "--json", "--no-cache"], capsys)
    assert code == 0, err
    diff = differences(json.loads((SHIPPED / "fit.json").read_text()), json.loads(out))
    assert not diff, "\n".join(diff[:20])


@pytest.mark.parametrize("task", ["ml_topic_short"])
def test_backtest_recomputes_the_shipped_backtest_json(task, capsys):
    code, out, err = run_cli(["backtest", SHIPPED, "--task", task, "--n-boot", "200", "--json", "--no-cache"], capsys)
    assert code == 0, err
    (shipped,) = [r for r in json.loads((SHIPPED / "backtest.json").read_text()) if r["task"] == task]
    (fresh,) = json.loads(out)
    diff = differences(shipped, fresh)
    assert not diff, "\n".join(diff[:20])
