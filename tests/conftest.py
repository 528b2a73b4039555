"""Shared test setup: the backtest cache (fitting.backtest_cache) of every test, CLI subprocesses
included, lives in a temporary folder, never in the user's ~/.cache; and the simulated folders
several test files read (designs in ``tests/designs.py``), written once per session. A test may
read them, never write into them: it copies one first."""

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


@pytest.fixture(scope="session")
def emerging_and_never_folder(tmp_path_factory):
    """``designs.EMERGING_AND_NEVER`` (seed 0) on disk: t_cola emerges, t_never never does."""
    return _written("EMERGING_AND_NEVER", tmp_path_factory.mktemp("emerging_and_never") / "res")


@pytest.fixture(scope="session")
def one_level_folder(tmp_path_factory):
    """``designs.ONE_LEVEL`` (seed 0) on disk: the default tasks, one data level (16), one subset."""
    return _written("ONE_LEVEL", tmp_path_factory.mktemp("one_level") / "res")


@pytest.fixture(scope="session")
def two_level_folder(tmp_path_factory):
    """``designs.TWO_LEVELS`` (seed 0) on disk: the default tasks, data levels 16 and 256."""
    return _written("TWO_LEVELS", tmp_path_factory.mktemp("two_levels") / "res")


def _written(design_name: str, out):
    # imported here: the vLLM venv (tests/harvest/vllm) reads this file and has no fitting deps
    from fitting.simulate import simulate
    from tests import designs

    simulate(getattr(designs, design_name), seed=0, out=out)
    return out
