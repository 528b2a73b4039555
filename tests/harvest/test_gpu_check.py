"""benchmarks/gpu_check.py, the prepared GPU-box check, runs on the CPU at toy size (--smoke) and
prints its numbers as one JSON object (issue 18: "it must run on CPU in the tests at toy size")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytestmark = [pytest.mark.harvest, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_smoke_run_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--device", "cpu",
                          "--out", str(tmp_path / "gpu_check.json")], capture_output=True, text=True, env=env,
                         timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == json.loads((tmp_path / "gpu_check.json").read_text())
    text = json.dumps(result)
    assert "NaN" not in text and "Infinity" not in text and result["failures"] == []
    assert result["smoke"] is True and result["eval"]["device"] == "cpu"
    assert set(result["finetune"]) == {"lora", "full"}  # both modes trained
    assert result["eval"]["max_diff_vs_direct_nats"] < 1e-3  # float32 on the CPU: the engine matches a direct pass
