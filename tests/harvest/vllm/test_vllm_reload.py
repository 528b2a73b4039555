"""Engines one after another in one process, as a sweep loads one per checkpoint.

With the engine core in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) vLLM keeps global
distributed state: closing one engine breaks any other still open, so engines are used one at a
time and closed before the next loads (docs/vllm.md).
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM tests run in the vLLM venv (scripts/ci_vllm.sh)")

from harvest.engines.base import ModelRef  # noqa: E402
from vllm_reference import REQUESTS, assert_same_scores, reference_scores  # noqa: E402

pytestmark = pytest.mark.vllm


def test_engines_in_turn_give_the_reference_numbers(models):
    """LoRA off (the plain logits path), closed; then LoRA on with an adapter, closed."""
    from harvest.engines.vllm_engine import VLLMEngine

    options = {"gpu_memory_utilization": 0.1, "enforce_eager": True}
    plain = VLLMEngine(ModelRef(str(models["base"])), enable_lora=False, **options)
    try:
        assert_same_scores(plain.score_choices(REQUESTS), reference_scores(models["base"], REQUESTS),
                           "LoRA disabled, base")
    finally:
        plain.close()
    lora = VLLMEngine(ModelRef(str(models["base"])), max_lora_rank=8, **options)
    try:
        got = lora.score_choices(REQUESTS, adapter=str(models["adapters"][1]))
    finally:
        lora.close()
    assert_same_scores(got, reference_scores(models["merged"][1], REQUESTS), "second engine, LoRA 2")
