"""Hugging Face transformers engine: CPU or GPU, the default.

Multiple choice is where it beats lm-evaluation-harness: lm-eval runs context + choice once per
choice; here each request's context runs once (a batch of right-padded contexts, keeping the
KV cache and only the logits at each context's last position), and the choices then run on
copies of that cache, so an MMLU item with four one-token answers costs one context pass
instead of four. Across items, a common token prefix (an MMLU subject's description and fixed
shots) runs once per group of items (:func:`shared_prefix_groups`), and each item runs only its
own remaining tokens on a copy of that prefix's cache. Where every choice is one token and
prompts share no long prefix (shots drawn per item), lm-eval also runs each context once; there
the gain is work skipped: the LM head and log-softmax except at each context's last position,
most of the last layer except there too (:meth:`HFEngine._last_layer_at`), the attention mask
(right padding is harmless under causal attention), and, on CPU, the page faults of
re-allocating activations (:func:`keep_freed_memory`). Tokenisation, truncation and summation
follow ``harvest/engines/base.py`` (lm-eval's rules), so the numbers agree with lm-eval's to
float rounding.

Loading uses ``use_safetensors=True`` and ``trust_remote_code`` only when the ModelRef says so;
anything that will not load is a one-line :class:`~emergence.errors.CheckpointError`.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from emergence.errors import CheckpointError, SpecError
from harvest.engines import engine_version
from harvest.engines.base import ChoiceRequest, ChoiceScore, GenerateRequest, ModelRef

# A common context prefix shorter than this (in tokens) is not worth its own forward pass.
MIN_SHARED_TOKENS = 16
# ... and a group whose sharing saves fewer tokens than this runs with the other items: its own
# prefix pass, partly filled batches and cache copies cost about what they save (on CPU, pairs of
# random-shot 5-shot items that share their first shot, 35 tokens, were no faster grouped).
MIN_SAVED_TOKENS = 256
DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(err).__name__}: {first[:300]}"


def load_model(ref: ModelRef, device: str):
    """(model, tokenizer) for ``ref``; one-line CheckpointError when it will not load."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars are on stderr
    where = ref.path if ref.revision is None else f"{ref.path}@{ref.revision}"
    if Path(ref.path).is_absolute() and not Path(ref.path).is_dir():
        raise CheckpointError(f"checkpoint {where}: folder not found")
    dtype = "auto" if ref.dtype == "auto" else getattr(torch, DTYPES.get(ref.dtype, "float32"))
    common = {"revision": ref.revision, "trust_remote_code": ref.trust_remote_code,
              "local_files_only": _offline()}
    try:
        with _quiet_load_report():  # its multi-line table would precede our one-line error
            model, info = AutoModelForCausalLM.from_pretrained(
                ref.path, use_safetensors=True, dtype=dtype, ignore_mismatched_sizes=True,
                output_loading_info=True, **common)
        tok = AutoTokenizer.from_pretrained(ref.path, **common)
    except Exception as err:  # OSError, ValueError, EnvironmentError, hub errors: all "cannot load"
        raise CheckpointError(f"checkpoint {where}: cannot load ({_one_line(err)})") from None
    check_loading_info(info, where)
    model.to(device).eval()
    return model, tok


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


def _offline() -> bool:
    """HF_HUB_OFFLINE=1, read now (huggingface_hub reads it once, at import): no hub calls at all,
    so a checkpoint missing from the local cache fails at once instead of after retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"):
        return False
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True  # also silences its other requests (user-agent registry)
    return True


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


def _first_token_sums(first_lp, conts_per_item: list[list[list[int]]]) -> list[list[float]]:
    """Each choice's first-token log-probability (0 for an empty choice), read in one gather."""
    import torch

    index = [[c[0] if c else 0 for c in conts] for conts in conts_per_item]
    width = max(len(r) for r in index)
    picked = first_lp.gather(1, torch.tensor([r + [0] * (width - len(r)) for r in index], device=first_lp.device))
    rows = zip(picked.tolist(), conts_per_item)
    return [[float(v) if c else 0.0 for v, c in zip(row, conts)] for row, conts in rows]


class HFEngine:
    """Engine over one base checkpoint (optionally with PEFT LoRA adapters on top)."""

    name = "hf"
    OPTIONS = ("batch_size", "device", "max_length")

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Unknown ``[engine]`` keys raise SpecError (the spec loader calls this before any run)."""
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            raise SpecError(f"engine 'hf': unknown option(s) {', '.join(unknown)} (allowed: {', '.join(cls.OPTIONS)})")

    def __init__(self, ref: ModelRef, *, batch_size: int = 16, device: str = "auto",
                 max_length: int | None = None, **unknown: Any):
        from harvest.engines.base import resolve_device, resolve_dtype

        self.check_options(unknown)
        device = resolve_device(device)  # "auto": CUDA when available, else the CPU
        if ref.dtype == "auto":  # bfloat16 on a CUDA device that supports it, else float32
            ref = replace(ref, dtype=resolve_dtype(ref.dtype, device))
        self.ref, self.device, self.batch_size = ref, device, int(batch_size)
        if str(device).startswith("cpu"):
            keep_freed_memory()
        self.model, self.tok = load_model(ref, device)
        self.max_length = int(max_length or self._model_max_length())
        self._peft = None  # a PeftModel wrapping self.model once an adapter is used
        self._adapters: dict[str, str] = {}  # adapter path -> adapter name
        params = inspect.signature(self.model.forward).parameters
        self._keeps_logits = "logits_to_keep" in params
        # transformers 5.2x renamed forward's past_key_values to cache (the old name goes in 5.40)
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._last_rowwise = last_layer_rowwise_modules(self.model) if self._keeps_logits else []

    def _model_max_length(self) -> int:
        n = getattr(self.model.config, "max_position_embeddings", None)
        return int(n) if n else 2048

    def version(self) -> str:
        return engine_version(self.name)

    def close(self) -> None:
        self.model = self._peft = None

    # ------------------------------------------------------------------ adapters

    @contextmanager
    def _using(self, adapter: str | None) -> Iterator[Any]:
        """The model to run: the base, or the base with a LoRA adapter active."""
        import torch

        with torch.inference_mode():
            if adapter is None:
                if self._peft is None:
                    yield self.model
                else:
                    with self._peft.disable_adapter():
                        yield self._peft
            else:
                self._activate(adapter)
                yield self._peft

    def _activate(self, adapter: str) -> None:
        from peft import PeftModel

        path = Path(adapter)
        if not (path / "adapter_model.safetensors").is_file():
            raise CheckpointError(f"adapter {adapter}: no adapter_model.safetensors (safetensors only)")
        name = self._adapters.get(str(path))
        if name is None:
            name = "a" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
                else:
                    self._peft.load_adapter(str(path), adapter_name=name)
            except Exception as err:
                raise CheckpointError(f"adapter {adapter}: cannot load ({_one_line(err)})") from None
            self._peft.eval()
            self._adapters[str(path)] = name
        self._peft.set_adapter(name)

    # ------------------------------------------------------------------ multiple choice

    def score_choices(self, requests: Sequence[ChoiceRequest], adapter: str | None = None) -> list[ChoiceScore]:
        encoded = [self._encode_request(r) for r in requests]
        groups, alone = shared_prefix_groups([ctx for ctx, _ in encoded], MIN_SHARED_TOKENS)
        groups, alone = worth_sharing(groups, alone, MIN_SAVED_TOKENS)
        out: list[ChoiceScore | None] = [None] * len(encoded)
        with self._using(adapter) as model:
            for n_shared, members in groups:
                self._score_group(model, encoded, members, n_shared, out)
            self._score_batches(model, encoded, alone, out, None)
        return out  # type: ignore[return-value]

    def _score_group(self, model, encoded, members: list[int], n_shared: int, out: list) -> None:
        """Items whose contexts start with the same ``n_shared`` tokens: that prefix runs once."""
        prefix = encoded[members[0]][0][:n_shared]
        with self._last_layer_at(self._tensor([]), self._tensor([])):  # only its KV cache is used
            prefix_out = model(input_ids=self._tensor([prefix]), use_cache=True, **self._keep_last_only())
        self._score_batches(model, encoded, members, out, (n_shared, _returned_cache(prefix_out)))

    def _score_batches(self, model, encoded, idx: list[int], out: list, shared) -> None:
        order = sorted(idx, key=lambda i: -len(encoded[i][0]))  # long first: little padding
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            for i, score in zip(batch, self._score_batch(model, [encoded[i] for i in batch], shared)):
                out[i] = score

    def _encode_request(self, req: ChoiceRequest) -> tuple[list[int], list[list[int]]]:
        """(context ids, continuation ids per choice), the context cut on the left to fit."""
        ctx, conts = encode_choices(self.tok, req.context, req.continuations)
        if not ctx:  # an empty context is conditioned on BOS (or EOS), as lm-eval does
            ctx = [self.tok.bos_token_id if self.tok.bos_token_id is not None else self._pad_id()]
        longest = max(len(c) for c in conts)
        if longest >= self.max_length:
            raise SpecError(f"a continuation of {longest} tokens does not fit max_length {self.max_length}")
        # fed: ctx + cont[:-1], at most max_length tokens (lm-eval: whole[-(max_length+1):][:-1])
        overflow = len(ctx) + longest - 1 - self.max_length
        return (ctx[overflow:] if overflow > 0 else ctx), conts

    def _score_batch(self, model, batch: list[tuple[list[int], list[list[int]]]], shared=None) -> list[ChoiceScore]:
        """One batch of items; ``shared`` = (n tokens, batch-1 KV cache) of a prefix they all start with.

        The contexts are right-padded and run without an attention mask: attention is causal, so
        a context's real tokens never see the padding after them, and we read only each
        context's last real position (SDPA can then take its causal kernel). The padding's own
        cache entries are masked out where the cache is reused (:meth:`_add_continuations`).
        """
        import torch

        n_shared, cache = shared if shared is not None else (0, None)
        ctx_lens = [len(ctx) for ctx, _ in batch]
        ids, mask = self._right_pad([ctx[n_shared:] for ctx, _ in batch])  # [B, T - n_shared]
        last = torch.tensor(ctx_lens, device=self.device) - 1 - n_shared  # [B] each context's last column
        multi = any(len(c) > 1 for _, conts in batch for c in conts)  # choices beyond their first token
        extra = {}
        if cache is not None:
            cache = copy.deepcopy(cache)
            cache.batch_repeat_interleave(len(batch))  # [1, ...] -> [B, ...]
            mask = torch.cat([mask.new_ones(len(batch), n_shared), mask], dim=1)  # [B, T]
            extra = {self._cache_arg: cache,
                     "position_ids": n_shared + torch.arange(ids.shape[1], device=self.device)[None].expand(len(batch), -1)}
        with self._last_layer_at(torch.arange(len(batch), device=self.device), last):
            out = model(input_ids=ids, use_cache=multi or cache is not None, **extra, **self._keep(last))
        first_lp = self._last_logprobs(out.logits, last)  # [B, V]: predicts each choice's first token
        sums = _first_token_sums(first_lp, [conts for _, conts in batch])
        if multi:
            self._add_continuations(model, batch, _returned_cache(out), mask, ctx_lens, sums)
        return [ChoiceScore(tuple(s), tuple(len(c) for c in conts)) for s, (_, conts) in zip(sums, batch)]

    @contextmanager
    def _last_layer_at(self, rows, cols):
        """Run the last layer's row-wise modules only at positions ``(rows[i], cols[i])`` in the block.

        Their output at a position feeds nothing but that position's logits (the layer's keys and
        values do not depend on them), so where the logits are not read they are skipped: the
        MLP and the query and output projections, about 85% of the last layer's work in a
        Llama. Done with forward hooks, so module names (and LoRA adapters on them) stay as they
        are; a skipped position gets zeros, which reach nothing that is read.
        """
        handles = []
        for module in self._last_rowwise:
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

    def _keep_last_only(self) -> dict:
        return {"logits_to_keep": 1} if self._keeps_logits else {}

    def _tensor(self, seqs: list[list[int]]):
        import torch

        return torch.tensor(seqs, dtype=torch.long, device=self.device)

    def _keep(self, last) -> dict:
        """Ask the model for logits only at the positions we read (saves the LM-head cost)."""
        return {"logits_to_keep": last.unique()} if self._keeps_logits else {}

    def _last_logprobs(self, logits, last):
        import torch

        if self._keeps_logits:  # logits: [B, n_unique, V] at sorted unique positions
            col = torch.searchsorted(last.unique(), last)
        else:  # logits: [B, T, V]
            col = last
        rows = logits[torch.arange(len(last)), col]  # [B, V]
        return torch.log_softmax(rows.float(), dim=-1)

    def _add_continuations(self, model, batch, cache, ctx_mask, ctx_lens, sums) -> None:
        """Tokens 2.. of every multi-token choice, run on copies of its context's cache."""
        import torch

        rows = [(b, j) for b, (_, conts) in enumerate(batch) for j, c in enumerate(conts) if len(c) > 1]
        if not rows:
            return
        feed = [batch[b][1][j][:-1] for b, j in rows]  # predicts tokens 1..n-1
        ids, cmask = self._right_pad(feed)
        src = torch.tensor([b for b, _ in rows], device=self.device)
        cache.batch_select_indices(src)  # [B, ...] -> [R, ...] copies of each row's context
        width = ids.shape[1]
        pos = torch.tensor([ctx_lens[b] for b, _ in rows], device=self.device)[:, None] + torch.arange(width, device=self.device)
        mask = torch.cat([ctx_mask[src], cmask], dim=1)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                       **{self._cache_arg: cache}).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # [R, U, V]
        for r, (b, j) in enumerate(rows):
            target = torch.tensor(batch[b][1][j][1:], device=self.device)
            sums[b][j] += float(logprobs[r, torch.arange(len(target)), target].sum())

    def _right_pad(self, seqs: list[list[int]]):
        import torch

        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    # ------------------------------------------------------------------ generation

    def generate(self, requests: Sequence[GenerateRequest], adapter: str | None = None) -> list[str]:
        # Batch only requests that share a token budget and stop strings: HF's generate applies
        # one max_new_tokens and one stop list to the whole batch.
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.max_new_tokens, tuple(sorted(r.stop))), []).append(i)
        out: list[str] = [""] * len(requests)
        with self._using(adapter) as model:
            for idx in groups.values():
                for start in range(0, len(idx), self.batch_size):
                    chunk = idx[start:start + self.batch_size]
                    texts = self._generate_batch(model, [requests[i] for i in chunk])
                    for i, text in zip(chunk, texts):
                        out[i] = text
        return out

    def _generate_batch(self, model, batch: Sequence[GenerateRequest]) -> list[str]:
        import torch

        encoded = [self.tok.encode(r.prompt) for r in batch]
        budget = max(r.max_new_tokens for r in batch)
        keep = max(1, self.max_length - budget)
        encoded = [e[-keep:] for e in encoded]  # left-truncate so prompt + new tokens fit
        width = max(len(e) for e in encoded)
        pad = self._pad_id()
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, e in enumerate(encoded):  # left padding: every prompt ends at the last column
            ids[i, width - len(e):] = torch.tensor(e, dtype=torch.long)
            mask[i, width - len(e):] = 1
        stops = sorted({s for r in batch for s in r.stop})
        gen = model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                             max_new_tokens=budget, do_sample=False, pad_token_id=pad,
                             stop_strings=stops or None, tokenizer=self.tok if stops else None)
        texts = self.tok.batch_decode(gen[:, width:], skip_special_tokens=True)
        return [_generated_text(text, r.stop) for text, r in zip(texts, batch)]

    def _pad_id(self) -> int:
        for tid in (self.tok.pad_token_id, self.tok.eos_token_id, 0):
            if tid is not None:
                return int(tid)
        return 0

    # ------------------------------------------------------------------ pretraining loss

    def token_nll(self, texts: Sequence[str], max_length: int) -> tuple[float, int]:
        """Windows per ``base.py``: consecutive ``max_length``-token windows of each text."""
        windows = [w for text in texts for w in _windows(self.tok.encode(text), max_length) if len(w) > 1]
        windows.sort(key=len, reverse=True)
        total, count = 0.0, 0
        per_batch = max(1, (self.batch_size * 256) // max_length)  # about batch_size*256 tokens
        with self._using(None) as model:
            for start in range(0, len(windows), per_batch):
                nll, n = self._window_nll(model, windows[start:start + per_batch])
                total, count = total + nll, count + n
        return total, count

    def _window_nll(self, model, windows: list[list[int]]) -> tuple[float, int]:
        import torch

        ids, mask = self._right_pad(windows)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # [B, T-1, V]
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="sum")
        return float(nll), int((labels != -100).sum())


def shared_prefix_groups(contexts: Sequence[Sequence[int]], min_shared: int) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """Indices of ``contexts`` (token ids) grouped by a common token prefix: ([(n_shared, members)], alone).

    Token ids, not strings, are compared, so a prefix is shared only when tokenising each whole
    context gave the same ids (a word straddling the boundary tokenises apart and shortens it).
    Sorted contexts are cut into runs where neighbours share >= ``min_shared`` tokens; a run stops
    when its shared prefix would fall below half of what it was. Each member keeps at least one
    token of its own (its last position gives the first choice token's logits).
    """
    order = sorted(range(len(contexts)), key=lambda i: list(contexts[i]))
    groups: list[tuple[int, list[int]]] = []
    alone: list[int] = []
    run, shared = order[:1], 0
    for prev, cur in zip(order, order[1:]):
        a, b = contexts[prev], contexts[cur]
        common = min(_common_prefix(a, b), len(a) - 1, len(b) - 1)
        narrowed = common if len(run) == 1 else min(shared, common)
        if narrowed >= min_shared and (len(run) == 1 or 2 * narrowed >= shared):
            run.append(cur)
            shared = narrowed
        else:
            _close_run(run, shared, groups, alone)
            run, shared = [cur], 0
    if run:
        _close_run(run, shared, groups, alone)
    return groups, alone


def worth_sharing(groups: list[tuple[int, list[int]]], alone: list[int], min_saved: int) -> tuple[list, list[int]]:
    """Split ``groups`` into those whose shared prefix saves >= ``min_saved`` tokens of forward
    pass ((members - 1) x shared tokens) and the rest, whose members join ``alone``."""
    kept = [(n, members) for n, members in groups if (len(members) - 1) * n >= min_saved]
    dropped = [i for n, members in groups if (len(members) - 1) * n < min_saved for i in members]
    return kept, alone + dropped


def _close_run(run: list[int], shared: int, groups: list, alone: list) -> None:
    if len(run) > 1:
        groups.append((shared, run))
    else:
        alone.extend(run)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _windows(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def _returned_cache(out):
    """The KV cache a forward pass returned: ``cache`` in transformers 5.2x+, ``past_key_values`` before."""
    cache = out.get("cache")
    return out.get("past_key_values") if cache is None else cache


def _generated_text(text: str, stops: Sequence[str]) -> str:
    """A decoded generation cut at its first stop string. One cut by ``max_new_tokens`` can end
    inside a multi-byte character, which decodes to U+FFFD: vLLM holds such bytes back, and so
    does this engine, so both give the same text."""
    return _cut(text, stops).rstrip("\ufffd")


def _cut(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string."""
    cut = len(text)
    for s in stops:
        at = text.find(s)
        if s and at != -1:
            cut = min(cut, at)
    return text[:cut]
