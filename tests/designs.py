"""The simulated designs several test files share (``fitting.simulate``), named once here.

The fixtures that build folders from them are in ``tests/conftest.py`` (``tests/fitting/conftest.py``
has the default ``Design()``). A test that needs its own design builds its own folder.
"""

from __future__ import annotations

from dataclasses import replace

from fitting.simulate import Design, TaskTruth

# Two tasks whose law is fixed here (independent of the simulator's defaults).
COLA = TaskTruth("t_cola", chance=0.5, A=0.6, k=0.05, alpha=1.1, C=2.45)
# Few-shot elbow 1.9 nats lies below every checkpoint's loss (>= 2.23): never emerges few-shot,
# while finetuning on 1024 examples moves the elbow to ~2.6 (finetune curves do rise).
NEVER = TaskTruth("t_never", chance=0.25, A=0.9, k=0.1, alpha=1.0, C=1.9)

EMERGING_AND_NEVER = replace(Design(), tasks=(COLA, NEVER))  # one task emerges, one never does
EMERGING = replace(Design(), tasks=(COLA,))
# The default tasks with one finetuning subset per level: a valid folder, fast to write and read
# (the boundary and output tests edit copies of it).
ONE_LEVEL = Design(data_levels=(16,), subset_seeds=(1,))
TWO_LEVELS = Design(data_levels=(16, 256), subset_seeds=(1,))
