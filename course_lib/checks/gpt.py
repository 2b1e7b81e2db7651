"""Checkers for notebook 06 (GPT pretraining): the shifted next-token loss, one BPE merge step,
top-k / top-p filtering, the parameter-count formula and one KV-cache decoding step."""
from __future__ import annotations

import functools
import math

import torch

from ..measure import count_parameters
from ..models import gpt, lm
from ..models.gpt import CONFIGS, GPT, GPTConfig
from ..tokenizers import merge as reference_merge
from ._core import CheckFailed, checker, expect, expect_close, expect_count, expect_grads, expect_items, expect_tensor


@functools.lru_cache(maxsize=64)
def _meta_count(config: GPTConfig) -> int:
    """Parameters of our GPT built on the meta device (no memory, no init): GPT-3 fits a laptop."""
    with torch.device("meta"):
        return count_parameters(GPT(config))


@checker("next_token_loss", hint="the logits at position t predict the token at t + 1: compare "
         "logits[:, :-1] with tokens[:, 1:], and average over every predicted token.")
def next_token_loss(student) -> str:

    g = torch.Generator().manual_seed(6)
    for B, n, V in ((2, 5, 7), (3, 9, 11), (1, 2, 4)):
        logits = torch.randn(B, n, V, generator=g)
        tokens = torch.randint(0, V, (B, n), generator=g)
        out = student(logits, tokens)
        expect_tensor(out, f"the loss for logits {(B, n, V)}", shape=(), floating=True, device=logits.device)
        expect_close(out, gpt.next_token_loss(logits, tokens), f"the loss for logits {(B, n, V)}", atol=1e-5)
    logits, tokens = torch.randn(2, 6, 9, generator=g) * 300, torch.randint(0, 9, (2, 6), generator=g)
    expect_close(student(logits, tokens), gpt.next_token_loss(logits, tokens), "the loss for large logits (~1000)",
                 atol=1e-3, hint="F.cross_entropy (or log_softmax) is stable; log(softmax(x)) gives log(0) = -inf")
    logits = torch.randn(2, 5, 6, generator=g).requires_grad_()
    tokens = torch.randint(0, 6, (2, 5), generator=g)
    expect_grads(student(logits, tokens), {"logits": logits}, lambda lg: gpt.next_token_loss(lg, tokens), "the loss")
    return "logits at t are scored against the token at t + 1"


@checker("bpe_merge", hint="scan left to right; when ids[i], ids[i+1] equal the pair, emit the new id "
         "and skip both, otherwise emit ids[i] and move on by one.")
def bpe_merge(student) -> str:

    cases = [([1, 2, 3, 1, 2], (1, 2), 99), ([6, 6, 6, 6, 6], (6, 6), 7), ([5, 6, 6, 6], (6, 6), 9),
             ([4, 2], (4, 2), 256), ([1, 3, 1], (1, 2), 256), ([], (1, 2), 256), ([7], (7, 7), 300),
             ([1, 2, 2, 1, 2, 1], (2, 1), 300)]
    # ids with several digits, where the text "1 2" also occurs across two ids (11, 2) or (1, 21):
    # a merge by string replacement fails them
    cases += [([11, 2, 3], (1, 2), 99), ([1, 21, 1, 2], (1, 2), 300), ([12, 1, 2, 12], (1, 2), 256),
              ([256, 257, 256, 257, 2], (256, 257), 1000), ([3, 3, 3], (3, 3), 33)]
    for ids, pair, new in cases:
        out = student(ids, pair, new)
        want = reference_merge(ids, pair, new)
        expect(type(out) is list, f"merge should return a new list of ids, got a {type(out).__name__}")
        expect(all(type(t) is int for t in out),
               f"merge({ids}, {pair}, {new}) returned {out!r}: every id should be a Python int")
        expect(out == want, f"merge({ids}, {pair}, {new}) returned {out}, expected {want}")
    return "non-overlapping, left to right"


@checker("top_k_filter", hint="find the k-th largest logit of each row (torch.topk) and set every "
         "logit below it to -inf; keep the others unchanged.")
def top_k_filter(student) -> str:

    g = torch.Generator().manual_seed(66)
    for shape, k in (((2, 10), 3), ((4, 50), 1), ((3, 8), 8), ((1, 12), 4), ((5, 7), 2)):
        logits = torch.randn(*shape, generator=g) * (1 + torch.arange(shape[0])[:, None])  # rows of different sizes
        out = student(logits, k)
        expected = lm.top_k_filter(logits, k)
        expect_tensor(out, f"top_k_filter of {shape} logits", shape=shape, dtype=logits.dtype, device=logits.device)
        kept = torch.isfinite(out)
        expect(torch.equal(kept, torch.isfinite(expected)),
               f"with k={k} each row should keep exactly its {k} largest logits; yours keeps "
               f"{kept.sum(-1).tolist()} per row (filtered ones must be -inf)")
        expect(torch.all(out[~kept] == float("-inf")), "filtered logits must be -inf (so softmax gives them 0)")
        expect_close(out[kept], expected[kept], "the kept logits", hint="keep them unchanged (no softmax here)")
    logits = torch.randn(3, 9, generator=g).requires_grad_()
    expect_grads(student(logits, 3), {"logits": logits}, lambda lg: lm.top_k_filter(lg, 3), "the kept logits",
                 transform=_finite)
    return "the k most likely tokens survive"


def _finite(t: torch.Tensor) -> torch.Tensor:
    """-inf -> 0, so that the kept logits' gradient can be compared (masked_fill passes the gradient)."""
    return t.masked_fill(~torch.isfinite(t.detach()), 0.0)


@checker("top_p_filter", hint="sort descending, take the cumulative softmax probabilities, and drop a "
         "token when the mass ranked above it already reaches p; the top token always stays.")
def top_p_filter(student) -> str:

    g = torch.Generator().manual_seed(67)
    logits = torch.randn(4, 12, generator=g) * 2
    for p, scale in ((0.1, 1), (0.5, 1), (0.9, 1), (1.0, 1), (0.9, 300)):  # 300: exp(logits) overflows
        logits = logits * scale
        out = student(logits, p)
        expected = lm.top_p_filter(logits, p)
        expect_tensor(out, f"top_p_filter(p={p})", shape=tuple(logits.shape), dtype=logits.dtype,
                      device=logits.device)
        expect(torch.equal(torch.isfinite(out), torch.isfinite(expected)),
               f"with p={p} rows should keep {torch.isfinite(expected).sum(-1).tolist()} tokens, "
               f"yours keep {torch.isfinite(out).sum(-1).tolist()}")
        kept = torch.isfinite(expected)
        expect_close(out[kept], expected[kept], "the kept logits")
    return "the smallest nucleus with mass >= p survives"


@checker("param_count", hint="embeddings V d + n_ctx d; per block: attention 4 d^2 + 4 d, MLP 8 d^2 + 5 d, "
         "two LayerNorms 4 d; the final LayerNorm 2 d; the tied LM head adds nothing.")
def param_count(student) -> str:

    cases = [GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128),
             GPTConfig(vocab_size=1000, block_size=17, n_layer=3, n_head=2, n_embd=24),
             CONFIGS["gpt2"], CONFIGS["gpt3"]]
    for cfg in cases:
        got = expect_count(student(cfg), f"param_count for {cfg}")
        want = _meta_count(cfg)
        if got != want:
            raise CheckFailed(f"for {cfg} you count {got:,} parameters, the model has {want:,} "
                              f"(off by {got - want:+,}; d = {cfg.n_embd}, V d = {cfg.vocab_size * cfg.n_embd:,}, "
                              f"n_ctx d = {cfg.block_size * cfg.n_embd:,})")
    return f"GPT-2 small: {_meta_count(CONFIGS['gpt2']):,}"


@checker("kv_attention_step", hint="concatenate the cache and the new key/value along the sequence "
         "axis (dim=2), then softmax(q K^T / sqrt(d)) V; return (y, K, V).")
def kv_attention_step(student) -> str:

    g = torch.Generator().manual_seed(606)
    B, h, d = 2, 3, 8
    for past, scale in ((0, 1), (1, 1), (5, 1), (4, 12)):  # 12: scores in the hundreds, exp() overflows
        q, k_new, v_new = (torch.randn(B, h, 1, d, generator=g) * scale for _ in range(3))
        kc = torch.randn(B, h, past, d, generator=g) * scale if past else None
        vc = torch.randn(B, h, past, d, generator=g) if past else None
        y, K, V = expect_items(student(q, k_new, v_new, kc, vc), 3, "kv_attention_step")
        y_ref, K_ref, V_ref = gpt.kv_attention_step(q, k_new, v_new, kc, vc)
        for name, got, want in (("y", y, y_ref), ("K", K, K_ref), ("V", V, V_ref)):
            expect_tensor(got, f"{name} with {past} cached tokens", dtype=want.dtype, device=want.device)
        expect_close(K, K_ref, f"K with {past} cached tokens", hint="K = cat([k_cache, k_new], dim=2)")
        expect_close(V, V_ref, f"V with {past} cached tokens")
        expect_close(y, y_ref, f"y with {past} cached tokens" + (" and large scores" if scale > 1 else ""),
                     atol=1e-5 if scale == 1 else 1e-3,
                     hint=f"scale the scores by 1/sqrt(d) = {1 / math.sqrt(d):.3f}; torch.softmax is stable, "
                          f"exp() of a large score is inf")
    leaves = {k: torch.randn(1, 2, n, 4, generator=g).requires_grad_()
              for k, n in (("q", 1), ("k_new", 1), ("v_new", 1), ("k_cache", 3), ("v_cache", 3))}
    y, _, _ = expect_items(student(*leaves.values()), 3, "kv_attention_step")
    expect_grads(y, leaves, lambda *t: gpt.kv_attention_step(*t)[0], "y")
    return "one new query attends to all cached keys"
