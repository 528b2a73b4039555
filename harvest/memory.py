"""Training memory of one finetuning run on one device, estimated before any model is loaded.

The dry run (:mod:`harvest.dryrun`) says with it whether a cell fits a GPU, and
:func:`harvest.finetune.finetune` decides with it whether ``gradient_checkpointing = "auto"``
switches on. No torch here: a dry run runs where torch is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass

# gradient_checkpointing = "auto": on for full finetuning of a model over this many parameters
# (its weights, gradients and Adam moments take 16 bytes per parameter; activations are what is
# left to save), and on for any model whose estimated training memory without it exceeds the GPU's.
AUTO_CHECKPOINTING_PARAMS = 1_000_000_000

GB = 1e9
ADAM_BYTES_PER_PARAM = 16  # float32 weight 4 + gradient 4 + Adam's two moments 8
ACTIVATION_ELEMENTS = 20  # values kept for backward per hidden unit, token and layer (SDPA attention)
LOGIT_BYTES = 8  # per logit beyond its own: the float32 copy the loss takes, and its gradient
OVERHEAD_BYTES = 1.5 * GB  # CUDA context, cuBLAS workspaces, allocator slack
ASSUMED_VOCAB = 50_000  # when no config.json is at hand
ASPECT = 128  # hidden size / layers of typical 1B-13B models (Llama-2-7B: 4096 / 32)


@dataclass(frozen=True)
class Shape:
    """What the memory estimate needs of an architecture."""

    params: int
    hidden: int
    layers: int
    vocab: int
    source: str  # "config.json", or "params" (hidden and layers estimated from the parameter count)


def shape_of(config, params: int) -> Shape:
    """From a transformers config (any causal LM: ``hidden_size``/``num_hidden_layers``/
    ``vocab_size`` are mapped for GPT-2 too); from ``params`` alone when there is none."""
    hidden = getattr(config, "hidden_size", None) if config is not None else None
    layers = getattr(config, "num_hidden_layers", None) if config is not None else None
    vocab = getattr(config, "vocab_size", None) if config is not None else None
    if not (isinstance(hidden, int) and isinstance(layers, int)):
        return shape_from_params(params)
    return Shape(int(params), hidden, layers, int(vocab or ASSUMED_VOCAB), "config.json")


def shape_from_params(params: int) -> Shape:
    """A dense transformer of ``params`` parameters: ``params ~ 12 layers hidden^2`` with
    ``hidden = ASPECT * layers`` (7B: hidden ~4200, 33 layers; 13B: ~5200, 41)."""
    hidden = max(64, round((params * ASPECT / 12) ** (1 / 3)))
    return Shape(int(params), hidden, max(1, round(hidden / ASPECT)), ASSUMED_VOCAB, "params")


def lora_params(shape: Shape, rank: int) -> int:
    """Adapter size with ``all-linear`` targets, Llama-like layers: attention's four projections
    (hidden -> hidden) and the MLP's three (hidden <-> 8/3 hidden): ``rank x 19 hidden`` a layer."""
    return int(shape.layers * rank * 19 * shape.hidden)


def training_memory(shape: Shape, method: str, *, micro_batch: int, seq_len: int, mixed: bool,
                    base_bytes: int = 2, checkpointing: bool = False, trainable: int | None = None,
                    lora_rank: int = 8, ranks: int = 1) -> dict[str, float]:
    """Estimated peak GPU memory (bytes) of finetuning one model on one device, by part.

    - full: ``16 B/param`` (float32 weights, gradients, Adam moments), plus under bf16 autocast
      without checkpointing ``2 B/param`` of bfloat16 weight copies kept for the backward pass;
    - LoRA: the frozen base at ``base_bytes`` per parameter (2 in bfloat16) plus 16 B per adapter
      parameter (``trainable``, else :func:`lora_params`);
    - activations: ``ACTIVATION_ELEMENTS x hidden`` values per token and layer (2 bytes each in
      mixed precision, 4 in float32), for ``micro_batch x seq_len`` tokens; with checkpointing only
      each layer's input is kept, plus one layer's activations while it is recomputed;
    - logits: ``tokens x vocab`` values plus ``LOGIT_BYTES`` each (the loss's float32 copy and
      its gradient); a fixed ``OVERHEAD_BYTES``.

    ``ranks`` > 1 (full finetuning sharded with FSDP, :mod:`harvest.sharding`): each device holds
    ``1/ranks`` of the 16 B/param, plus two transformer blocks gathered whole (the one computing
    and the one prefetched) in the compute dtype; activations are per device, for its micro-batch.

    An estimate to decide with (fits, does not fit), not an allocator trace: the activation
    constant is nearer 17 for GPT-style MLPs and nearer 22 for Llama's gated MLP.
    """
    n = shape.params
    act = 2 if mixed else 4
    if method == "full" and ranks > 1:
        weights = ADAM_BYTES_PER_PARAM * n / ranks + 2 * act * n / max(1, shape.layers)
    elif method == "full":
        weights = ADAM_BYTES_PER_PARAM * n + (2 * n if mixed and not checkpointing else 0)
    else:
        adapter = trainable if trainable is not None else lora_params(shape, lora_rank)
        weights = base_bytes * n + ADAM_BYTES_PER_PARAM * adapter
    tokens = micro_batch * seq_len
    layer = ACTIVATION_ELEMENTS * shape.hidden * tokens * act
    activations = (shape.layers * shape.hidden * tokens * act + layer) if checkpointing else shape.layers * layer
    logits = tokens * shape.vocab * (act + LOGIT_BYTES)
    parts = {"weights_and_optimizer": float(weights), "activations": float(activations), "logits": float(logits),
             "overhead": float(OVERHEAD_BYTES)}
    return {**parts, "total": sum(parts.values())}


def use_checkpointing(setting: bool | str, method: str, params: int, memory_without: float | None = None,
                      device_memory: float | None = None) -> bool:
    """Whether to checkpoint activations. ``"auto"``: on for full finetuning of a model over
    ``AUTO_CHECKPOINTING_PARAMS`` (1B) parameters, and on whenever the estimated training memory
    without it (``memory_without`` bytes, :func:`training_memory`) exceeds the device's
    (``device_memory``; None on a CPU); off otherwise (it costs about one extra forward pass)."""
    if isinstance(setting, bool):
        return setting
    if method == "full" and params > AUTO_CHECKPOINTING_PARAMS:
        return True
    return memory_without is not None and device_memory is not None and memory_without > device_memory
