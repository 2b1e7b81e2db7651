"""What every language model of the course shares: sampling, generation and batched
continuations, and the loss on labelled positions.

* Sampling: temperature (notebook 01's :func:`course_lib.models.rnn.sample_with_temperature`),
  top-k and top-p (nucleus, Holtzman et al., 2020, "The Curious Case of Neural Text
  Degeneration") filters of the logits.
* :func:`generate`: continue token ids with any model that maps ids (B, n) to logits (B, n, V)
  and has ``config.block_size``; with a KV cache when the model offers ``new_kv_caches``.
* :func:`continuation_ids` / :func:`continuations`: many prompts at once, in groups of equal
  length (no padding), as token ids or as text.
* :func:`masked_lm_loss`: mean cross-entropy over the positions whose label is not ``IGNORE``
  (SFT's response-only loss, captions, visual question answering).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..device import is_compiling
from ..tokenizers import IGNORE
from ..validate import non_negative_int, positive_int, sampling, strings, token_ids
from .rnn import sample_with_temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row, set the rest to -inf (ties at the k-th value kept)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k must be a positive integer, got {k!r}")
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al., 2020, "The Curious Case of Neural Text Degeneration"):
    keep the smallest set of most likely tokens whose probabilities sum to at least p. ``p = 1``
    keeps every token (the logits unchanged: a float cumulative sum can reach 1 before the tail)."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p!r}")
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    before = probs.cumsum(-1) - probs  # probability mass of the tokens ranked above
    drop_sorted = before >= p  # the most likely token always stays (before = 0 < p)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B, 1) from last-position logits (B, V). ``temperature=0`` is greedy."""
    sampling(temperature, top_k, top_p)
    if logits.dim() != 2:
        raise ValueError(f"expected logits of shape (B, V), got {tuple(logits.shape)}")
    if temperature == 0 or (top_k is None and top_p is None):
        return sample_with_temperature(logits, temperature, generator).unsqueeze(-1)
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    logits = logits.float() / temperature  # temperature first: top-p's nucleus depends on it
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return sample_with_temperature(logits, 1.0, generator).unsqueeze(-1)


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
             slide: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue ``idx`` (B, n) by ``max_new_tokens`` tokens; returns (B, n + max_new_tokens).

    ``temperature=0`` is greedy decoding. With ``use_cache`` each step feeds only the newest
    token through the model and reuses the cached keys/values (same output as without it).
    A sequence longer than the context is an error unless ``slide=True``, which conditions on
    the last ``block_size`` tokens (once the window is full the cache is rebuilt every step).
    """
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        raise ValueError(f"idx must be (B, n) token ids, got shape {tuple(getattr(idx, 'shape', ()))}")
    non_negative_int(max_new_tokens, "max_new_tokens")
    sampling(temperature, top_k, top_p)  # before the first forward pass, not after it
    bs = model.config.block_size
    if not slide and idx.size(1) + max_new_tokens > bs:
        raise ValueError(f"prompt ({idx.size(1)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                         f"context length block_size={bs}; pass slide=True to condition on the last "
                         f"{bs} tokens")
    was_training = model.training
    model.eval()
    caches = None
    try:
        for _ in range(max_new_tokens):
            if use_cache and caches is not None and len(caches[0]) < bs:
                logits = model(idx[:, -1:], kv_caches=caches)
            else:
                window = idx[:, -bs:]
                caches = model.new_kv_caches() if use_cache else None
                logits = model(window, kv_caches=caches)
            nxt = sample_next(logits[:, -1], temperature=temperature, top_k=top_k, top_p=top_p,
                              generator=generator)
            idx = torch.cat([idx, nxt.to(idx.device)], dim=1)
    finally:
        model.train(was_training)
    return idx


def length_groups(encoded: Sequence[Sequence[int]], batch_size: int):
    """Yield ``(n, indices)``: chunks of at most ``batch_size`` prompts that all have ``n`` tokens,
    shortest first, so each chunk is a rectangle and decodes without padding."""
    positive_int(batch_size, "batch_size")
    by_len: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_len.setdefault(len(ids), []).append(i)
    for n, idxs in sorted(by_len.items()):
        for s in range(0, len(idxs), batch_size):
            yield n, idxs[s: s + batch_size]


@torch.no_grad()
def continuation_ids(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, *, temperature: float = 0.0,
                     generator: torch.Generator | None = None, batch_size: int = 256) -> list[list[int]]:
    """The token ids each prompt continues with (``max_new_tokens`` of them, fewer if the context
    ends first), generated in length groups with the KV cache; ``temperature=0`` is greedy."""
    prompts = strings(prompts, "prompts")
    positive_int(max_new_tokens, "max_new_tokens")
    positive_int(batch_size, "batch_size")
    sampling(temperature)
    device = next(model.parameters()).device
    encoded = [tokenizer.encode(p) for p in prompts]
    block = model.config.block_size
    out: list[list[int]] = [[] for _ in prompts]
    for n, chunk in length_groups(encoded, batch_size):
        new = min(max_new_tokens, block - n)
        if new <= 0:
            raise ValueError(f"a prompt of {n} tokens leaves no room in the context block_size={block}")
        idx = torch.tensor([encoded[i] for i in chunk], device=device)
        gen = generate(model, idx, new, temperature=temperature, generator=generator)[:, n:].cpu()
        for i, row in zip(chunk, gen.tolist(), strict=True):
            out[i] = row
    return out


def continuations(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, *, temperature: float = 0.0,
                  generator: torch.Generator | None = None, batch_size: int = 256) -> list[str]:
    """The text each prompt continues with: :func:`continuation_ids`, decoded."""
    ids = continuation_ids(model, tokenizer, prompts, max_new_tokens, temperature=temperature, generator=generator,
                           batch_size=batch_size)
    return [tokenizer.decode(row) for row in ids]


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions whose label is not ``IGNORE``."""
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(f"logits must be (B, T, V) matching labels (B, T) = {tuple(labels.shape)}, "
                         f"got {tuple(logits.shape)}")
    token_ids(labels, None, "labels", non_empty=False)  # the dtype; the values are checked below
    if not is_compiling():  # one host sync for both checks
        V = logits.size(-1)
        bad = ((labels < 0) & (labels != IGNORE)) | (labels >= V)
        some, wrong = torch.stack([(labels != IGNORE).any(), bad.any()]).tolist()
        if wrong:
            raise ValueError(f"labels must be token ids in [0, {V}) or IGNORE ({IGNORE}), got values in "
                             f"[{int(labels[labels != IGNORE].min())}, {int(labels.max())}]")
        if not some:
            raise ValueError("every label is IGNORE: nothing to learn from in this batch")
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE)
