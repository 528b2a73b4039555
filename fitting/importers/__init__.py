"""Importers: public evaluation results -> a few-shot results folder of the data contract.

``emergence import FORMAT PATH --out RESULTS_DIR`` with FORMAT one of :data:`FORMATS`
(lm-eval, pythia, obsscaling, gadre); see docs/importers.md for what maps to which column.
"""

from fitting.importers.base import Imported, ImportOptions
from fitting.importers.registry import FORMATS, import_results

__all__ = ["FORMATS", "Imported", "ImportOptions", "import_results"]
