"""What every evaluation engine provides (Hugging Face transformers, vLLM).

An engine is bound to one base checkpoint. Calls may name a LoRA adapter to apply on top, so
one vLLM engine can score many finetuned adapters of the same base (``LoRARequest``).

Tokenisation follows lm-evaluation-harness so per-item scores are comparable with it:
``whole = encode(context + continuation)``, ``ctx = encode(context)``, and the continuation's
tokens are ``whole[len(ctx):]``, after trailing whitespace of the context has moved to the front
of the continuation (lm-eval's ``_encode_pair``); BOS only where the tokenizer adds it by default.

Shared rules, so that two engines give the same numbers on the same checkpoint:

- Too long: the model is fed ``ctx + cont[:-1]``, at most ``max_length`` tokens (the engine's
  option; by default the model's ``max_position_embeddings``), as lm-eval feeds
  ``whole[-(max_length + 1):][:-1]``. A request whose longest continuation has ``n`` tokens
  drops the first ``len(ctx) + n - 1 - max_length`` context tokens, the same for all its
  choices; a continuation of ``max_length`` tokens or more is a ``SpecError``.
- ``token_nll``: each text is encoded on its own (BOS as above) and cut into consecutive,
  non-overlapping windows of ``max_length`` tokens; in each window every token but the first is
  predicted from the window's earlier tokens. Returns the summed ``-log p`` (nats) and the
  number of predicted tokens (a one-token window predicts none).
- ``generate``: greedy (argmax, first index on ties), at most ``max_new_tokens`` new tokens,
  stops at EOS; the text is the decoded new tokens (special tokens skipped) cut before the
  first occurrence of any stop string.
- ``adapter``: a local PEFT LoRA folder (``adapter_config.json`` + safetensors) trained on this
  engine's base checkpoint; ``None`` scores the base.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


@dataclass(frozen=True)
class ModelRef:
    """Where a checkpoint's weights live: a local folder or a hub id at a revision."""

    path: str
    revision: str | None = None  # a hub branch, tag or commit (e.g. Pythia's "step143000")
    trust_remote_code: bool = False  # only when the spec says so
    dtype: str = "float32"


DEVICE_SETTINGS = "auto, cpu, cuda or cuda:N"


def check_device(device: str) -> bool:
    """Whether ``device`` is a setting :func:`resolve_device` accepts (auto, cpu, cuda, cuda:N, mps)."""
    if device in ("auto", "cpu", "cuda", "mps"):
        return True
    head, _, index = device.partition(":")
    return head == "cuda" and index.isdigit()


def resolve_device(device: str = "auto") -> str:
    """``"auto"``: ``"cuda"`` when ``torch.cuda.is_available()``, else ``"cpu"``; any other
    setting is returned as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """``"auto"``: ``"bfloat16"`` on a CUDA device that supports it (``torch.cuda.is_bf16_supported()``),
    else ``"float32"`` (CPU, or an older GPU); an explicit dtype is returned as given."""
    if dtype != "auto":
        return dtype
    if not str(device).startswith("cuda"):
        return "float32"
    import torch

    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


@dataclass(frozen=True)
class ChoiceRequest:
    """Score each continuation given one shared context (multiple choice)."""

    context: str
    continuations: tuple[str, ...]


@dataclass(frozen=True)
class GenerateRequest:
    """Greedy generation (e.g. GSM8K), stopped at any of ``stop``."""

    prompt: str
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChoiceScore:
    """Summed log-probability (nats) of each continuation, and its length in tokens."""

    logprobs: tuple[float, ...]
    n_tokens: tuple[int, ...]


class Engine(Protocol):
    name: str  # "hf" or "vllm"
    # Requests per call the harvest hands over (harvest.evaluate.requests_per_call): None for all
    # of a unit at once (vLLM), or a number (HF: 64); an engine without it gets 64.
    requests_per_call: int | None

    def version(self) -> str:
        """Engine name and library version, recorded in the manifest and in unit keys."""

    def score_choices(self, requests: Sequence[ChoiceRequest], adapter: str | None = None) -> list[ChoiceScore]:
        """Log-likelihood of every continuation of every request."""

    def generate(self, requests: Sequence[GenerateRequest], adapter: str | None = None) -> list[str]:
        """Greedy completions, cut at the first stop string."""

    def token_nll(self, texts: Sequence[str], max_length: int) -> tuple[float, int]:
        """Summed next-token loss (nats) over ``texts`` in windows of ``max_length``, and token count."""

    def close(self) -> None:
        """Free the model (and its device memory)."""
