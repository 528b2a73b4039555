"""Evaluation engines: Hugging Face transformers (default) and vLLM.

Every engine class is built as ``EngineClass(ref: ModelRef, **options)``, ``options`` being the
spec's ``[engine]`` table minus ``name``, ``dtype`` and ``trust_remote_code`` (which travel in
the :class:`~harvest.engines.base.ModelRef`). Engine modules are imported only when used.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

from emergence.errors import SpecError
from harvest.engines.base import Engine, ModelRef

ENGINE_CLASSES = {"hf": "harvest.engines.hf:HFEngine", "vllm": "harvest.engines.vllm_engine:VLLMEngine"}
# Libraries whose versions determine an engine's numbers (they go into unit keys).
ENGINE_LIBRARIES = {"hf": ("transformers", "torch"), "vllm": ("vllm", "torch")}


def engine_version(name: str) -> str:
    """E.g. ``"hf transformers=5.2.0 torch=2.13.0"``, without importing the engine."""
    parts = [name]
    for lib in ENGINE_LIBRARIES[name]:
        try:
            parts.append(f"{lib}={metadata.version(lib)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{lib}=missing")
    return " ".join(parts)


def engine_class(name: str) -> type:
    if name not in ENGINE_CLASSES:
        raise SpecError(f"unknown engine {name!r} (choose from {', '.join(ENGINE_CLASSES)})")
    module, cls = ENGINE_CLASSES[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as err:
        from emergence.errors import MissingExtraError

        raise MissingExtraError(err.name or module, "vllm" if name == "vllm" else "harvest") from None


def load_engine(name: str, ref: ModelRef, options: dict[str, Any] | None = None) -> Engine:
    """Load ``ref`` into the named engine (raises CheckpointError when it will not load)."""
    return engine_class(name)(ref, **(options or {}))
