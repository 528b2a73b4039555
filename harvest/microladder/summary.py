"""A plain-text summary of a micro-ladder results folder: where each curve leaves chance.

For every (task, setting, n_train) it reports the highest pretraining loss at which mean
accuracy (over subset seeds) exceeds ``chance + margin``, checked on all checkpoints sorted by
loss; a descriptive companion to the fitted elbows of ``emergence fit`` (no model, no fit).

    python -m harvest.microladder.summary RESULTS_DIR [--margin 0.1]
"""

from __future__ import annotations

import argparse

import polars as pl

from fitting.schema import load_results


def curves(folder) -> pl.DataFrame:
    """Mean accuracy per (task, setting, n_train, checkpoint) with the checkpoint's loss and family."""
    data = load_results(folder).joined()
    return (data.group_by("task", "setting", "n_train", "checkpoint", "family", "pretrain_loss", "chance")
            .agg(pl.col("value").mean().alias("accuracy"), pl.len().alias("n_subsets"))
            .sort("task", "setting", "n_train", "pretrain_loss", descending=[False, False, False, True]))


def first_above(curve: pl.DataFrame, margin: float) -> pl.DataFrame:
    """Per curve: the highest loss with accuracy > chance + margin, and the best accuracy."""
    above = pl.col("accuracy") > pl.col("chance") + margin
    return (curve.group_by("task", "setting", "n_train")
            .agg(pl.col("pretrain_loss").filter(above).max().alias("highest_loss_above"),
                 pl.col("checkpoint").filter(above).sort_by(pl.col("pretrain_loss").filter(above)).last()
                 .alias("at_checkpoint"),
                 pl.col("accuracy").max().alias("best_accuracy"), pl.len().alias("checkpoints"))
            .sort("task", "setting", "n_train"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--margin", type=float, default=0.1, help="accuracy above chance that counts (default 0.1)")
    args = parser.parse_args(argv)
    pl.Config.set_tbl_rows(200)
    pl.Config.set_tbl_cols(20)
    pl.Config.set_tbl_width_chars(200)
    print(first_above(curves(args.results), args.margin))


if __name__ == "__main__":
    main()
