"""GPU memory around an engine that sizes itself from what is free (vLLM).

A sweep finetunes in the same process and then opens vLLM. PyTorch keeps the memory training
freed in its caching allocator, where no other process can use it, and vLLM reserves
``gpu_memory_utilization`` × total memory at start and refuses to start ("Free memory on device
... is less than desired GPU memory utilization") when that much is not free. So, before an
engine is built, :func:`release_cached` hands PyTorch's cache back to the driver, and
:func:`memory_fraction` picks the share of the device that is actually free, less a margin for
the engine's own CUDA context and what moves meanwhile. Nothing here creates a CUDA context:
in a process that never initialised CUDA, PyTorch holds no GPU memory, and initialising it
only to ask would force vLLM to spawn (not fork) its engine core.
"""

from __future__ import annotations

import gc
from typing import Any

GIB = 1 << 30
MAX_FRACTION = 0.9  # vLLM's own default gpu_memory_utilization: never asked for more
MARGIN_BYTES = 1 * GIB  # the engine core's CUDA context (~0.5 GiB) and allocations meanwhile
MARGIN_FRACTION = 0.02  # ... or 2% of the device, whichever is larger
MIN_FRACTION = 0.05  # below this an engine cannot hold a model and a KV cache: say so instead


def memory_fraction(free: int, total: int, *, cap: float = MAX_FRACTION) -> float:
    """The ``gpu_memory_utilization`` to ask for when ``free`` of ``total`` bytes are free:
    ``min(cap, (free - margin) / total)``, the margin ``max(1 GiB, 2% of total)``, rounded down
    to 0.001. May be 0 or less (nothing usable is free); the caller decides what to do then."""
    if total <= 0:
        raise ValueError(f"total GPU memory must be positive; got {total}")
    margin = max(MARGIN_BYTES, MARGIN_FRACTION * total)
    fraction = (free - margin) / total
    return min(cap, int(fraction * 1000) / 1000)


def cuda_in_use() -> bool:
    """Whether this process has initialised CUDA (so PyTorch may hold GPU memory); never
    initialises it."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available() and torch.cuda.is_initialized())


def release_cached() -> None:
    """Drop unreachable tensors (``gc.collect()``) and give PyTorch's cached, unused GPU blocks
    back to the driver (``torch.cuda.empty_cache()``), where CUDA is in use in this process."""
    gc.collect()
    if cuda_in_use():
        import torch

        torch.cuda.empty_cache()


def free_memory(devices: int = 1) -> tuple[int, int] | None:
    """(free, total) bytes of the tightest of the first ``devices`` CUDA devices (by free share),
    or None where CUDA is not in use in this process."""
    if not cuda_in_use():
        return None
    import torch

    seen = [torch.cuda.mem_get_info(d) for d in range(max(1, min(devices, torch.cuda.device_count())))]
    return min(seen, key=lambda ft: ft[0] / ft[1])


def default_utilization(options: dict[str, Any]) -> float | None:
    """``gpu_memory_utilization`` to add to ``options`` (vLLM's keyword arguments), or None to
    leave vLLM's default: the user gave it (or ``kv_cache_memory_bytes``), or CUDA is not in
    use here. Raises ValueError when too little is free for any engine."""
    if "gpu_memory_utilization" in options or "kv_cache_memory_bytes" in options:
        return None
    measured = free_memory(int(options.get("tensor_parallel_size") or 1))
    if measured is None:
        return None
    free, total = measured
    fraction = memory_fraction(free, total)
    if fraction < MIN_FRACTION:
        raise ValueError(f"only {free / GIB:.1f} of {total / GIB:.1f} GiB GPU memory is free; free some "
                         f"or set gpu_memory_utilization")
    return fraction
