"""Importers: public evaluation results -> a results folder of the data contract.

``emergence import FORMAT PATH --out RESULTS_DIR`` with FORMAT one of :data:`FORMATS`
(lm-eval, pythia, obsscaling, gadre, amuro-char, pythia-arithmetic); see docs/importers.md for
what maps to which column. All write few-shot rows; amuro-char also writes finetune rows.
"""

from fitting.importers.base import Imported, ImportOptions
from fitting.importers.registry import FORMATS, import_results

__all__ = ["FORMATS", "Imported", "ImportOptions", "import_results"]
