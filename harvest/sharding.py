"""Full finetuning of one cell sharded over several devices: PyTorch FSDP2 (``fully_shard``).

A model that does not fit one device (full finetuning holds about 16 bytes per parameter: float32
weights, gradients and two Adam moments, so a 7B model needs about 112 GB) is trained by
``world`` processes, one per GPU (NCCL) or, standing in for GPUs on a CPU, one per core (gloo).
Each process holds ``1/world`` of every weight, gradient and optimiser state (ZeRO-3): each
transformer block is its own FSDP unit (the classes the model names in ``_no_split_modules``),
gathered for its forward and backward and freed after, and the root unit holds the rest.

What each rank computes: every rank draws the same batches (same seed), takes every
``world``-th example of each step's batch, and weights its micro-batch's mean loss by its share
of the *whole* step's target tokens times ``world`` (FSDP averages gradients over ranks), so the
update is the single-process update up to float summation order (the equivalence test compares
them). Ranks run the same number of micro-batches (a rank short of examples runs a zero-weight
copy of one), since every backward pass is a collective.

Mixed precision under FSDP is its ``MixedPrecisionPolicy``: weights gathered in bfloat16 for the
forward and backward, gradients reduced in float32, float32 master shards (no autocast on top).

Saving gathers the full state dict on every rank (a collective) and rank 0 writes it.

Why torch's FSDP2 and not through ``accelerate``: accelerate turns FSDP on only for GPU
distributed types (``AcceleratorState``: MULTI_GPU and kin, not MULTI_CPU), so an accelerate
path could not be run here on CPU; accelerate's own FSDP2 path calls this same ``fully_shard``.

:mod:`harvest.finetune` asks :func:`world` whether it runs in a process group;
:mod:`harvest.distributed` starts the group (one spawned process per device).
"""

from __future__ import annotations

from typing import Any, Sequence

from emergence.errors import SpecError

SHARDINGS = ("none", "fsdp")


def world() -> tuple[int, int]:
    """(rank, world size) of the process group this process is in; (0, 1) when none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(model, mixed_dtype: str | None):
    """``fully_shard`` each transformer block, then the root; returns the model (now FSDP)."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    block_names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise SpecError(f"sharding = \"fsdp\": {type(model).__name__} names no transformer block "
                        "(_no_split_modules); shard it by hand or train on one device")
    policy = MixedPrecisionPolicy()
    if mixed_dtype not in (None, "float32"):
        policy = MixedPrecisionPolicy(param_dtype=getattr(torch, mixed_dtype), reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def rank_parts(idx: Sequence[int], micro: int, rank: int, size: int) -> list[tuple[list[int], bool]]:
    """This rank's micro-batches of one step's batch ``idx``: ``(examples, real)``, the same count
    on every rank; a rank short of examples gets ``(idx[:1], False)``, a zero-weight copy."""
    mine = list(idx)[rank::size]
    n_parts = -(-(-(-len(idx) // size)) // micro)  # ceil(ceil(len / size) / micro)
    parts = [(mine[i:i + micro], True) for i in range(0, len(mine), micro)]
    return parts + [(list(idx)[:1], False)] * (n_parts - len(parts))


def all_sum(values: list[float]) -> list[float]:
    """Sum ``values`` over the ranks (float64 on the CPU for gloo, on this rank's GPU for NCCL)."""
    import torch
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def full_state_dict(model) -> dict[str, Any]:
    """The whole model's weights on the CPU (a collective: every rank calls it). A tied weight
    (GPT-2's embeddings and head) is kept once, under its first name, as ``save_pretrained``
    keeps it from an unsharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    keep = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    return {k: v for k, v in state.items() if k in keep}
