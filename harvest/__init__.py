"""Measure checkpoints on GPU boxes: spec → engines → tasks → sweep → store.

Writes the Parquet tables of the data contract (:mod:`fitting.schema`).
"""
