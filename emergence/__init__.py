"""Predict emergent capabilities of language models by finetuning (Snell et al., 2024).

Two halves share one data contract (:mod:`fitting.schema`):

- :mod:`harvest` runs on GPU boxes and writes Parquet tables;
- :mod:`fitting` runs on a laptop from those tables alone (it never imports torch).

This package holds what both halves share: the error family and the ``emergence`` command.
"""

__version__ = "0.1.0"
