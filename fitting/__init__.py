"""Fit the emergence law from Parquet tables: schema → law → fit → uncertainty → backtest → report.

Runs on a laptop; never imports torch.
"""
