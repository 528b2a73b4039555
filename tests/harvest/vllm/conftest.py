"""vLLM tests: they run in the separate vLLM venv (scripts/ci_vllm.sh) and skip elsewhere.

The environment is set before vLLM is imported: the engine core runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``: no spawned process, ~3 s instead of ~30 s to load on
CPU) with a 1 GiB CPU KV cache, on one thread.
"""

from __future__ import annotations

import os

import pytest

for key, value in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
                   "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                   "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_LOGGING_LEVEL": "WARNING"}.items():
    os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Base checkpoint, two LoRA adapters, and each adapter merged into the weights."""
    import torch

    import tiny_models as tiny  # pytest puts tests/harvest/vllm on sys.path

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny")
    base = tiny.build_model(root / "base")
    adapters = [tiny.build_lora(base, root / f"lora{k}", seed=k) for k in (1, 2)]
    merged = [tiny.merge_lora(base, a, root / f"merged{k}") for k, a in zip((1, 2), adapters)]
    return {"base": base, "adapters": adapters, "merged": merged}
