"""Shared fixtures of the fitting tests: the default simulated results folder (``Design()``,
seed 0; drawn from the emergence law itself), built once per test session and only read.
Tests that need another design or a folder on disk build their own (``fitting.simulate``)."""

from __future__ import annotations

import pytest

from fitting.simulate import Design, simulate


@pytest.fixture(scope="session")
def simulated():
    """The default simulated folder (in memory): tasks sim_mmlu, sim_gsm8k, ... from ``Design()``."""
    return simulate(Design(), seed=0)
