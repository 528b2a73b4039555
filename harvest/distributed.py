"""One full finetuning run over several devices: ``len(devices)`` spawned processes (one per
GPU, NCCL; on a CPU, gloo), each a rank of :mod:`harvest.sharding`'s FSDP group.

Every rank loads the checkpoint and runs :func:`harvest.finetune.finetune`, which shards the
model when it finds itself in a group of more than one; saving gathers the whole model and rank
0 writes it (whole or not at all, :func:`harvest.finetune.save_finetuned`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Sequence

from emergence.errors import SpecError
from harvest.workers import run_workers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_ranks(ref, examples, recipe, seed: int, dtype: str | None, device: str, folder: str | Path,
                devices: Sequence[str | None]) -> None:
    """Finetune checkpoint ``ref`` on ``examples`` in ``len(devices)`` spawned processes, one
    per device (``CUDA_VISIBLE_DEVICES`` each, NCCL; on ``device`` "cpu", gloo), and save the
    model in ``folder`` (:func:`harvest.finetune.save_finetuned`: whole or not at all)."""
    if recipe.method != "full" or recipe.sharding != "fsdp":
        raise SpecError('[sweep.recipe] training over several devices needs method = "full" and sharding = "fsdp"')
    port, size = free_port(), len(devices)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl" and (None in devices or len(set(devices)) < size):
        raise SpecError('sharding = "fsdp" on GPUs: give each rank its own GPU with --gpus N, not --workers N')
    job = (ref, list(examples), recipe, seed, dtype, backend, str(folder))
    run_workers([(_rank_job, (*job, rank, size, port)) for rank in range(size)], list(devices))


def _rank_job(ref, examples, recipe, seed, dtype, backend: str, folder: str, rank: int, size: int, port: int,
              done) -> None:
    """One rank: join the group, load the checkpoint, finetune its shard, save (rank 0 writes)."""
    import torch
    import torch.distributed as dist

    from harvest.engines.loading import load_model
    from harvest.finetune import finetune, save_finetuned

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=size)
    try:
        device = "cuda" if backend == "nccl" else "cpu"  # each rank sees its one GPU (CUDA_VISIBLE_DEVICES)
        if backend == "nccl":
            torch.cuda.set_device(0)
        model, tok = load_model(ref, device)
        result = finetune(model, tok, examples, recipe, seed=seed, dtype=dtype)
        save_finetuned(result, tok, folder)
        dist.barrier()
    finally:
        dist.destroy_process_group()
