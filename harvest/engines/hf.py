"""Hugging Face transformers engine: CPU or GPU, the default.

Multiple choice is where it beats lm-evaluation-harness: lm-eval runs context + choice once per
choice; here each request's context runs once (a batch of right-padded contexts, keeping the
KV cache and only the logits at each context's last position), and the choices then run on
copies of that cache, so an MMLU item with four one-token answers costs one context pass
instead of four. Across items, a common token prefix (an MMLU subject's description and fixed
shots) runs once per group of items (:mod:`harvest.engines.prefix`), and each item runs only its
own remaining tokens on a copy of that prefix's cache. Where every choice is one token and
prompts share no long prefix (shots drawn per item), lm-eval also runs each context once; there
the gain is work skipped: the LM head and log-softmax except at each context's last position,
most of the last layer except there too (:mod:`harvest.engines.lastlayer`), the attention mask
(right padding is harmless under causal attention), and, on CPU, the page faults of
re-allocating activations (:func:`~harvest.engines.loading.keep_freed_memory`). Tokenisation, truncation and summation
follow ``harvest/engines/base.py`` (lm-eval's rules), so the numbers agree with lm-eval's to
float rounding.

Loading (:func:`~harvest.engines.loading.load_model`) uses ``use_safetensors=True`` and
``trust_remote_code`` only when the ModelRef says so; anything that will not load is a one-line
:class:`~emergence.errors.CheckpointError`.

Size: one cohesive thing, the transformers engine (shared-prefix scoring, batched generation);
loading is ``harvest.engines.loading``.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from emergence.errors import CheckpointError, SpecError, one_line
from harvest.engines import engine_version
from harvest.engines.base import ChoiceRequest, ChoiceScore, GenerateRequest, ModelRef
from harvest.engines.lastlayer import last_layer_rowwise_modules, rowwise_only_at
from harvest.engines.loading import encode_choices, keep_freed_memory, load_model
from harvest.engines.prefix import MIN_SAVED_TOKENS, MIN_SHARED_TOKENS, shared_prefix_groups, worth_sharing


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
    # Requests the harvest hands over per call (harvest.evaluate.requests_per_call): 64, a
    # progress step; each call runs in batches of batch_size. Prefix groups form within a call,
    # so this also fixes which items share a prefix (the numbers depend on it in float rounding).
    requests_per_call: int | None = 64

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
                raise CheckpointError(f"adapter {adapter}: cannot load ({one_line(err)})") from None
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

    def _last_layer_at(self, rows, cols):
        """The last layer's row-wise modules run only at positions ``(rows[i], cols[i])``
        (:func:`~harvest.engines.lastlayer.rowwise_only_at`)."""
        return rowwise_only_at(self._last_rowwise, rows, cols)

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
