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
* Memorisation (notebook 06): :func:`probe_windows` cuts seeded (prefix, true continuation)
  pairs out of a token sequence, :func:`verbatim_lengths` counts how far a model's greedy
  continuation of each prefix stays verbatim, in the spirit of the extraction tests of Carlini et
  al., 2021 ("Extracting Training Data from Large Language Models") and 2023 ("Quantifying
  Memorization Across Neural Language Models").
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..device import is_compiling
from ..tokenizers import IGNORE
from ..validate import InputTypeError, non_negative_int, positive_int, sampling, strings, token_ids
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


# ---------------------------------------------------------------------------------------------
# Memorisation: does a model continue a text verbatim?
# ---------------------------------------------------------------------------------------------

def common_prefix_length(a: Sequence, b: Sequence) -> int:
    """How many leading items ``a`` and ``b`` share (characters of two strings, ids of two lists)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def probe_windows(ids: torch.Tensor, n: int, prefix_len: int, max_len: int, *, seed: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` windows of the 1-D token sequence ``ids`` at distinct start positions drawn from
    ``seed``, in text order: the prefixes (n, prefix_len) and the true continuations (n, max_len)
    that follow them."""
    token_ids(ids, None, "ids", dim=1)
    positive_int(n, "n")
    positive_int(prefix_len, "prefix_len")
    positive_int(max_len, "max_len")
    non_negative_int(seed, "seed")
    span = prefix_len + max_len
    room = len(ids) - span + 1
    if room < n:
        raise ValueError(f"ids holds {len(ids)} tokens: room for {max(room, 0)} distinct windows of "
                         f"prefix_len + max_len = {span} tokens, but n={n} were asked for")
    starts = torch.randperm(room, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    windows = ids[starts[:, None] + torch.arange(span)]
    return windows[:, :prefix_len], windows[:, prefix_len:]


@torch.no_grad()
def verbatim_lengths(model, prefixes: torch.Tensor, truths: torch.Tensor, *,
                     decode: Callable[[list[int]], str] | None = None, batch_size: int = 256) -> list[int]:
    """How long the greedy continuation of each prefix stays verbatim: continue ``prefixes[i]``
    (B, p) by ``truths.size(1)`` tokens and count the leading tokens equal to ``truths[i]`` (B, m),
    so each length lies in [0, m]. With ``decode`` (token ids to text) the count is in characters
    of the decoded continuation and truth instead, for tokenizers whose tokens span several."""
    config = getattr(model, "config", None)
    block = getattr(config, "block_size", None)
    if not isinstance(model, torch.nn.Module) or not isinstance(block, int):
        raise InputTypeError(f"model must be a language model (an nn.Module with config.block_size), "
                             f"got {type(model).__name__}")
    vocab = getattr(config, "vocab_size", None)
    token_ids(prefixes, vocab, "prefixes", dim=2)
    token_ids(truths, vocab, "truths", dim=2)
    if prefixes.size(0) != truths.size(0):
        raise ValueError(f"prefixes and truths must have one row per probe each, got {prefixes.size(0)} "
                         f"prefixes and {truths.size(0)} truths")
    p, m = prefixes.size(1), truths.size(1)
    if p + m > block:
        raise ValueError(f"prefix ({p} tokens) + continuation ({m} tokens) exceeds the context "
                         f"block_size={block}")
    if decode is not None and not callable(decode):
        raise InputTypeError(f"decode must be a function from token ids to text or None, got {type(decode).__name__}")
    positive_int(batch_size, "batch_size")
    device = next(model.parameters()).device
    cache = hasattr(model, "new_kv_caches")
    out: list[int] = []
    for s in range(0, prefixes.size(0), batch_size):
        chunk = prefixes[s: s + batch_size].to(device)
        gen = generate(model, chunk, m, temperature=0, use_cache=cache)[:, p:].cpu().tolist()
        for row, truth in zip(gen, truths[s: s + batch_size].tolist(), strict=True):
            out.append(common_prefix_length(decode(row), decode(truth)) if decode else common_prefix_length(row, truth))
    return out
