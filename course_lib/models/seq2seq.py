"""Encoder-decoder (seq2seq) RNNs, with and without Bahdanau's additive attention.

Notation (lecture; Bahdanau, Cho & Bengio, 2015, "Neural Machine Translation by Jointly
Learning to Align and Translate"): the encoder maps the source x_1..x_{T_x} to *annotations*
h_1..h_{T_x}; here a bidirectional GRU, h_j = [->h_j ; <-h_j]. The decoder state is s_i and the
output y_i. At step i the decoder scores every annotation against its previous state,

    e_ij = v^T tanh(W s_{i-1} + U h_j)            (additive score, "alignment model" a)
    alpha_ij = exp(e_ij) / sum_k exp(e_ik)        (softmax over source positions j)
    c_i = sum_j alpha_ij h_j                      (context vector: a weighted average)

then s_i = GRU([E y_{i-1}; c_i], s_{i-1}) and p(y_i | y_<i, x) = softmax(W_o [s_i; c_i; E y_{i-1}]).
Padding positions j > T_x of a shorter sentence in a batch get e_ij = -inf, so alpha_ij = 0
there and the weights sum to one over the real positions.

Without attention (Sutskever et al., 2014; Cho et al., 2014) the same decoder receives one
*fixed* context c = [->h_{T_x} ; <-h_1] at every step: the whole sentence squeezed into one
vector. ``Seq2Seq(attention=False)`` is exactly that model, so the two differ only in c_i.

The initial decoder state is s_0 = tanh(W_s <-h_1), as in the paper. Masks follow the course's
one convention (stated in notebook 03 and :mod:`course_lib.models.attention`): True = may be
attended. ``src_valid`` (B, T_x) is True at the real source tokens and False at padding. (PyTorch's
``nn.MultiheadAttention`` means the opposite by its ``key_padding_mask``; pass it ``~src_valid``.)
Every attention read returns the context first: ``(c, alpha)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..device import is_compiling
from ..validate import positive_int, probability, shape_of, token_ids


def additive_score(s_prev: torch.Tensor, H: torch.Tensor, W: torch.Tensor, U: torch.Tensor,
                   v: torch.Tensor) -> torch.Tensor:
    """e_ij = v^T tanh(W s_{i-1} + U h_j) for every source position j, batched.

    s_prev (B, d_s): decoder state s_{i-1}; H (B, T_x, d_h): annotations h_j;
    W (d_a, d_s), U (d_a, d_h), v (d_a,). Returns e (B, T_x).
    """
    if s_prev.dim() != 2:
        raise ValueError(f"s_prev must have shape (B, d_s), got {shape_of(s_prev)}")
    if H.dim() != 3 or H.size(0) != s_prev.size(0):
        raise ValueError(f"H must have shape (B={s_prev.size(0)}, T_x, d_h), got {shape_of(H)}")
    if H.size(1) == 0:
        raise ValueError(f"H has no source positions (T_x = 0), shape {shape_of(H)}: an empty sequence")
    d_s, d_h = s_prev.size(1), H.size(2)
    if W.dim() != 2 or W.size(1) != d_s:
        raise ValueError(f"W must have shape (d_a, d_s={d_s}), got {shape_of(W)}")
    d_a = W.size(0)
    if shape_of(U) != (d_a, d_h):
        raise ValueError(f"U must have shape (d_a={d_a}, d_h={d_h}), got {shape_of(U)}")
    if shape_of(v) != (d_a,):
        raise ValueError(f"v must have shape (d_a={d_a},), got {shape_of(v)}")
    return torch.tanh((s_prev @ W.T)[:, None, :] + H @ U.T) @ v


def valid_mask_from_lengths(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(B, T) bool, True at the real positions j < length (may be attended), False at padding."""
    if lengths.dim() != 1:
        raise ValueError(f"lengths must have shape (B,), got {shape_of(lengths)}")
    if lengths.numel() and int(lengths.min()) < 1:
        raise ValueError(f"every sequence needs length >= 1, got lengths {lengths.tolist()}")
    T = int(lengths.max()) if max_len is None else max_len
    if lengths.numel() and int(lengths.max()) > T:
        raise ValueError(f"a length {int(lengths.max())} exceeds max_len={T}")
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def masked_softmax(e: torch.Tensor, src_valid: torch.Tensor | None = None, *,
                   check_rows: bool = True) -> torch.Tensor:
    """alpha_ij = softmax_j(e_ij) over the real positions; exactly 0 where ``src_valid`` is False.
    A row with no real position is a ValueError; ``check_rows=False`` skips that check (it reads the
    mask on the host, a device sync) for a mask known to be valid, e.g. the decoder's at every step."""
    if e.dim() != 2:
        raise ValueError(f"scores e must have shape (B, T_x), got {shape_of(e)}")
    if src_valid is None:
        return torch.softmax(e, dim=-1)
    if not isinstance(src_valid, torch.Tensor) or src_valid.dtype != torch.bool or shape_of(src_valid) != shape_of(e):
        got = f"{src_valid.dtype} {shape_of(src_valid)}" if isinstance(src_valid, torch.Tensor) else \
            type(src_valid).__name__
        raise ValueError(f"src_valid must be a bool tensor of shape {shape_of(e)} (True = real token, may be "
                         f"attended; False = padding), got {got}")
    if check_rows and not is_compiling() and bool((~src_valid).all(dim=-1).any()):
        raise ValueError("a row of src_valid is all False (all padding): an empty source sequence has nothing "
                         "to attend to (True marks the real tokens)")
    return torch.softmax(e.masked_fill(~src_valid, float("-inf")), dim=-1)


def context_vector(alpha: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """c_i = sum_j alpha_ij h_j: alpha (B, T_x), H (B, T_x, d_h) -> c (B, d_h)."""
    if alpha.dim() != 2 or H.dim() != 3 or shape_of(alpha) != shape_of(H)[:2]:
        raise ValueError(f"alpha must be (B, T_x) and H (B, T_x, d_h) with the same B, T_x; "
                         f"got {shape_of(alpha)} and {shape_of(H)}")
    return torch.bmm(alpha.unsqueeze(1), H).squeeze(1)


def attention_context(e: torch.Tensor, H: torch.Tensor, src_valid: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_i = masked softmax_j(e_ij) and c_i = sum_j alpha_ij h_j, returned as (c, alpha): the
    context first, like every attention read of the course."""
    alpha = masked_softmax(e, src_valid)
    return context_vector(alpha, H), alpha


def bahdanau_attention(s_prev: torch.Tensor, H: torch.Tensor, W: torch.Tensor, U: torch.Tensor,
                       v: torch.Tensor, src_valid: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """One attention read: (c_i (B, d_h), alpha_i (B, T_x)) from s_{i-1} and the annotations."""
    return attention_context(additive_score(s_prev, H, W, U, v), H, src_valid)


class AdditiveAttention(nn.Module):
    """Bahdanau's alignment model with parameters W (d_a, d_s), U (d_a, d_h), v (d_a,).

    ``keys(H)`` precomputes U h_j once per sentence (it does not depend on i), as the paper notes;
    pass it back as ``keys=`` to each decoder step.
    """

    def __init__(self, d_s: int, d_h: int, d_a: int):
        super().__init__()
        if min(d_s, d_h, d_a) <= 0:
            raise ValueError(f"d_s, d_h, d_a must be positive, got {d_s}, {d_h}, {d_a}")
        self.W = nn.Parameter(torch.empty(d_a, d_s))
        self.U = nn.Parameter(torch.empty(d_a, d_h))
        self.v = nn.Parameter(torch.empty(d_a))
        nn.init.uniform_(self.W, -1 / math.sqrt(d_s), 1 / math.sqrt(d_s))
        nn.init.uniform_(self.U, -1 / math.sqrt(d_h), 1 / math.sqrt(d_h))
        nn.init.uniform_(self.v, -1 / math.sqrt(d_a), 1 / math.sqrt(d_a))

    def keys(self, H: torch.Tensor) -> torch.Tensor:
        """U h_j for all j: (B, T_x, d_a)."""
        return H @ self.U.T

    def forward(self, s_prev: torch.Tensor, H: torch.Tensor, src_valid: torch.Tensor | None = None,
                keys: torch.Tensor | None = None, check_rows: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_i, alpha_i); ``src_valid`` (B, T_x) True at real source tokens."""
        if keys is None:
            return bahdanau_attention(s_prev, H, self.W, self.U, self.v, src_valid)
        if s_prev.dim() != 2 or shape_of(keys) != (*shape_of(H)[:2], self.W.size(0)):
            raise ValueError(f"keys must have shape {(*shape_of(H)[:2], self.W.size(0))}, got {shape_of(keys)}")
        e = torch.tanh((s_prev @ self.W.T)[:, None, :] + keys) @ self.v
        alpha = masked_softmax(e, src_valid, check_rows=check_rows)
        return context_vector(alpha, H), alpha


class BiGRUEncoder(nn.Module):
    """Embeds the source and runs a bidirectional GRU; padding never enters the recurrence.

    Returns the annotations H (B, T_x, 2 n_h), h_j = [->h_j ; <-h_j] (zeros at padding), the last
    forward state ->h_{T_x} and the first backward state <-h_1 (each (B, n_h)).
    """

    def __init__(self, vocab_size: int, d_emb: int, n_h: int, pad_id: int = 0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_emb, padding_idx=pad_id)
        self.rnn = nn.GRU(d_emb, n_h, batch_first=True, bidirectional=True)
        self.n_h = n_h

    def forward(self, src: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        packed = pack_padded_sequence(self.embed(src), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, h_n = self.rnn(packed)
        H, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        return H, h_n[0], h_n[1]  # h_n[0]: forward after the last real token, h_n[1]: backward at j=1


@dataclass
class Memory:
    """What the decoder reads: annotations, their mask, precomputed keys U h_j, the fixed context."""

    H: torch.Tensor              # (B, T_x, d_h)
    src_valid: torch.Tensor      # (B, T_x) True at real tokens, False at padding
    keys: torch.Tensor | None    # (B, T_x, d_a) with attention, else None
    context: torch.Tensor        # (B, d_h) fixed c (used without attention)
    s0: torch.Tensor             # (B, d_s) initial decoder state


class Seq2Seq(nn.Module):
    """RNN encoder-decoder. ``attention=True``: Bahdanau (c_i changes with i); False: fixed c.

    ``forward(src, src_len, tgt_in)`` returns logits (B, T_y, V) and the attention weights
    alpha (B, T_y, T_x) (None without attention). ``teacher_forcing`` is the probability of
    feeding the gold y_{i-1} (1.0, the default) instead of the model's own previous guess.
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, *, d_emb: int = 32, n_h: int = 64,
                 d_s: int = 128, d_a: int = 64, attention: bool = True, pad_id: int = 0, bos_id: int = 1,
                 eos_id: int = 2):
        super().__init__()
        for n, what in ((src_vocab_size, "src_vocab_size"), (tgt_vocab_size, "tgt_vocab_size"), (d_emb, "d_emb"),
                        (n_h, "n_h"), (d_s, "d_s"), (d_a, "d_a")):
            positive_int(n, what)
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.use_attention = attention
        d_h = 2 * n_h
        self.encoder = BiGRUEncoder(src_vocab_size, d_emb, n_h, pad_id)
        self.init_state = nn.Linear(n_h, d_s)                 # s_0 = tanh(W_s <-h_1)
        self.attention = AdditiveAttention(d_s, d_h, d_a) if attention else None
        self.tgt_embed = nn.Embedding(tgt_vocab_size, d_emb)  # E y_{i-1}
        self.cell = nn.GRUCell(d_emb + d_h, d_s)              # s_i = GRU([E y_{i-1}; c_i], s_{i-1})
        self.out = nn.Linear(d_s + d_h + d_emb, tgt_vocab_size)  # logits from [s_i; c_i; E y_{i-1}]
        self.tgt_vocab_size = tgt_vocab_size

    # -- encoder ------------------------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> Memory:
        if not isinstance(src, torch.Tensor) or src.dim() != 2:
            raise ValueError(f"src must be a (B, T_x) tensor of token ids (torch.long), got {shape_of(src)}")
        if src.size(1) == 0:
            raise ValueError(f"src has no positions (T_x = 0), shape {shape_of(src)}: an empty sequence")
        src = token_ids(src, self.encoder.embed.num_embeddings, "src").long()  # uint8/int16/int32 ids too
        if shape_of(src_len) != (src.size(0),):
            raise ValueError(f"src_len must have shape (B,) = ({src.size(0)},), got {shape_of(src_len)}")
        if int(src_len.min()) < 1 or int(src_len.max()) > src.size(1):
            raise ValueError(f"src_len must lie in [1, T_x={src.size(1)}], got {src_len.tolist()}")
        H, fwd_last, bwd_first = self.encoder(src, src_len)
        mask = valid_mask_from_lengths(src_len.to(src.device), src.size(1))
        keys = self.attention.keys(H) if self.attention is not None else None
        return Memory(H, mask, keys, torch.cat([fwd_last, bwd_first], dim=-1),
                      torch.tanh(self.init_state(bwd_first)))

    # -- one decoder step -----------------------------------------------------------------------
    def decoder_step(self, y_prev: torch.Tensor, s_prev: torch.Tensor, H: torch.Tensor,
                     src_valid: torch.Tensor | None = None, *, keys: torch.Tensor | None = None,
                     context: torch.Tensor | None = None, check_rows: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(logits (B, V), s_i (B, d_s), alpha_i (B, T_x) or None) from y_{i-1} (B,) and s_{i-1}.

        With attention: c_i from s_{i-1} and H; without: ``context`` is the fixed c.
        ``src_valid`` (B, T_x) is True at real source tokens. ``check_rows=False`` trusts it (see
        :func:`masked_softmax`).
        """
        if y_prev.dim() != 1 or s_prev.dim() != 2 or y_prev.size(0) != s_prev.size(0):
            raise ValueError(f"y_prev must be (B,) ids and s_prev (B, d_s); got {shape_of(y_prev)} and "
                             f"{shape_of(s_prev)}")
        if self.attention is not None:
            c, alpha = self.attention(s_prev, H, src_valid, keys=keys, check_rows=check_rows)
        else:
            if context is None:
                raise ValueError("a model without attention needs the fixed context (B, d_h) in context=")
            c, alpha = context, None
        emb = self.tgt_embed(y_prev)
        s = self.cell(torch.cat([emb, c], dim=-1), s_prev)
        logits = self.out(torch.cat([s, c, emb], dim=-1))
        return logits, s, alpha

    def step(self, y_prev: torch.Tensor, s_prev: torch.Tensor, memory: Memory):
        """One decoder step reading ``memory`` (from :meth:`encode`, which checked every source has a
        real token, so the mask is not re-checked at each step: no device sync per step)."""
        return self.decoder_step(y_prev, s_prev, memory.H, memory.src_valid, keys=memory.keys,
                                 context=memory.context, check_rows=False)

    # -- training forward -----------------------------------------------------------------------
    def forward(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor,
                teacher_forcing: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        probability(teacher_forcing, "teacher_forcing")
        mem = self.encode(src, src_len)
        if not isinstance(tgt_in, torch.Tensor) or tgt_in.dim() != 2 or tgt_in.size(0) != src.size(0) \
                or tgt_in.size(1) == 0:
            raise ValueError(f"tgt_in must have shape (B={src.size(0)}, T_y >= 1), got {shape_of(tgt_in)}")
        tgt_in = token_ids(tgt_in, self.tgt_vocab_size, "tgt_in").long()
        s, y_prev = mem.s0, tgt_in[:, 0]
        logits, alphas = [], []
        for i in range(tgt_in.size(1)):
            if i > 0:
                gold = tgt_in[:, i]
                if teacher_forcing >= 1.0:
                    y_prev = gold
                else:  # feed the model's own guess where the coin says so
                    own = _mask_specials(logits[-1].detach(), self).argmax(-1)
                    use_gold = torch.rand(gold.shape, device=gold.device) < teacher_forcing
                    y_prev = torch.where(use_gold, gold, own)
            lg, s, a = self.step(y_prev, s, mem)
            logits.append(lg)
            alphas.append(a)
        alpha = torch.stack(alphas, dim=1) if self.attention is not None else None
        return torch.stack(logits, dim=1), alpha


def decoder_step(model: Seq2Seq, y_prev: torch.Tensor, s_prev: torch.Tensor, H: torch.Tensor,
                 src_valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The notebook's exercise, written out: one step of the attention decoder of ``model``."""
    c, alpha = bahdanau_attention(s_prev, H, model.attention.W, model.attention.U, model.attention.v, src_valid)
    emb = model.tgt_embed(y_prev)
    s = model.cell(torch.cat([emb, c], dim=-1), s_prev)
    logits = model.out(torch.cat([s, c, emb], dim=-1))
    return logits, s, alpha


def seq2seq_loss(model: Seq2Seq, batch: dict[str, torch.Tensor], teacher_forcing: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy of y_1..y_{T_y} <eos> given <bos> y_1..; padding ignored."""
    tgt = batch["tgt"]
    if tgt.dim() != 2 or tgt.size(1) < 2:
        raise ValueError(f"batch['tgt'] must be (B, T_y + 2) = <bos> ... <eos>, got {shape_of(tgt)}")
    logits, _ = model(batch["src"], batch["src_len"], tgt[:, :-1], teacher_forcing=teacher_forcing)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), tgt[:, 1:].reshape(-1),
                           ignore_index=model.pad_id)


def _mask_specials(logits: torch.Tensor, model: Seq2Seq) -> torch.Tensor:
    """<pad> and <bos> are never outputs."""
    logits = logits.clone()
    logits[:, model.pad_id] = float("-inf")
    logits[:, model.bos_id] = float("-inf")
    return logits


@torch.no_grad()
def greedy_decode(model: Seq2Seq, src: torch.Tensor, src_len: torch.Tensor, max_len: int = 20
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """argmax at every step. Returns ids (B, L) (ending in <eos> or cut at ``max_len``, then
    <pad>) and the attention weights (B, L, T_x) (None without attention)."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    mem = model.encode(src, src_len)
    B = src.size(0)
    y = torch.full((B,), model.bos_id, dtype=torch.long, device=src.device)
    s = mem.s0
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    out, alphas = [], []
    for _ in range(max_len):
        logits, s, a = model.step(y, s, mem)
        y = _mask_specials(logits, model).argmax(-1)
        y = y.masked_fill(done, model.pad_id)
        out.append(y)
        alphas.append(a)
        done = done | (y == model.eos_id)
        if bool(done.all()):
            break
    alpha = torch.stack(alphas, dim=1) if model.attention is not None else None
    return torch.stack(out, dim=1), alpha


@torch.no_grad()
def beam_search(model: Seq2Seq, src: torch.Tensor, src_len: torch.Tensor | int | None = None, *,
                beam_size: int = 4, max_len: int = 20) -> tuple[list[int], float, torch.Tensor | None]:
    """Beam search for one source sentence ``src`` (T_x,) or (1, T_x).

    Keeps the ``beam_size`` best prefixes by total log-probability; a prefix ending in <eos> is
    finished. Stops when the best finished hypothesis beats every open one (log-probabilities
    only fall as a prefix grows) or at ``max_len``. Returns (ids including the final <eos>
    if any, total log-probability, attention weights (L, T_x) or None).
    """
    if beam_size < 1 or max_len < 1:
        raise ValueError(f"beam_size and max_len must be >= 1, got {beam_size}, {max_len}")
    if src.dim() == 1:
        src = src[None]
    if src.dim() != 2 or src.size(0) != 1:
        raise ValueError(f"beam_search decodes one sentence: src must be (T_x,) or (1, T_x), got {shape_of(src)}")
    if src_len is None:
        src_len = src.size(1)
    src_len = torch.as_tensor(src_len, dtype=torch.long).reshape(1)
    mem = model.encode(src, src_len)
    dev = src.device
    # open hypotheses: tokens (k, t), scores (k,), states (k, d_s), alphas (k, t, T_x)
    tokens = torch.empty(1, 0, dtype=torch.long, device=dev)
    scores = torch.zeros(1, device=dev)
    s = mem.s0
    alphas = torch.empty(1, 0, src.size(1), device=dev)
    y = torch.full((1,), model.bos_id, dtype=torch.long, device=dev)
    finished: list[tuple[float, list[int], torch.Tensor]] = []
    V = model.tgt_vocab_size
    for t in range(max_len):
        k = tokens.size(0)
        m = Memory(mem.H.expand(k, -1, -1), mem.src_valid.expand(k, -1),
                   None if mem.keys is None else mem.keys.expand(k, -1, -1),
                   mem.context.expand(k, -1), mem.s0.expand(k, -1))
        logits, s_new, a = model.step(y, s, m)
        logp = torch.log_softmax(_mask_specials(logits, model).float(), dim=-1)
        total = (scores[:, None] + logp).reshape(-1)
        n_keep = min(beam_size, int(torch.isfinite(total).sum()))
        best, idx = total.topk(n_keep)
        parent, tok = idx // V, idx % V
        new_tokens = torch.cat([tokens[parent], tok[:, None]], dim=1)
        new_alphas = torch.cat([alphas[parent], (a if a is not None else
                                                 torch.zeros(k, src.size(1), device=dev))[parent][:, None]], dim=1)
        is_end = (tok == model.eos_id) | torch.tensor(t == max_len - 1, device=dev)
        for r in torch.nonzero(is_end).flatten().tolist():
            finished.append((float(best[r]), new_tokens[r].tolist(), new_alphas[r]))
        keep = ~is_end
        if not bool(keep.any()):
            break
        tokens, scores, s = new_tokens[keep], best[keep], s_new[parent[keep]]
        alphas, y = new_alphas[keep], tok[keep]
        if finished and max(f[0] for f in finished) >= float(scores.max()):
            break
    score, ids, alpha = max(finished, key=lambda f: f[0])
    return ids, score, (alpha if model.attention is not None else None)


@torch.no_grad()
def sequence_logprob(model: Seq2Seq, src: torch.Tensor, src_len: torch.Tensor, ids: list[int]) -> float:
    """log p(ids | src) under the model (special tokens masked as in decoding); for checking search."""
    if src.dim() == 1:
        src = src[None]
    mem = model.encode(src, torch.as_tensor(src_len).reshape(1))
    y = torch.full((1,), model.bos_id, dtype=torch.long, device=src.device)
    s, total = mem.s0, 0.0
    for tok in ids:
        logits, s, _ = model.step(y, s, mem)
        total += float(torch.log_softmax(_mask_specials(logits, model).float(), -1)[0, tok])
        y = torch.tensor([tok], device=src.device)
    return total
