"""Token grids for post-training: prompt + response ids, response masks, log-probabilities,
and sampled responses (as the token ids the model drew, and as text). Shared by the reward
model, PPO and DPO.

A batch of sequences is a dict of ``ids`` (B, T) right-padded, ``prompt_lens`` and ``lengths`` (B,).
Position t of the logits predicts token t + 1, so the response mask of the (B, T - 1)
log-probabilities is True where ``prompt_len <= t + 1 < length``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..models.lm import continuation_ids
from ..tasks.instructions import STOP
from ..validate import number, positive_int, shape_of, strings, tensor, token_ids

# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def _need_same_shape(what: str, *named: tuple[str, torch.Tensor]) -> None:
    first_name, first = named[0]
    for n, t in named[1:]:
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(first.shape):
            raise ValueError(f"{what}: {n} must have the shape of {first_name} {tuple(first.shape)}, got {shape_of(t)}")


def _check_seqs(ids: torch.Tensor, lengths: torch.Tensor, prompt_lens: torch.Tensor | None = None) -> None:
    tensor(ids, "ids (B, T)", 2)
    if not isinstance(lengths, torch.Tensor) or tuple(lengths.shape) != (ids.size(0),):
        raise ValueError(f"lengths must have shape (B,) = ({ids.size(0)},) for ids {tuple(ids.shape)}, "
                         f"got {shape_of(lengths)}")
    if len(lengths) and (int(lengths.min()) < 1 or int(lengths.max()) > ids.size(1)):
        raise ValueError(f"lengths must be in [1, T={ids.size(1)}], got [{int(lengths.min())}, {int(lengths.max())}]")
    if prompt_lens is not None:
        if not isinstance(prompt_lens, torch.Tensor) or tuple(prompt_lens.shape) != (ids.size(0),):
            raise ValueError(f"prompt_lens must have shape ({ids.size(0)},), got {shape_of(prompt_lens)}")
        if (prompt_lens < 1).any() or (prompt_lens >= lengths).any():
            raise ValueError("every sequence needs 1 <= prompt_len < length (at least one response token)")


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability to 0 (in place). Policy-gradient ratios and DPO's log-ratios
    compare log-probabilities of two forward passes; dropout would make them differ by noise."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        elif isinstance(getattr(m, "dropout", None), float):
            m.dropout = 0.0
    return model


def stop_id(tokenizer) -> int:
    """The id of the stop token (:data:`course_lib.tasks.instructions.STOP`); a tokenizer that
    does not encode it as one token is a ValueError."""
    ids = tokenizer.encode(STOP)
    if len(ids) != 1:
        raise ValueError(f"the stop token {STOP!r} must be one token of the tokenizer, got ids {ids}")
    return ids[0]


@torch.no_grad()
def sample_response_ids(model, tokenizer, prompts: Sequence[str], *, temperature: float = 1.0,
                        max_new_tokens: int = 20, seed: int = 0, batch_size: int = 512) -> list[list[int]]:
    """One sampled response per prompt, as the token ids the model drew, cut after the first stop
    token (kept; a response that never stops is the ``max_new_tokens`` it produced). Prompts of
    one length are generated together with the KV cache; deterministic in ``seed``."""
    prompts = strings(prompts, "prompts")
    positive_int(max_new_tokens, "max_new_tokens")
    stop = stop_id(tokenizer)
    g = torch.Generator().manual_seed(seed)
    rows = continuation_ids(model, tokenizer, prompts, max_new_tokens, temperature=temperature, generator=g,
                            batch_size=batch_size)
    return [row[: row.index(stop) + 1] if stop in row else row for row in rows]


def sample_responses(model, tokenizer, prompts: Sequence[str], *, temperature: float = 1.0,
                     max_new_tokens: int = 20, seed: int = 0, batch_size: int = 512) -> list[str]:
    """:func:`sample_response_ids`, decoded. Text is for reading and labelling; what was sampled
    is the ids (decoding and re-encoding need not give them back with every tokenizer)."""
    ids = sample_response_ids(model, tokenizer, prompts, temperature=temperature, max_new_tokens=max_new_tokens,
                              seed=seed, batch_size=batch_size)
    return [tokenizer.decode(row) for row in ids]


# ---------------------------------------------------------------------------------------------
# Encoding, response masks, log-probabilities
# ---------------------------------------------------------------------------------------------

def encode_sequences(tokenizer, prompts: Sequence[str], responses: Sequence[str], block_size: int,
                     pad_id: int, width: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded ``ids`` (B, T) of prompt + response with ``prompt_lens`` and ``lengths`` (B,).
    T is the longest sequence (or ``width``); longer than ``block_size`` is an error."""
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"need as many responses as prompts (at least one), got {len(prompts)} and {len(responses)}")
    return pack_sequences([tokenizer.encode(p) for p in prompts], [tokenizer.encode(r) for r in responses],
                          block_size, pad_id, width)


def pack_sequences(p_ids: Sequence[Sequence[int]], r_ids: Sequence[Sequence[int]], block_size: int, pad_id: int,
                   width: int | None = None) -> dict[str, torch.Tensor]:
    """:func:`encode_sequences` from token ids: prompt ids and response ids, one list of each per
    sequence (e.g. the ids a policy sampled, :func:`sample_response_ids`)."""
    if len(p_ids) != len(r_ids) or not p_ids:
        raise ValueError(f"need as many responses as prompts (at least one), got {len(p_ids)} and {len(r_ids)}")
    p_ids, r_ids = [list(p) for p in p_ids], [list(r) for r in r_ids]
    if any(len(r) == 0 for r in r_ids):
        raise ValueError("every response needs at least one token")
    lens = [len(p) + len(r) for p, r in zip(p_ids, r_ids, strict=True)]
    T = max(lens) if width is None else width
    if max(lens) > min(T, block_size):
        raise ValueError(f"a sequence has {max(lens)} tokens, more than the context block_size={block_size}"
                         + (f" or width={width}" if width is not None else ""))
    ids = torch.full((len(p_ids), T), pad_id, dtype=torch.long)
    for b, (p, r) in enumerate(zip(p_ids, r_ids, strict=True)):
        ids[b, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
    return {"ids": ids, "prompt_lens": torch.tensor([len(p) for p in p_ids]), "lengths": torch.tensor(lens)}


def response_mask(prompt_lens: torch.Tensor, lengths: torch.Tensor, T: int) -> torch.Tensor:
    """Bool (B, T - 1): column t is a response token, i.e. prompt_len <= t + 1 < length."""
    if tuple(prompt_lens.shape) != tuple(lengths.shape) or prompt_lens.dim() != 1:
        raise ValueError(f"prompt_lens and lengths must both be (B,), got {shape_of(prompt_lens)} and "
                         f"{shape_of(lengths)}")
    nxt = torch.arange(1, T, device=lengths.device)[None, :]
    return (nxt >= prompt_lens[:, None]) & (nxt < lengths[:, None])


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log pi(x_{t+1} | x_<=t) for every position: (B, T - 1) from logits (B, T, V) on ids (B, T).
    With ``temperature`` T the distribution is softmax(logits / T), the one sampling at T draws from."""
    if not isinstance(logits, torch.Tensor) or not isinstance(ids, torch.Tensor) or logits.dim() != 3 \
            or ids.dim() != 2 or logits.shape[:2] != ids.shape:
        raise ValueError(f"expected logits (B, T, V) on ids (B, T), got {shape_of(logits)} and {shape_of(ids)}")
    token_ids(ids, logits.size(-1), "ids")
    number(temperature, "temperature", 0.0, low_open=True)
    logits = logits[:, :-1].float()
    logp = torch.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)


def policy_logprobs(model, seqs: dict[str, torch.Tensor], temperature: float = 1.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token log-probabilities (B, T - 1), response mask (B, T - 1)) of ``seqs`` under
    ``model`` sampled at ``temperature``."""
    ids, lengths, prompt_lens = seqs["ids"], seqs["lengths"], seqs["prompt_lens"]
    _check_seqs(ids, lengths, prompt_lens)
    T = int(lengths.max())
    ids = ids[:, :T]
    return token_logprobs(model(ids), ids, temperature), response_mask(prompt_lens, lengths, T)


def sequence_logprob(model, seqs: dict[str, torch.Tensor]) -> torch.Tensor:
    """log pi(y | x) = sum over response tokens of log pi(y_t | x, y_<t): (B,)."""
    logp, mask = policy_logprobs(model, seqs)
    return (logp * mask).sum(-1)
