"""A plain-text summary of a micro-ladder results folder: where each curve leaves chance.

Two law-free views of the finetuning shift, per task and curve (few-shot, and each finetuning
data level ``D``):

- ``first_above``: the highest pretraining loss at which mean accuracy (over subset seeds)
  exceeds ``chance + margin``, checked on all checkpoints sorted by loss (no model, no fit),
  pooled and (few-shot) per model family;
- ``curve_elbows``: the elbow of the hinge ``B + A·relu(E − L)`` fitted to that curve alone
  (:func:`fitting.ground_truth.fit_ground_truth`, the ground-truth fitter, binomial likelihood), with its
  likelihood-ratio verdict. If finetuning moves emergence to weaker models, ``E`` rises with ``D``;

and ``family_fits``: the law's prediction and the few-shot ground truth per model family, beside
the pooled fit (does pretraining loss place emergence at one point across sizes?).

    python -m harvest.microladder.summary RESULTS_DIR [--margin 0.1] [--table TASK]

``--table TASK`` prints that task's mean accuracy per checkpoint (rows, by decreasing loss) and
curve (columns) as a Markdown table: the tables of docs/microladder.md.
"""

from __future__ import annotations

import argparse

import numpy as np
import polars as pl

from fitting.data import TaskData

from fitting.fit import EmergenceLawFit

from fitting.ground_truth import curve_ground_truth, fit_ground_truth
from fitting.law import LAW_FORMS
from fitting.schema import ResultsFolder, load_results


def curves(folder: ResultsFolder | str) -> pl.DataFrame:
    """Mean accuracy per (task, setting, n_train, checkpoint) with the checkpoint's loss and family."""
    data = (folder if isinstance(folder, ResultsFolder) else load_results(folder)).joined()
    return (data.group_by("task", "setting", "n_train", "checkpoint", "family", "pretrain_loss", "chance")
            .agg(pl.col("value").mean().alias("accuracy"), pl.len().alias("n_subsets"))
            .sort("task", "setting", "n_train", "pretrain_loss", descending=[False, False, False, True]))


def first_above(curve: pl.DataFrame, margin: float, *, per_family: bool = False) -> pl.DataFrame:
    """Per curve (and model family): the highest loss with accuracy > chance + margin, and the best
    accuracy. Per family, a loss-paced ability has about the same highest loss in every size."""
    above = pl.col("accuracy") > pl.col("chance") + margin
    keys = ["task", "setting", "n_train", *(["family"] if per_family else [])]
    return (curve.group_by(keys)
            .agg(pl.col("pretrain_loss").filter(above).max().alias("highest_loss_above"),
                 pl.col("checkpoint").filter(above).sort_by(pl.col("pretrain_loss").filter(above)).last()
                 .alias("at_checkpoint"),
                 pl.col("accuracy").max().alias("best_accuracy"), pl.len().alias("checkpoints"))
            .sort(keys))


def family_parts(folder: ResultsFolder):
    """``(task, family, data)`` for every task: all families pooled (``"(all)"``), then each."""
    for task in folder.tasks:
        data = TaskData.from_folder(folder, task)
        families = np.array(data.families)
        yield task, "(all)", data
        for family in sorted(set(data.families)):
            yield task, family, data.select_checkpoints(families == family)


def curve_elbows(folder: ResultsFolder, rule: str = "onset") -> pl.DataFrame:
    """Per task, family (and all families pooled, ``(all)``) and curve (n_train 0 = few-shot):
    the hinge fitted to that curve's rows alone.

    ``elbow_loss`` is set when the curve has left its base and the elbow lies inside the data
    (the ground-truth rule, ``rule``: see :func:`fitting.ground_truth.fit_ground_truth`); ``E`` is
    the fitted elbow either way, ``verdict`` says which.
    """
    rows = []
    for task, family, part in family_parts(folder):
        for level in [0, *part.data_levels]:
            curve = part.select_rows(part.n_train == level)  # few-shot rows have n_train 0
            gt = curve_ground_truth(part, level, rule=rule)
            rows.append({"task": task, "family": family, "n_train": level, "checkpoints": curve.n_checkpoints,
                         "elbow_loss": gt.elbow_loss, "E": gt.E, "A": gt.A, "B": gt.B,
                         "p_value": gt.p_value, "verdict": gt.reason})
    return pl.DataFrame(rows)


def family_fits(folder: ResultsFolder, forms: tuple[str, ...] = ("log_power", "ceiling"),
                rule: str = "onset") -> pl.DataFrame:
    """Per task and model family (and all families pooled): the few-shot ground-truth elbow and
    each law form's predicted emergence loss, fitted on that family's checkpoints only.

    Pooling sizes assumes few-shot emergence happens at one pretraining loss in every size;
    where it does not (an ability that arrives at a number of *steps*), the pooled ground truth
    is a compromise and the per-family rows show it. A task with few-shot rows only (no sweep
    yet) gets its ground truth and no prediction.
    """
    rows = []
    for task, family, part in family_parts(folder):
        row = {"task": task, "family": family, "checkpoints": part.n_checkpoints,
               "ground_truth": fit_ground_truth(part, rule=rule).elbow_loss}
        swept = not part.few_shot.all()
        for form in forms:
            row[form] = EmergenceLawFit(LAW_FORMS[form]).fit(part).emergence_loss_ if swept else None
        rows.append(row)
    return pl.DataFrame(rows).with_columns(
        *[(pl.col(f) - pl.col("ground_truth")).alias(f"{f}_error") for f in forms])


def accuracy_table(folder: ResultsFolder | str, task: str) -> pl.DataFrame:
    """Mean accuracy of ``task`` per checkpoint (rows, weakest first) and curve (columns)."""
    acc = curves(folder).filter(pl.col("task") == task)
    if acc.is_empty():
        raise SystemExit(f"error: no results for task {task!r}")
    acc = acc.with_columns(pl.when(pl.col("setting") == "few_shot").then(pl.lit("few-shot"))
                           .otherwise(pl.format("D={}", pl.col("n_train"))).alias("curve"))
    order = ["few-shot"] + [f"D={n}" for n in sorted(acc.filter(pl.col("setting") != "few_shot")["n_train"].unique())]
    wide = acc.pivot(on="curve", index=["checkpoint", "pretrain_loss"], values="accuracy")
    return (wide.select("checkpoint", "pretrain_loss", *[c for c in order if c in wide.columns])
            .sort("pretrain_loss", descending=True).with_columns(pl.exclude("checkpoint").round(3)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--margin", type=float, default=0.1, help="accuracy above chance that counts (default 0.1)")
    parser.add_argument("--table", metavar="TASK", help="print TASK's accuracy per checkpoint and curve (Markdown)")
    args = parser.parse_args(argv)
    if args.table:
        with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                       tbl_rows=500, tbl_cols=20, tbl_width_chars=400):
            print(accuracy_table(args.results, args.table))
        return
    pl.Config.set_tbl_rows(200)
    pl.Config.set_tbl_cols(20)
    pl.Config.set_tbl_width_chars(200)
    pl.Config.set_fmt_str_lengths(90)
    folder = load_results(args.results)
    curve = curves(folder)
    print(first_above(curve, args.margin))
    print(first_above(curve.filter(pl.col("setting") == "few_shot"), args.margin, per_family=True))
    print(curve_elbows(folder).with_columns(pl.col("E", "A", "B", "elbow_loss").round(3)))
    print(family_fits(folder).with_columns(pl.selectors.float().round(3)))


if __name__ == "__main__":
    main()
