"""The vLLM engine loads a checkpoint by hub id and revision (offline, from a hub-cache layout).

A user on a GPU box names ``hub = "org/model"`` and ``revision = "step1000"``; vLLM and
transformers resolve that through the hub cache. Here the tiny base model and its LoRA-merged
twin sit in a hub-cache layout as two revisions of one repo (``harvest.testing.hub_cache``),
and a fresh process (``HF_HUB_CACHE`` is read when huggingface_hub is imported) scores the
shared items with ``VLLMEngine(ModelRef("acme/tiny-llama", revision=...))``: each revision must
give its own model's reference numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm", reason="vLLM tests run in the vLLM venv (scripts/ci_vllm.sh)")

from harvest.testing import hub_cache  # noqa: E402
from vllm_reference import REQUESTS, assert_same_scores, reference_scores  # noqa: E402

pytestmark = pytest.mark.vllm

SCRIPT = """
import json, sys
from harvest.engines.base import ModelRef
from harvest.engines.vllm_engine import VLLMEngine
from vllm_reference import REQUESTS

if __name__ == "__main__":
    out = {}
    for revision in sys.argv[1:]:
        engine = VLLMEngine(ModelRef("acme/tiny-llama", revision=revision), enable_lora=False,
                            gpu_memory_utilization=0.1, enforce_eager=True)
        try:
            out[revision] = [list(s.logprobs) for s in engine.score_choices(REQUESTS)]
        finally:
            engine.close()
    print(json.dumps(out))
"""


def test_hub_id_and_revision_resolve_to_their_own_weights(models, tmp_path):
    cache = hub_cache(tmp_path / "hub", "acme/tiny-llama", {"step1": models["base"], "step2": models["merged"][0]})
    script = tmp_path / "score_by_hub_id.py"
    script.write_text(SCRIPT)
    here = os.path.dirname(__file__)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), "step1", "step2"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    from harvest.engines.base import ChoiceScore

    for revision, folder in (("step1", models["base"]), ("step2", models["merged"][0])):
        scores = [ChoiceScore(tuple(lp), (1,) * len(lp)) for lp in got[revision]]
        assert_same_scores(scores, reference_scores(folder, REQUESTS), f"revision {revision}")
    moved = max(abs(a - b) for x, y in zip(got["step1"], got["step2"]) for a, b in zip(x, y))
    assert moved > 0.5, "both revisions loaded the same weights"
