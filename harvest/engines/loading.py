"""Loading checkpoints and tokenising requests, shared by the engines, the sweep and finetuning.

A checkpoint loads with ``use_safetensors=True`` (a pickle-only checkpoint is refused, never
unpickled) and ``trust_remote_code`` only when the :class:`~harvest.engines.base.ModelRef` says
so; anything that will not load, or would load with weights transformers had to make up, is a
one-line :class:`~emergence.errors.CheckpointError`. Tokenisation is lm-evaluation-harness's
split of context and continuation (:func:`encode_pair`), the one rule every engine and the
finetuning loss use, so their numbers agree.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from emergence.errors import CheckpointError, one_line
from harvest.engines.base import ModelRef

DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def where(ref: ModelRef) -> str:
    """How errors name a checkpoint: its folder or hub id, ``@revision`` when there is one."""
    return ref.path if ref.revision is None else f"{ref.path}@{ref.revision}"


def load_model(ref: ModelRef, device: str):
    """(model, tokenizer) for ``ref``, the model in eval mode on ``device``; one-line
    CheckpointError when it will not load."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars are on stderr
    if Path(ref.path).is_absolute() and not Path(ref.path).is_dir():
        raise CheckpointError(f"checkpoint {where(ref)}: folder not found")
    dtype = "auto" if ref.dtype == "auto" else getattr(torch, DTYPES.get(ref.dtype, "float32"))
    try:
        with _quiet_load_report():  # its multi-line table would precede our one-line error
            model, info = AutoModelForCausalLM.from_pretrained(
                ref.path, use_safetensors=True, dtype=dtype, ignore_mismatched_sizes=True,
                output_loading_info=True, **_common(ref))
    except Exception as err:  # OSError, ValueError, EnvironmentError, hub errors: all "cannot load"
        raise CheckpointError(f"checkpoint {where(ref)}: cannot load ({one_line(err)})") from None
    tok = load_tokenizer(ref)
    check_loading_info(info, where(ref))
    model.to(device).eval()
    return model, tok


def load_tokenizer(ref: ModelRef):
    """The checkpoint's tokenizer (``AutoTokenizer``); one-line CheckpointError when it will not load."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(ref.path, **_common(ref))
    except Exception as err:
        raise CheckpointError(f"checkpoint {where(ref)}: cannot load ({one_line(err)})") from None


def _common(ref: ModelRef) -> dict[str, Any]:
    return {"revision": ref.revision, "trust_remote_code": ref.trust_remote_code, "local_files_only": offline()}


def check_loading_info(info: dict[str, Any], where: str) -> None:
    """Refuse a model some of whose weights transformers had to initialise at random.

    Loading with ``ignore_mismatched_sizes=True`` (and checking here) turns transformers' load
    report into one line. A weight whose shape differs from the config, or that the checkpoint
    lacks (after tied weights are accounted for), would be random: every number measured on
    such a model would be wrong without looking wrong. Extra weights are ignored, as
    transformers does.
    """
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        key, in_file, in_config = mismatched[0]
        raise CheckpointError(
            f"checkpoint {where}: its weights do not match its config.json ({len(mismatched)} tensor(s) "
            f"differ in shape, e.g. {key}: {tuple(in_file)} in the file, {tuple(in_config)} from the config)")
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise CheckpointError(
            f"checkpoint {where}: {len(missing)} weight(s) missing from its safetensors (e.g. {missing[0]}); "
            f"they would be random")


@contextmanager
def _quiet_load_report() -> Iterator[None]:
    """Silence transformers' warnings while loading: its load report (a table of mismatched or
    missing weights, which :func:`check_loading_info` states in one line) and what the mismatch
    sets off elsewhere (a tensor-parallel plan warning)."""
    import logging

    log = logging.getLogger("transformers")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def offline() -> bool:
    """HF_HUB_OFFLINE=1, read now (huggingface_hub reads it once, at import): no hub calls at all,
    so a checkpoint missing from the local cache fails at once instead of after retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"):
        return False
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True  # also silences its other requests (user-agent registry)
    return True


# glibc mallopt parameters, and the value given to both: blocks up to 1 GiB come from (and go
# back to) the heap, which is never trimmed below 1 GiB of free memory.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _KEEP_BYTES = -1, -3, 1 << 30


def keep_freed_memory() -> bool:
    """On glibc (Linux), let freed memory be reused instead of handed back to the OS.

    PyTorch's CPU tensors come straight from malloc. glibc serves blocks of a few MB (a batch's
    activations) with fresh ``mmap`` pages or trims them off the heap when freed, so every
    forward pass page-faults its activations in again (the benchmark's 500 synthetic_arithmetic
    items: 1.7M page faults, 3.3 s system time; scoring CPU time 25.3 s, 21.9 s without them,
    on the loaded 2-core dev VM). Raising the mmap and trim thresholds (as
    ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=...`` would)
    keeps freed blocks for reuse. Process-wide; the process keeps its peak heap until it exits.
    Returns whether it was applied (False off glibc).
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
    except (OSError, AttributeError):
        return False


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing context spaces move to the continuation; split by count."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    return ctx, whole[len(ctx):]


def encode_choices(tok, context: str, continuations: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """:func:`encode_pair` for every continuation, encoding the (shared) context once."""
    n_spaces = len(context) - len(context.rstrip())
    head, tail = (context[:-n_spaces], context[-n_spaces:]) if n_spaces else (context, "")
    ctx = tok.encode(head)
    return ctx, [tok.encode(head + tail + c)[len(ctx):] for c in continuations]
