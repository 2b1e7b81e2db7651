"""Self-attention from scratch, in the lecture's notation (notebook 03).

Attention is weighted averaging: for one query with scores a in R^{1 x n} over the rows of
X in R^{n x d}, the output is Softmax(a) X; for n queries at once, Softmax(A) X with A in
R^{n x n} (softmax on each row).

Self-attention makes the scores from the input itself (Vaswani et al., 2017, "Attention Is All
You Need")::

    Q = X W_Q,  K = X W_K,  V = X W_V       W_Q, W_K in R^{d_X x d_Q}, W_V in R^{d_X x d_V}
    S = Q K^T / sqrt(d_Q)                   (n x n similarities)
    A = Softmax(S)                          (each row sums to 1)
    Y = A V                                 (n x d_V)

Masks: the one convention of the whole course, that of ``F.scaled_dot_product_attention``'s
boolean ``attn_mask``: True where a query MAY attend to a key, False where it may not; masked
scores become -inf before the softmax. A row with no allowed key gives a zero output (as
PyTorch's kernels do), never NaN. Every mask of the course means this: notebook 02's
``src_valid`` (True at real source tokens), :mod:`course_lib.models.transformer`'s ``attn_mask``
and ``key_valid`` (True at real keys), :func:`causal_mask`. Where PyTorch means the opposite
(``nn.MultiheadAttention``'s ``attn_mask`` and ``key_padding_mask``: True = may NOT attend), the
course converts at that call, with ``~mask`` written out.

The multi-head version, the transformer block and the encoder live in
:mod:`course_lib.models.transformer`; this module is the single-head, from-scratch layer plus
positional encodings and the small models notebooks 03 and 04 train.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..validate import InputTypeError, floating

__all__ = [
    "weighted_average", "attention_weights", "scaled_dot_product_attention", "self_attention",
    "multi_head_self_attention",
    "causal_mask", "sinusoidal_positions", "SelfAttention", "PositionalEncoding", "OrderProbe",
]


def causal_mask(n: int, device=None) -> torch.Tensor:
    """(n, n) boolean, True on and below the diagonal: token i may see tokens j <= i."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def sinusoidal_positions(n: int, d: int) -> torch.Tensor:
    """Fixed positional encoding E (n, d) of Vaswani et al.: E[p, 2i] = sin(p / 10000^(2i/d)),
    E[p, 2i+1] = cos(p / 10000^(2i/d))."""
    if d % 2:
        raise ValueError(f"sinusoidal positions need an even dimension, got d={d}")
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, dtype=torch.float32) / d)
    E = torch.zeros(n, d)
    E[:, 0::2] = torch.sin(pos * freq)
    E[:, 1::2] = torch.cos(pos * freq)
    return E


def weighted_average(a: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Softmax(a) X: attention as weighted averaging of the rows of X.

    ``a`` (n,) or (m, n) scores, ``X`` (n, d) values -> (d,) or (m, d).
    """
    if X.dim() != 2:
        raise ValueError(f"X must be (n, d), got shape {tuple(X.shape)}")
    if a.dim() not in (1, 2) or a.size(-1) != X.size(0):
        raise ValueError(f"scores must be (n,) or (m, n) with n = {X.size(0)} rows of X, got shape {tuple(a.shape)}")
    return torch.softmax(a, dim=-1) @ X


def _check_mask(mask: torch.Tensor | None, n_q: int, n_k: int) -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor (True = may attend), got {got}")
    if mask.dim() < 2 or tuple(mask.shape[-2:]) != (n_q, n_k):
        raise ValueError(f"mask must end in (n_queries, n_keys) = ({n_q}, {n_k}), got shape {tuple(mask.shape)}")


def attention_weights(Q: torch.Tensor, K: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A = Softmax(Q K^T / sqrt(d_Q)) row-wise, optionally masked.

    ``Q`` (..., n_q, d_Q), ``K`` (..., n_k, d_Q), ``mask`` bool broadcastable to (..., n_q, n_k),
    True = may attend. Returns A (..., n_q, n_k); rows sum to 1 (0 for a fully masked row).
    The softmax runs in float32 for half-precision inputs and is cast back.
    """
    floating(Q, "Q")
    floating(K, "K")
    if Q.dim() < 2 or K.dim() < 2:
        raise ValueError(f"Q and K must be at least 2-D (n, d_Q), got {tuple(Q.shape)} and {tuple(K.shape)}")
    if Q.dtype != K.dtype:
        raise InputTypeError(f"Q and K must have the same dtype, got Q {Q.dtype} and K {K.dtype}")
    if Q.size(-1) != K.size(-1):
        raise ValueError(f"queries and keys need the same d_Q: Q has {Q.size(-1)} (shape {tuple(Q.shape)}), "
                         f"K has {K.size(-1)} (shape {tuple(K.shape)})")
    _check_mask(mask, Q.size(-2), K.size(-2))
    S = Q @ K.transpose(-2, -1) / math.sqrt(Q.size(-1))
    S = S.float()
    if mask is not None:
        S = S.masked_fill(~mask, float("-inf"))
    A = torch.softmax(S, dim=-1)
    if mask is not None:
        A = torch.nan_to_num(A, nan=0.0)  # fully masked rows: exp(-inf) / 0
    return A.to(Q.dtype)


def scaled_dot_product_attention(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor,
                                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Y = Softmax(Q K^T / sqrt(d_Q)) V, the naive (n x n materialising) version of
    ``F.scaled_dot_product_attention``. ``V`` (..., n_k, d_V)."""
    if V.dim() < 2 or V.size(-2) != K.size(-2):
        raise ValueError(f"V must have one row per key: K has {K.size(-2)} keys (shape {tuple(K.shape)}), "
                         f"V has shape {tuple(V.shape)}")
    return attention_weights(Q, K, mask) @ V


def self_attention(X: torch.Tensor, W_Q: torch.Tensor, W_K: torch.Tensor, W_V: torch.Tensor,
                   mask: torch.Tensor | None = None, return_weights: bool = False):
    """Single-head self-attention in the lecture's notation.

    ``X`` (n, d_X) or (B, n, d_X); ``W_Q``, ``W_K`` (d_X, d_Q); ``W_V`` (d_X, d_V).
    Q = X W_Q, K = X W_K, V = X W_V; Y = Softmax(Q K^T / sqrt(d_Q)) V. Returns Y (..., n, d_V),
    or (Y, A) with ``return_weights``.
    """
    if X.dim() not in (2, 3):
        raise ValueError(f"X must be (n, d_X) or (B, n, d_X), got shape {tuple(X.shape)}")
    d_X = X.size(-1)
    for name, W in (("W_Q", W_Q), ("W_K", W_K), ("W_V", W_V)):
        if W.dim() != 2 or W.size(0) != d_X:
            raise ValueError(f"{name} must be (d_X={d_X}, ...), got shape {tuple(W.shape)}")
    if W_Q.size(1) != W_K.size(1):
        raise ValueError(f"W_Q and W_K must share d_Q: got {tuple(W_Q.shape)} and {tuple(W_K.shape)}")
    Q, K, V = X @ W_Q, X @ W_K, X @ W_V
    A = attention_weights(Q, K, mask)
    Y = A @ V
    return (Y, A) if return_weights else Y


def multi_head_self_attention(X: torch.Tensor, W_Q: torch.Tensor, W_K: torch.Tensor, W_V: torch.Tensor,
                              W_O: torch.Tensor, n_heads: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head self-attention as the lecture draws it: the concatenation of ``n_heads``
    self-attention layers, each on its own d/h-column slice of W_Q, W_K, W_V, then W_O.

    ``X`` (B, n, d) or (n, d); all four matrices (d, d), lecture orientation (X W). Head i uses
    columns [i d/h, (i+1) d/h). Biases are left out (they add X W + b). Written as a loop over
    heads for clarity; :class:`course_lib.models.transformer.MultiHeadAttention` is the batched version.
    """
    if X.dim() not in (2, 3):
        raise ValueError(f"X must be (n, d) or (B, n, d), got shape {tuple(X.shape)}")
    d = X.size(-1)
    for name, W in (("W_Q", W_Q), ("W_K", W_K), ("W_V", W_V), ("W_O", W_O)):
        if tuple(W.shape) != (d, d):
            raise ValueError(f"{name} must be (d_model, d_model) = ({d}, {d}), got {tuple(W.shape)}")
    if n_heads <= 0 or d % n_heads:
        raise ValueError(f"n_heads={n_heads} must divide d_model={d} (each head gets d_model / n_heads features)")
    dh = d // n_heads
    heads = []
    for i in range(n_heads):
        cols = slice(i * dh, (i + 1) * dh)
        heads.append(self_attention(X, W_Q[:, cols], W_K[:, cols], W_V[:, cols], mask))
    return torch.cat(heads, dim=-1) @ W_O


class SelfAttention(nn.Module):
    """One head of self-attention with the lecture's parameters W_Q, W_K (d_X x d_Q), W_V (d_X x d_V).

    ``causal=True`` applies the mask "the current token can only see previous tokens".
    """

    def __init__(self, d_X: int, d_Q: int, d_V: int | None = None, causal: bool = False):
        super().__init__()
        if min(d_X, d_Q) <= 0 or (d_V is not None and d_V <= 0):
            raise ValueError(f"dimensions must be positive, got d_X={d_X}, d_Q={d_Q}, d_V={d_V}")
        d_V = d_X if d_V is None else d_V
        self.W_Q = nn.Parameter(torch.randn(d_X, d_Q) / math.sqrt(d_X))
        self.W_K = nn.Parameter(torch.randn(d_X, d_Q) / math.sqrt(d_X))
        self.W_V = nn.Parameter(torch.randn(d_X, d_V) / math.sqrt(d_X))
        self.causal = causal

    def forward(self, X: torch.Tensor, mask: torch.Tensor | None = None, return_weights: bool = False):
        if X.dim() not in (2, 3) or X.size(-1) != self.W_Q.size(0):
            raise ValueError(f"expected X of shape (n, d_X={self.W_Q.size(0)}) or (B, n, d_X), got {tuple(X.shape)}")
        if self.causal:
            cm = causal_mask(X.size(-2), X.device)
            _check_mask(mask, X.size(-2), X.size(-2))
            mask = cm if mask is None else mask & cm
        return self_attention(X, self.W_Q, self.W_K, self.W_V, mask, return_weights)


class PositionalEncoding(nn.Module):
    """X + E: adds position information to token vectors (B, n, d).

    ``kind``: ``"none"`` (E = 0, attention is then permutation-equivariant), ``"sinusoidal"``
    (fixed E of Vaswani et al., a buffer) or ``"learned"`` (E is an nn.Embedding of positions,
    as in GPT-2 and ViT).
    """

    KINDS = ("none", "sinusoidal", "learned")

    def __init__(self, max_len: int, d_model: int, kind: str = "learned"):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        if max_len <= 0 or d_model <= 0:
            raise ValueError(f"max_len and d_model must be positive, got {max_len}, {d_model}")
        self.kind, self.max_len, self.d_model = kind, max_len, d_model
        if kind == "learned":
            self.embedding = nn.Embedding(max_len, d_model)
            nn.init.normal_(self.embedding.weight, std=0.02)
        elif kind == "sinusoidal":
            self.register_buffer("E_fixed", sinusoidal_positions(max_len, d_model), persistent=False)

    @property
    def E(self) -> torch.Tensor:
        """The (max_len, d_model) table of position vectors."""
        if self.kind == "learned":
            return self.embedding.weight
        if self.kind == "sinusoidal":
            return self.E_fixed
        return torch.zeros(self.max_len, self.d_model)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.dim() != 3 or X.size(-1) != self.d_model:
            raise ValueError(f"expected (B, n, d_model={self.d_model}), got {tuple(X.shape)}")
        n = X.size(1)
        if n > self.max_len:
            raise ValueError(f"sequence length {n} exceeds max_len={self.max_len}")
        if self.kind == "none":
            return X
        return X + self.E[:n].to(X.dtype)


class OrderProbe(nn.Module):
    """Token embedding + positional encoding + one self-attention layer (residual) + MLP, read at
    the last position: the smallest model that can solve an order-sensitive task (notebook 03).

    Returns logits (B, n_classes).
    """

    def __init__(self, vocab_size: int, n_classes: int, max_len: int, d_model: int = 64,
                 pos: str = "learned", n_layers: int = 1):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = PositionalEncoding(max_len, d_model, pos)
        self.layers = nn.ModuleList(SelfAttention(d_model, d_model) for _ in range(n_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, 2 * d_model), nn.GELU(),
                                  nn.Linear(2 * d_model, n_classes))
        self.vocab_size = vocab_size

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        if x.dim() != 2:
            raise ValueError(f"expected token ids (B, n), got shape {tuple(x.shape)}")
        h = self.pos(self.tok(x))
        maps = []
        for attn, norm in zip(self.layers, self.norms, strict=True):
            y, A = attn(norm(h), return_weights=True)
            h = h + y
            maps.append(A)
        logits = self.head(h[:, -1])
        return (logits, torch.stack(maps, 1)) if return_weights else logits
