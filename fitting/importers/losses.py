"""Documented pretraining-loss proxies, used only when the user opts in (``--loss-proxy``).

The contract's ``pretrain_loss`` is a measured held-out loss. Public score tables often have
none; rather than invent one, an import refuses unless the user supplies losses
(``--checkpoints FILE``) or names a proxy. Every proxied checkpoint says so in its
``pretrain_loss_source`` column and in the folder metadata.

``chinchilla``: the parametric fit of Hoffmann et al. (2022, "Training Compute-Optimal Large
Language Models", Approach 3)

    L(N, D) = E + A / N^alpha + B / D^beta,  E = 1.69, A = 406.4, B = 410.7, alpha = 0.34, beta = 0.28

with N parameters and D training tokens (nats/token on their MassiveText set). It depends on
N and D only: it cannot see data quality, tokenizer or architecture, so checkpoints of
different families at equal N and D get equal "loss" even when their real losses differ.
Use it within one family, as a monotone stand-in for compute.
"""

from __future__ import annotations

import polars as pl

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
CHINCHILLA_SOURCE = ("Chinchilla fit L = 1.69 + 406.4/N^0.34 + 410.7/D^0.28 (Hoffmann et al. 2022), "
                     "a function of params and tokens only, not a measured loss")


def chinchilla_loss(params: pl.Series, tokens: pl.Series) -> pl.Series:
    """Chinchilla's predicted loss (nats/token) for N = ``params``, D = ``tokens`` (nulls stay null)."""
    c = CHINCHILLA
    n = params.cast(pl.Float64)
    d = tokens.cast(pl.Float64)
    return (c["E"] + c["A"] / n.pow(c["alpha"]) + c["B"] / d.pow(c["beta"])).alias("pretrain_loss")
