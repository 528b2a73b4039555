#!/usr/bin/env bash
# Set up the laptop install (no torch, no GPU) and run the main job on the embedded dataset:
# fit, backtest and report. The report lands in ${OUT:-report}/index.html.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv-demo}
DATA=${DATA:-datasets_cache/microladder}
OUT=${OUT:-report}

python3 -m venv "$VENV"
"$VENV/bin/pip" install -q -e .

"$VENV/bin/emergence" fit "$DATA"
"$VENV/bin/emergence" backtest "$DATA"
"$VENV/bin/emergence" report "$DATA" --out "$OUT"
echo "report: $OUT/index.html"
