#!/usr/bin/env bash
# Refresh the lock files in requirements/ from pyproject.toml (and requirements/vllm.in).
#
#   requirements/base.txt  the laptop install (fit, backtest, report): any OS, Python >= 3.11
#   requirements/ci.txt    every extra + dev tools, CPU torch: Linux x86-64, Python 3.11 (CI)
#   requirements/vllm.txt  the separate vLLM-on-CPU venv of CI stage 2
#
# Then run `pytest tests/emergence/test_lock.py` (the locks satisfy pyproject's bounds) and the suite,
# and commit the three files together. uv comes from the package registry, pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv.sh

common=(--quiet --no-header --python-version 3.11)
wheels=${PIP_FIND_LINKS:-/opt/wheels}
links=(); if [ -d "$wheels" ]; then links=(--find-links "$wheels"); fi

"$UV" pip compile "${common[@]}" --universal pyproject.toml -o requirements/base.txt
"$UV" pip compile "${common[@]}" --python-platform x86_64-manylinux_2_28 "${links[@]}" \
    --override requirements/torch-cpu.txt $(printf -- "--extra %s " harvest bayes nutpie ray parity dev) pyproject.toml \
    -o requirements/ci.txt
"$UV" pip compile "${common[@]}" --python-platform x86_64-manylinux_2_28 "${links[@]}" \
    --override requirements/vllm-overrides.txt requirements/vllm.in -o requirements/vllm.txt
echo "locks written: requirements/{base,ci,vllm}.txt"
