"""Shared test setup: the backtest cache (fitting.backtest_cache) of every test, CLI subprocesses
included, lives in a temporary folder, never in the user's ~/.cache."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    old = os.environ.get("EMERGENCE_CACHE_DIR")
    os.environ["EMERGENCE_CACHE_DIR"] = str(tmp_path_factory.mktemp("emergence-cache"))
    yield
    if old is None:
        os.environ.pop("EMERGENCE_CACHE_DIR", None)
    else:
        os.environ["EMERGENCE_CACHE_DIR"] = old
