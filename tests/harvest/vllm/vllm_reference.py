"""Reference numbers from plain transformers, and the shared items of the vLLM tests.

The reference follows ``harvest/engines/base.py`` independently of both engines: lm-eval's
context/continuation split, the context cut on the left by the longest choice's overflow, one
forward pass per choice over ``ctx + cont[:-1]``.
"""

from __future__ import annotations

import torch

from harvest.engines.base import ChoiceRequest

TOL = 2e-4  # nats per choice (summed over its tokens), float32 on both sides; measured ~1e-5
MAX_LENGTH = 256  # the tiny model's max_position_embeddings: the long item below is cut

REQUESTS = [
    ChoiceRequest("Question: what colour is the sky? Answer:", (" blue", " water", " five", " green tree")),
    ChoiceRequest("the quick brown ", ("fox", "dog jumps", "cat")),  # trailing space moves to the choice
    ChoiceRequest("yes no true false A B C D", (" the", " A", " what", " is")),  # one token each: one prompt
    ChoiceRequest("Question: what do cows drink? Answer:", (" water", " blue.", " the lazy dog.")),
    ChoiceRequest("the cat sat on the mat. " * 40 + "Question: what do cows drink? Answer:",
                  (" water", " five", " a bird sang")),  # 454 tokens: the context is cut on the left
    ChoiceRequest("a bird sang in the", (" tall tree.", " mat.")),
]


def lm_eval_split(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole, ctx = tok.encode(context + continuation), tok.encode(context)
    return ctx, whole[len(ctx):]


def reference_scores(folder, requests, max_length=MAX_LENGTH) -> list[list[float]]:
    """One forward per choice over ``ctx + cont[:-1]`` (context cut as in base.py)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    for req in requests:
        pairs = [lm_eval_split(tok, req.context, c) for c in req.continuations]
        longest = max(len(c) for _, c in pairs)
        cut = max(0, len(pairs[0][0]) + longest - 1 - max_length)
        row = []
        for ctx, cont in pairs:
            seq = ctx[cut:] + cont
            with torch.no_grad():
                logits = model(torch.tensor([seq[:-1]])).logits[0].float()  # [T, V]
            logp = torch.log_softmax(logits, -1)[len(seq) - 1 - len(cont):]  # rows predicting cont
            row.append(float(logp[torch.arange(len(cont)), torch.tensor(cont)].sum()))
        out.append(row)
    return out


def reference_generate(folder, prompt: str, max_new_tokens: int, stop: tuple[str, ...]) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    cuts = [text.find(s) for s in stop if s in text]
    return text[:min(cuts)] if cuts else text


def assert_same_scores(got, want, label: str, tol=TOL) -> None:
    """Every choice within ``tol`` nats, every prediction identical; prints the largest gap."""
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        assert len(g.logprobs) == len(w)
        gap = max(abs(a - b) for a, b in zip(g.logprobs, w))
        assert gap < tol, (g.logprobs, w)
        assert g.logprobs.index(max(g.logprobs)) == w.index(max(w))  # same prediction
        worst = max(worst, gap)
    print(f"\n{label}: max |log p(vLLM) - log p(ref)| = {worst:.1e} nats over {sum(len(w) for w in want)} choices")


