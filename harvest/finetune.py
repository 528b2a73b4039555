"""Finetune a causal LM on (prompt, target) pairs: a short, readable loop in the nanoGPT style.

Full finetuning or LoRA (PEFT), AdamW, linear warmup then cosine decay to ``min_lr_ratio`` of
the peak, loss on target tokens only, deterministic given ``seed`` (on one device).

How long to train, for ``D`` examples (the paper trains many subset sizes; a fixed step count
would over-train tiny subsets and under-train large ones)::

    batch       = min(batch_size, D)
    epoch_steps = ceil(D / batch)
    steps       = max(min_steps, epoch_steps, min(ceil(epochs * D / batch), max_steps))

so every example is seen at least once, extra epochs stop at ``max_steps``, and a tiny subset
still gets ``min_steps`` optimiser steps (enough for warmup and a few updates). The defaults
(batch 32, 4 epochs, at least 30 steps) are what a pilot on this project's micro-ladder used;
``steps=`` overrides the rule.

Cost, stated once: ``flops = 6 * params * tokens`` with ``params`` the model's total parameter
count (base plus adapter for LoRA) and ``tokens`` the non-padding tokens of every training batch
(prompt and target, since both pass forward and backward). For LoRA this is an upper bound: the
backward pass skips the base weights' gradients, so the true cost is nearer
``(4 * params + 2 * adapter_params) * tokens``; we keep ``6 N D`` so finetuning cost compares
directly with the pretraining FLOPs of the data contract.

LoRA targets default to PEFT's ``"all-linear"``: every linear (or GPT-2 ``Conv1D``) layer but
the output head, whatever the architecture calls them (Llama's ``q_proj``..., GPT-NeoX's
``query_key_value``..., GPT-2's ``c_attn``...). Explicit ``target_modules`` are checked against
the checkpoint's architecture when the spec is read (:func:`check_targets`), before any work.

Precision: ``finetune(..., dtype="bfloat16")`` (what the sweep passes when the engine's dtype
resolves to bfloat16, on a GPU) is mixed precision: the trainable weights are float32 (master
weights: full finetuning loads the checkpoint in float32; LoRA adapters are float32 over a
bfloat16 frozen base) and forward passes run under ``torch.autocast(device, torch.bfloat16)``.
Weights are never updated in bfloat16: a 1e-5 step to a 0.02 weight is below bfloat16's
resolution there (8 bits of mantissa) and would be lost.

Memory (both execution settings, left out of the cell's content hash since they change memory
and speed, not the update): ``micro_batch_size`` splits each optimiser step's batch into
micro-batches whose gradients accumulate, each micro-batch's mean loss weighted by its share of
the step's target tokens, so the update equals the whole batch's (within float rounding;
``tests/harvest/test_finetune.py``). ``gradient_checkpointing`` (transformers' activation checkpointing,
non-reentrant) keeps only each layer's input and recomputes the rest in the backward pass, about
one extra forward pass of compute; ``"auto"`` (default) turns it on for full finetuning of a
model over 1B parameters (``harvest.memory.AUTO_CHECKPOINTING_PARAMS``), and on a GPU whenever
:func:`harvest.memory.training_memory` estimates the run without it would not fit the device's memory.

Sharded (``sharding = "fsdp"``, full finetuning over several devices): when it runs in a
process group of more than one rank, ``finetune`` shards the model (:mod:`harvest.sharding`) and
each rank takes its share of every step's batch, cut into micro-batches of ``micro_batch_size``;
the update is the single-process one (``tests/harvest/test_sharding.py``).

Tokenisation is the engines' (:func:`harvest.engines.hf.encode_pair`, lm-eval's rule): target
tokens are ``encode(prompt + target)[len(encode(prompt)):]`` and the model is fed
``encode(prompt) + target tokens``, exactly what scoring feeds. Sequences longer than
``max_length`` lose tokens from the left (the target is kept).

Size: one cohesive thing, the finetuning recipe and its training loop (nanoGPT-style, read in one
sitting); the memory estimate is ``harvest.memory``.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from emergence.errors import SpecError
from harvest.memory import shape_of, training_memory, use_checkpointing
from harvest.sharding import SHARDINGS

if TYPE_CHECKING:  # torch is imported inside functions: this module is cheap to import
    import torch

# peft 0.21 calls a transformers API deprecated in v5 on every adapter load: known noise.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

METHODS = ("lora", "full")
ALL_LINEAR = "all-linear"  # PEFT: every linear layer but the output head
MIXED_DTYPES = ("bfloat16", "float16")  # compute dtypes finetune() runs under autocast
# Peak learning rates used when the recipe leaves ``lr`` unset (float32 AdamW).
DEFAULT_LR = {"lora": 1e-3, "full": 3e-4}
EXECUTION_FIELDS = ("micro_batch_size", "gradient_checkpointing", "sharding")  # not in the cell's hash


@dataclass(frozen=True)
class Recipe:
    """How to finetune one cell. Every field but the execution settings (``EXECUTION_FIELDS``:
    micro-batching and gradient checkpointing, which change memory and speed, not the numbers) is
    recorded in the cell's content hash."""

    method: str = "lora"  # "lora" (PEFT adapter) or "full" (all weights)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"  # PEFT's shorthand, or module names
    lr: float | None = None  # None: DEFAULT_LR[method]
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_fraction: float = 0.1  # of the steps, linear from 0
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    epochs: float = 4.0
    steps: int | None = None  # fixed optimiser steps: overrides the epoch rule
    min_steps: int = 30
    max_steps: int = 2000
    batch_size: int = 32
    max_length: int = 256  # tokens per example, prompt + target
    seed: int = 0  # added to the cell's subset seed: data order and LoRA init
    # Execution settings: how a step is computed, not what it computes (same numbers within float
    # rounding), so they are left out of the cell's content hash (:meth:`key_dict`).
    micro_batch_size: int | None = None  # examples per forward/backward; None: the whole batch
    gradient_checkpointing: bool | str = "auto"  # True, False or "auto" (:func:`harvest.memory.use_checkpointing`)
    sharding: str = "none"  # "fsdp": full finetuning sharded over the run's GPUs (harvest.sharding)

    def __post_init__(self) -> None:
        _validate_recipe(self)

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key_dict(self) -> dict[str, Any]:
        """The fields that determine a cell's numbers (what its content hash records)."""
        return {k: v for k, v in asdict(self).items() if k not in EXECUTION_FIELDS}

    @classmethod
    def from_dict(cls, table: dict[str, Any], where: str = "[sweep.recipe]") -> Recipe:
        """Build from a spec table; unknown keys and bad values raise :class:`SpecError`."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(table) - known)
        if unknown:
            raise SpecError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        values = dict(table)
        for name in ("target_modules", "betas"):
            if name in values and isinstance(values[name], list):
                values[name] = tuple(values[name])
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise SpecError(f"{where}: {err}") from None


def _validate_recipe(r: Recipe) -> None:
    """One message template for every bad value (raised as ValueError, wrapped by from_dict).

    Each check is a predicate of the field's value, run lazily: a value of the wrong type (a
    string for ``lr``) fails its own check by name instead of raising a TypeError elsewhere.
    """
    num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    checks = [
        ("method", lambda v: v in METHODS, f"one of {METHODS}"),
        ("lora_rank", lambda v: whole(v) and v >= 1, "an integer >= 1"),
        ("lora_alpha", lambda v: num(v) and v > 0, "positive"),
        ("lora_dropout", lambda v: num(v) and 0 <= v < 1, "in [0, 1)"),
        ("target_modules", lambda v: v == ALL_LINEAR or (isinstance(v, tuple) and len(v) > 0 and all(isinstance(m, str) for m in v)),
         f"{ALL_LINEAR!r} or a non-empty list of module names"),
        ("lr", lambda v: v is None or (num(v) and v > 0), "positive"),
        ("weight_decay", lambda v: num(v) and v >= 0, "non-negative"),
        ("betas", lambda v: len(v) == 2 and all(num(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1)"),
        ("warmup_fraction", lambda v: num(v) and 0 <= v < 1, "in [0, 1)"),
        ("min_lr_ratio", lambda v: num(v) and 0 <= v <= 1, "in [0, 1]"),
        ("grad_clip", lambda v: num(v) and v >= 0, "non-negative"),
        ("epochs", lambda v: num(v) and v > 0, "positive"),
        ("steps", lambda v: v is None or (whole(v) and v >= 1), "an integer >= 1"),
        ("min_steps", lambda v: whole(v) and v >= 1, "an integer >= 1"),
        ("max_steps", lambda v: whole(v) and v >= r.min_steps, "an integer >= min_steps"),
        ("batch_size", lambda v: whole(v) and v >= 1, "an integer >= 1"),
        ("max_length", lambda v: whole(v) and v >= 2, "an integer >= 2"),
        ("seed", lambda v: whole(v) and v >= 0, "an integer >= 0"),
        ("micro_batch_size", lambda v: v is None or (whole(v) and v >= 1), "an integer >= 1"),
        ("gradient_checkpointing", lambda v: isinstance(v, bool) or v == "auto", 'true, false or "auto"'),
        ("sharding", lambda v: v in SHARDINGS and (v == "none" or r.method == "full"),
         f'one of {SHARDINGS} ("fsdp" only with method = "full")'),
    ]
    for name, check, want in checks:
        value = getattr(r, name)
        try:
            ok = bool(check(value))
        except TypeError:  # e.g. a number compared with a string, len() of a number
            ok = False
        if not ok:
            raise ValueError(f"{name!r} must be {want}; got {value!r}")


# --------------------------------------------------------------------------- schedule


def batch_size_for(recipe: Recipe, n_examples: int) -> int:
    return max(1, min(recipe.batch_size, n_examples))


def steps_for(recipe: Recipe, n_examples: int) -> int:
    """Optimiser steps for ``n_examples`` (the rule in the module docstring)."""
    if recipe.steps is not None:
        return recipe.steps
    batch = batch_size_for(recipe, n_examples)
    epoch_steps = math.ceil(n_examples / batch)
    wanted = math.ceil(recipe.epochs * n_examples / batch)
    return max(recipe.min_steps, epoch_steps, min(wanted, recipe.max_steps))


def lr_at(step: int, total: int, recipe: Recipe) -> float:
    """Linear warmup over ``warmup_fraction`` of the steps, then cosine to ``min_lr_ratio``."""
    peak = recipe.peak_lr
    warmup = int(recipe.warmup_fraction * total)
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return peak * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Encoded:
    """One training example: token ids (prompt then target) and where the target starts."""

    ids: tuple[int, ...]
    target_start: int


def encode_examples(tokenizer, examples: Sequence[tuple[str, str]], max_length: int) -> list[Encoded]:
    """Tokenise (prompt, target) pairs the way the engines score them; keep the target."""
    from harvest.engines.loading import encode_pair  # the engines' split of context and continuation

    out = []
    for prompt, target in examples:
        ctx, cont = encode_pair(tokenizer, prompt, target)
        if not cont:
            raise SpecError(f"finetuning example has an empty target after tokenisation: {target!r}")
        ids = ctx + cont
        cut = max(0, len(ids) - max_length)  # drop from the left, never the target's end
        out.append(Encoded(tuple(ids[cut:]), max(0, len(ctx) - cut)))
    return out


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example. Shapes: (B, T); labels are -100 off the target."""
    import torch

    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.ids)
        ids[row, :n] = torch.tensor(e.ids)
        mask[row, :n] = 1
        labels[row, e.target_start:n] = ids[row, e.target_start:n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def micro_batches(idx: Sequence[int], micro: int | None) -> list[list[int]]:
    """One step's batch cut into consecutive micro-batches of ``micro`` examples (the last may
    be smaller); None: the whole batch at once."""
    idx = list(idx)
    size = len(idx) if micro is None else max(1, micro)
    return [idx[i:i + size] for i in range(0, len(idx), size)]


def batch_order(n_examples: int, batch: int, steps: int, seed: int) -> list[list[int]]:
    """Indices of each step's batch: reshuffle every epoch, wrap across epoch ends."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    stream: list[int] = []
    while len(stream) < steps * batch:
        stream.extend(torch.randperm(n_examples, generator=gen).tolist())
    return [stream[i * batch:(i + 1) * batch] for i in range(steps)]


# --------------------------------------------------------------------------- model


def count_params(model) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def prepare_model(model, recipe: Recipe, seed: int):
    """Wrap in a LoRA adapter (seeded init) or unfreeze every weight for full finetuning."""
    import torch

    if recipe.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    targets = recipe.target_modules
    config = LoraConfig(
        r=recipe.lora_rank, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
        target_modules=targets if isinstance(targets, str) else list(targets), task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)  # LoRA A matrices are initialised randomly
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # e.g. a target module the architecture does not have
        raise SpecError(f"[sweep.recipe] target_modules {recipe.target_modules!r}: {err}") from None


def linear_module_names(model) -> list[str]:
    """Full names of the layers LoRA can wrap as linear: ``nn.Linear`` and GPT-2's ``Conv1D``."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return [name for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))]


def unmatched_targets(targets: Sequence[str], linear_names: Sequence[str]) -> list[str]:
    """Targets matching no linear layer, by PEFT's rule: a name equal to the target or ending
    in ``"." + target``."""
    return [t for t in targets if not any(n == t or n.endswith("." + t) for n in linear_names)]


def skeleton_linear_names(ref) -> list[str] | None:
    """Linear layer names of ``ref``'s architecture, from its ``config.json`` alone: the model is
    built on the ``meta`` device (no weights read or allocated). None when the config cannot be
    read here (a hub checkpoint not in the local cache, say): the check is left to training."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from harvest.engines.loading import offline as _offline

    try:
        config = AutoConfig.from_pretrained(ref.path, revision=ref.revision, trust_remote_code=ref.trust_remote_code,
                                            local_files_only=_offline() or Path(ref.path).is_dir())
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=ref.trust_remote_code)
    except Exception:  # noqa: BLE001 - no config here, or an architecture transformers lacks
        return None
    return linear_module_names(model)


def check_targets(recipe: Recipe, refs: dict[str, Any], where: str = "[sweep.recipe]") -> None:
    """Refuse explicit LoRA ``target_modules`` that match no linear layer of a checkpoint's
    architecture (one line naming the key and the layer names that exist); ``refs`` maps a
    checkpoint name to its ModelRef. Architectures are read once each, from config.json."""
    if recipe.method != "lora" or isinstance(recipe.target_modules, str):
        return
    seen: dict[tuple, list[str] | None] = {}
    for name, ref in refs.items():
        key = _config_identity(ref)
        if key not in seen:
            seen[key] = skeleton_linear_names(ref)
        linear = seen[key]
        if linear is None:
            continue
        missing = unmatched_targets(recipe.target_modules, linear)
        if missing:
            exist = sorted({n.rsplit(".", 1)[-1] for n in linear})
            raise SpecError(f"{where}.target_modules: {', '.join(missing)} match(es) no linear layer of checkpoint "
                            f"{name!r} (its linear layers: {', '.join(exist)}; or use {ALL_LINEAR!r})")


def _config_identity(ref) -> tuple:
    """What decides an architecture: the config.json's text when local, else the hub location."""
    config = Path(ref.path) / "config.json"
    if config.is_file():
        return ("local", config.read_text(encoding="utf-8", errors="replace"))
    return ("hub", ref.path, ref.revision)


def make_optimizer(model, recipe: Recipe):
    """AdamW; no weight decay on biases and norms (1-D tensors), as in nanoGPT."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.peak_lr, betas=recipe.betas)


# --------------------------------------------------------------------------- the loop


@dataclass
class FinetuneResult:
    """A finetuned model and what it cost."""

    model: Any  # a PeftModel (LoRA) or the base model class (full)
    recipe: Recipe
    n_examples: int
    steps: int
    batch_size: int
    tokens: int  # non-padding tokens processed in training (prompt + target), all steps
    target_tokens: int  # tokens the loss was computed on
    params: int  # total, base plus adapter
    trainable_params: int
    flops: float  # 6 * params * tokens (see the module docstring)
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean target-token loss per step (nats)
    micro_batch_size: int = 0  # examples per forward/backward (= batch_size without accumulation)
    accumulation_steps: int = 1  # micro-batches per optimiser step
    gradient_checkpointing: bool = False  # as resolved (the recipe may say "auto")
    ranks: int = 1  # processes the run was sharded over (harvest.sharding)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


def finetune(
    model,
    tokenizer,
    examples: Sequence[tuple[str, str]],
    recipe: Recipe = Recipe(),
    seed: int = 0,
    progress=None,
    dtype: str | None = None,
) -> FinetuneResult:
    """Finetune ``model`` in place on ``examples``; returns it (LoRA-wrapped for ``lora``).

    ``seed`` (added to ``recipe.seed``) fixes the data order and the adapter's initialisation.
    ``progress`` is an optional callable ``(step, steps, loss)`` for progress bars.
    ``dtype`` ``"bfloat16"``/``"float16"``: mixed precision (module docstring): trainable weights
    are made float32 and forward passes run under autocast in that dtype; None or ``"float32"``:
    the model's own dtypes.
    """
    if not examples:
        raise SpecError("finetune: no training examples")
    seed = recipe.seed + seed
    data = encode_examples(tokenizer, examples, recipe.max_length)
    base_params = count_params(model)[0]
    model = prepare_model(model, recipe, seed)
    device = next(model.parameters()).device
    rank, size = _group(recipe)
    total, trainable = count_params(model)  # before sharding: then each rank holds 1/size
    batch, steps = batch_size_for(recipe, len(data)), steps_for(recipe, len(data))
    micro = min(recipe.micro_batch_size or batch, batch)
    checkpointing = _checkpointing(model, recipe, base_params, device, dtype, micro,
                                   max(len(e.ids) for e in data))
    if size > 1:
        from harvest.sharding import shard

        _check_dtype(dtype)
        model, autocast = shard(model, dtype), contextlib.nullcontext()  # FSDP's policy casts
    else:
        autocast = _autocast(model, device, dtype)
    model.train()
    optimizer = make_optimizer(model, recipe)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens = target_tokens = 0
    losses: list[float] = []
    start = time.perf_counter()
    try:
        for step, idx in enumerate(batch_order(len(data), batch, steps, seed)):
            parts, counts, reals, whole = _step_parts(data, idx, micro, pad_id, rank, size)
            step_loss = 0.0
            for part, count, real in zip(parts, counts, reals):
                inputs = {k: v.to(device) for k, v in part.items()}
                with autocast:
                    loss = model(**inputs, use_cache=False).loss  # mean over this micro-batch's target tokens
                # Weighted by its share of the step's target tokens, the micro-batches' gradients add up
                # to the whole batch's: accumulation changes memory, not the update. Sharded, each
                # rank's share is of the whole step's tokens, times size (FSDP averages over ranks).
                share = count / max(1, whole)
                (loss * (share * size)).backward()
                step_loss += float(loss.detach()) * share
                tokens += int(part["attention_mask"].sum()) if real else 0
            target_tokens += sum(counts)
            _update(model, optimizer, recipe, lr_at(step, steps, recipe))
            losses.append(step_loss)
            if progress is not None:
                progress(step + 1, steps, losses[-1])
    finally:
        if checkpointing:
            _set_checkpointing(model, False)
    model.eval()
    if size > 1:  # every rank reports the whole run: losses and tokens summed over ranks
        from harvest.sharding import all_sum

        *losses, tokens, target_tokens = all_sum([*losses, tokens, target_tokens])
        tokens, target_tokens = int(tokens), int(target_tokens)
    return FinetuneResult(
        model=model, recipe=recipe, n_examples=len(data), steps=steps, batch_size=batch,
        tokens=tokens, target_tokens=target_tokens, params=total, trainable_params=trainable,
        flops=6.0 * total * tokens, seconds=time.perf_counter() - start, losses=losses,
        micro_batch_size=micro, accumulation_steps=math.ceil(math.ceil(batch / size) / micro),  # per rank
        gradient_checkpointing=checkpointing,
        ranks=size,
    )


def _group(recipe: Recipe) -> tuple[int, int]:
    """(rank, size) of the process group this run is sharded over; (0, 1) when not sharded."""
    from harvest.sharding import world

    rank, size = world()
    if size > 1 and recipe.sharding != "fsdp":
        raise SpecError(f"finetune: running in a process group of {size} ranks, but the recipe's sharding is "
                        f"{recipe.sharding!r} (set sharding = \"fsdp\")")
    return rank, size


def _step_parts(data: list[Encoded], idx: list[int], micro: int, pad_id: int, rank: int, size: int):
    """This rank's micro-batches of one step, their target-token counts, whether each is real (not
    a zero-weight stand-in), and the whole step's count (one process: every micro-batch of
    ``idx``; sharded: :func:`harvest.sharding.rank_parts`)."""
    if size == 1:
        parts = [collate([data[i] for i in chunk], pad_id) for chunk in micro_batches(idx, micro)]
        counts = [_targets(p) for p in parts]
        return parts, counts, [True] * len(parts), sum(counts)
    from harvest.sharding import rank_parts

    chosen = rank_parts(idx, micro, rank, size)
    parts = [collate([data[i] for i in chunk], pad_id) for chunk, _ in chosen]
    reals = [real for _, real in chosen]
    counts = [_targets(p) if real else 0 for p, real in zip(parts, reals)]
    whole = sum(_targets(collate([data[i]], pad_id)) for i in idx)
    return parts, counts, reals, whole


def _targets(part) -> int:
    """Target tokens the loss averages over (labels shifted by one, as the model's loss)."""
    return int((part["labels"][:, 1:] != -100).sum())


def _checkpointing(model, recipe: Recipe, base_params: int, device, dtype: str | None, micro: int,
                   seq_len: int) -> bool:
    """Resolve ``recipe.gradient_checkpointing`` for this model and device, and switch it on."""
    device_memory = need = None
    if recipe.gradient_checkpointing == "auto" and device.type == "cuda":
        import torch

        device_memory = torch.cuda.get_device_properties(device).total_memory
        shape = shape_of(getattr(model, "config", None), base_params)
        base_bytes = max(p.element_size() for p in model.parameters())
        need = training_memory(shape, recipe.method, micro_batch=micro, seq_len=seq_len,
                               mixed=dtype in MIXED_DTYPES, base_bytes=base_bytes, checkpointing=False,
                               trainable=count_params(model)[1])["total"]
    on = use_checkpointing(recipe.gradient_checkpointing, recipe.method, base_params, need, device_memory)
    if on:
        _set_checkpointing(model, True, explicit=recipe.gradient_checkpointing is True)
    return on


def _set_checkpointing(model, enable: bool, explicit: bool = False) -> None:
    """Activation checkpointing on or off (transformers' API, non-reentrant: works under LoRA
    without inputs that require gradients)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if enable and not getattr(base, "supports_gradient_checkpointing", False):
        if explicit:
            raise SpecError(f"[sweep.recipe] gradient_checkpointing: {type(base).__name__} does not support it")
        return
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x
        if enable:
            base.activation_checkpointing_enable({"use_reentrant": False})
        else:
            base.activation_checkpointing_disable()
    elif enable:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_disable()


def _autocast(model, device, dtype: str | None):
    """The forward passes' context: autocast in ``dtype`` (mixed precision), with every
    trainable weight float32 first; a no-op context for None/float32."""
    import torch

    if _check_dtype(dtype) is None:
        return contextlib.nullcontext()
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()  # master weights: updates accumulate in float32
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def _check_dtype(dtype: str | None) -> str | None:
    """``dtype`` if it is a mixed-precision compute dtype, None for float32/None; else an error."""
    if dtype in (None, "float32"):
        return None
    if dtype not in MIXED_DTYPES:
        raise SpecError(f"finetune: dtype must be float32, bfloat16 or float16, got {dtype!r}")
    return dtype


def _update(model, optimizer, recipe: Recipe, lr: float) -> None:
    """One AdamW step at learning rate ``lr``, after clipping the global gradient norm."""
    import torch

    for group in optimizer.param_groups:
        group["lr"] = lr
    if recipe.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], recipe.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- saving


STATS_FILE = "finetune.json"


def save_finetuned(result: FinetuneResult, tokenizer, folder: str | Path) -> Path:
    """Save as safetensors: the adapter alone for LoRA, all weights plus tokenizer for full,
    and the run's cost in ``finetune.json`` (:func:`result_stats`).

    Written into a temporary sibling folder and renamed, so a kill never leaves half a model.
    """
    from emergence.atomic import replace_folder, write_json

    folder = Path(folder)
    state = None
    if result.ranks > 1:  # sharded: gather the whole model (every rank), rank 0 writes it
        from harvest.sharding import full_state_dict, world

        state = full_state_dict(result.model)
        if world()[0] != 0:
            return folder
    with replace_folder(folder, keep_others=False) as tmp:
        result.model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        if result.recipe.method == "full":
            tokenizer.save_pretrained(tmp)
        write_json(tmp / STATS_FILE, result_stats(result))
    return folder


def result_stats(result: FinetuneResult) -> dict[str, Any]:
    """The numbers of a finetuning run that outlive the model (costs, steps, losses)."""
    keys = ("n_examples", "steps", "batch_size", "tokens", "target_tokens", "params",
            "trainable_params", "flops", "seconds", "micro_batch_size", "accumulation_steps",
            "gradient_checkpointing", "ranks")
    stats = {k: getattr(result, k) for k in keys}
    return {**stats, "method": result.recipe.method, "final_loss": result.losses[-1] if result.losses else None}


def read_stats(folder: str | Path) -> dict[str, Any] | None:
    """The stats saved with a finetuned model, or None when the folder is absent."""
    import json

    path = Path(folder) / STATS_FILE
    return json.loads(path.read_text()) if path.is_file() else None

