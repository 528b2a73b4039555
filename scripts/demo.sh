#!/usr/bin/env bash
# Set up the laptop install (no torch, no GPU) from the lock and run the main job on the
# embedded dataset (datasets_cache/microladder: real measurements of tiny Llamas pretrained on
# CPU, see docs/microladder.md): fit, backtest and report. The report lands in
# ${OUT:-report}/index.html. DATA=datasets_cache/simulated runs it on the simulated dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh

VENV=${VENV:-.venv-demo}
DATA=${DATA:-datasets_cache/microladder}
OUT=${OUT:-report}

start=$SECONDS
install_locked "$VENV" requirements/base.txt
echo "installed in $((SECONDS - start)) s"

N_BOOT=${N_BOOT:-200}   # resamples per backtest cutoff (the fit itself uses 1000)
"$VENV/bin/emergence" fit "$DATA" --workers 2
"$VENV/bin/emergence" backtest "$DATA" --n-boot "$N_BOOT" --workers 2
"$VENV/bin/emergence" report "$DATA" --out "$OUT" --n-boot "$N_BOOT" --workers 2
echo "report: $OUT/index.html"
