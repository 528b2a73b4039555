"""Skipping most of the last decoder layer where no logits are read (the HF engine).

Multiple-choice scoring reads the logits of one position per context (its last); the last
layer's dense MLP and its query and output projections map each position on its own, and their
output at a position feeds only that position's logits, so the HF engine runs them only there.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

# Modules of the last decoder layer that map each position on its own and whose output at a
# position feeds only that position's logits (its keys and values are computed apart from them):
# the dense MLP, and in Llama-style attention the query and output projections.
LAST_LAYER_ROWWISE = ("mlp", "self_attn.q_proj", "self_attn.o_proj")


def last_layer_rowwise_modules(model) -> list:
    """The :data:`LAST_LAYER_ROWWISE` modules of decoder layer ``num_hidden_layers - 1``
    (``...layers.<n-1>.mlp`` etc.): a dense ``*MLP`` and plain ``Linear`` projections only (a
    mixture-of-experts block, or a module the model does not have, is left out)."""
    import torch

    last = getattr(model.config, "num_hidden_layers", None)
    found: list = []
    for name, module in model.named_modules():
        for suffix in LAST_LAYER_ROWWISE:
            head = name[:-len(suffix)]
            if last is None or not name.endswith("." + suffix) or not head.endswith(f".{last - 1}."):
                continue
            kind_ok = type(module).__name__.endswith("MLP") if suffix == "mlp" else type(module) is torch.nn.Linear
            if kind_ok:
                found.append(module)
    return found


@contextmanager
def rowwise_only_at(modules: Sequence, rows, cols) -> Iterator[None]:
    """Run the row-wise ``modules`` (of the last layer) only at positions ``(rows[i], cols[i])`` in the block.

    Their output at a position feeds nothing but that position's logits (the layer's keys and
    values do not depend on them), so where the logits are not read they are skipped: the
    MLP and the query and output projections, about 85% of the last layer's work in a
    Llama. Done with forward hooks, so module names (and LoRA adapters on them) stay as they
    are; a skipped position gets zeros, which reach nothing that is read.
    """
    handles = []
    for module in modules:
        shapes = []

        def take(_module, args, shapes=shapes):  # [B, T, H] -> [1, N, H]: only the positions read
            shapes.append(args[0].shape[:-1])
            return (args[0][rows, cols][None], *args[1:])

        def put(_module, _args, y, shapes=shapes):  # [1, N, H'] -> [B, T, H'], zeros where skipped
            full = y.new_zeros(*shapes.pop(), y.shape[-1])
            full[rows, cols] = y[0]
            return full

        handles += [module.register_forward_pre_hook(take), module.register_forward_hook(put)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
