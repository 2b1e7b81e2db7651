"""The transformer, as the lecture draws it, reused by every later model (ViT, GPT, reward model).

Notation (lecture): X in R^{n x d}; Q = X W_Q, K = X W_K, V = X W_V; S = Q K^T / sqrt(d_Q);
A = Softmax(S) row-wise; Y = A V. Multi-head attention runs h such maps on d/h-dimensional
slices and concatenates them, followed by an output projection W_O (Vaswani et al., 2017,
"Attention Is All You Need"). A block adds LayerNorm, an MLP applied to each vector, and
residual connections; we use pre-norm (LayerNorm before each sub-layer, as GPT-2 and ViT do),
with post-norm available for comparison.

Masks follow the course's one convention (notebook 03, :mod:`course_lib.models.attention`), that of
``F.scaled_dot_product_attention``: True = may attend. A boolean ``attn_mask`` is True where a
query may attend to a key; ``key_valid`` (B, n_keys) is True at the real keys and False at padding.
``nn.MultiheadAttention`` means the opposite by both of its masks (True = may NOT attend): call it
with ``attn_mask=~attn_mask`` and ``key_padding_mask=~key_valid``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..validate import positive_int
from .attention import PositionalEncoding, causal_mask


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, n, d) -> (B, h, n, d/h): each head gets its own slice of the features."""
    if x.dim() != 3:
        raise ValueError(f"split_heads expects (B, n, d), got shape {tuple(x.shape)}")
    B, n, d = x.shape
    positive_int(n_heads, "n_heads")
    if d % n_heads:
        raise ValueError(f"d_model={d} is not divisible by n_heads={n_heads}")
    return x.reshape(B, n, n_heads, d // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, h, n, d/h) -> (B, n, d): concatenate the heads' outputs feature-wise."""
    if x.dim() != 4:
        raise ValueError(f"merge_heads expects (B, h, n, d_head), got shape {tuple(x.shape)}")
    B, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(B, n, h * dh)






def _combine_masks(attn_mask: torch.Tensor | None, key_valid: torch.Tensor | None,
                   B: int, h: int, nq: int, nk: int) -> torch.Tensor | None:
    """Validate the masks and merge them into one boolean (B|1, h|1, nq, nk) 'may attend' mask."""
    mask = None
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            raise ValueError(f"attn_mask must be a bool tensor (True = may attend), got dtype {attn_mask.dtype}")
        m = attn_mask
        if m.dim() == 2:
            m = m[None, None]
        elif m.dim() == 3:
            m = m[:, None]
        if m.dim() != 4 or m.shape[-2:] != (nq, nk) or m.shape[0] not in (1, B) or m.shape[1] not in (1, h):
            raise ValueError(f"attn_mask must have shape ({nq}, {nk}), ({B}, {nq}, {nk}) or ({B}, {h}, {nq}, {nk}), "
                             f"got {tuple(attn_mask.shape)}")
        mask = m
    if key_valid is not None:
        if not isinstance(key_valid, torch.Tensor) or key_valid.dtype != torch.bool:
            got = key_valid.dtype if isinstance(key_valid, torch.Tensor) else type(key_valid).__name__
            raise ValueError(f"key_valid must be a bool tensor (True = real key, may be attended), got {got}")
        if tuple(key_valid.shape) != (B, nk):
            raise ValueError(f"key_valid must have shape (B, n_keys) = ({B}, {nk}), got {tuple(key_valid.shape)}")
        keep = key_valid[:, None, None, :]
        mask = keep if mask is None else mask & keep
    return mask


class KVCache:
    """Keys and values of the tokens one self-attention layer has already seen (decoding).

    During generation token t's keys and values never change once computed, so each step only
    projects the new token(s) and appends them here: K = [K_past; k_new], V = [V_past; v_new].
    Shapes are (B, h, n_seen, d_head). ``max_len`` (optional) makes an overflow a clear error.
    """

    def __init__(self, max_len: int | None = None):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.max_len = max_len

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.size(2)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new keys/values (B, h, n_new, d_head); return all of them so far."""
        if k.dim() != 4 or k.shape != v.shape:
            raise ValueError(f"KVCache.append expects k and v of equal shape (B, h, n_new, d_head), "
                             f"got {tuple(k.shape)} and {tuple(v.shape)}")
        if self.k is not None and (self.k.shape[:2] != k.shape[:2] or self.k.size(3) != k.size(3)):
            raise ValueError(f"KVCache holds (B, h, n, d_head) = {tuple(self.k.shape)}, "
                             f"cannot append {tuple(k.shape)}")
        n_after = len(self) + k.size(2)
        if self.max_len is not None and n_after > self.max_len:
            raise ValueError(f"KVCache is full: {len(self)} + {k.size(2)} tokens exceed max_len={self.max_len}")
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def reset(self) -> None:
        self.k = self.v = None


class MultiHeadAttention(nn.Module):
    """Multi-head (self- or cross-) attention with fused Q/K/V projections.

    ``qkv.weight`` stacks W_Q, W_K, W_V row-wise exactly like ``nn.MultiheadAttention``'s
    ``in_proj_weight``, and ``proj`` is its ``out_proj`` (see :meth:`from_torch`).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model <= 0 or n_heads <= 0:
            raise ValueError(f"d_model and n_heads must be positive, got {d_model}, {n_heads}")
        if d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide d_model={d_model} "
                             f"(each head gets d_model / n_heads features)")
        self.d_model, self.n_heads, self.dropout = d_model, n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None, causal: bool = False,
                attn_mask: torch.Tensor | None = None, key_valid: torch.Tensor | None = None,
                return_weights: bool = False, kv_cache: KVCache | None = None):
        """Y for queries from ``x`` (B, n, d) and keys/values from ``context`` (default: ``x``).

        ``attn_mask`` (n, n_keys), (B, n, n_keys) or (B, h, n, n_keys) and ``key_valid`` (B, n_keys)
        are bool, True = may attend (the opposite of ``nn.MultiheadAttention``'s masks).

        With ``return_weights`` also returns A (B, h, n, n_keys), computed explicitly. With
        ``kv_cache`` (self-attention only) the new keys/values are appended to the cache and the
        queries attend to everything cached; ``causal`` then lets query i (the cache's
        ``len - n + i``-th token) see keys up to itself.
        """
        if x.dim() != 3 or x.size(-1) != self.d_model:
            raise ValueError(f"expected input of shape (B, n, d_model={self.d_model}), got {tuple(x.shape)}")
        B, n, d = x.shape
        if context is None:
            q, k, v = self.qkv(x).split(d, dim=-1)
        else:
            if context.dim() != 3 or context.size(-1) != d or context.size(0) != B:
                raise ValueError(f"context must have shape ({B}, n_keys, {d}), got {tuple(context.shape)}")
            if type(self.qkv) is nn.Linear:  # W_Q on the queries, W_K and W_V on the context only
                w_q, w_kv = self.qkv.weight.split([d, 2 * d])
                b_q, b_kv = self.qkv.bias.split([d, 2 * d]) if self.qkv.bias is not None else (None, None)
                q = F.linear(x, w_q, b_q)
                k, v = F.linear(context, w_kv, b_kv).split(d, dim=-1)
            else:  # any other module (a LoRA adapter, say) is called as the module it is
                q = self.qkv(x)[..., :d]
                k, v = self.qkv(context)[..., d:].split(d, dim=-1)
        q, k, v = (split_heads(t, self.n_heads) for t in (q, k, v))
        if kv_cache is not None:
            if context is not None:
                raise ValueError("kv_cache is for self-attention; cross-attention keys do not grow")
            k, v = kv_cache.append(k, v)
        nk = k.size(2)
        mask = _combine_masks(attn_mask, key_valid, B, self.n_heads, n, nk)
        # A plain causal square map lets SDPA pick its fused (flash / memory-efficient) kernels. One
        # new token after a cache may see every key: no mask at all, which keeps those kernels too.
        fused_causal = causal and mask is None and nk == n and not return_weights
        if causal and not fused_causal and n > 1:
            cm = causal_mask(n, x.device)[None, None] if nk == n else \
                torch.ones(n, nk, dtype=torch.bool, device=x.device).tril(nk - n)[None, None]
            mask = cm if mask is None else mask & cm
        p = self.dropout if self.training else 0.0
        if return_weights:
            y, weights = attention_with_weights(q, k, v, mask, p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=fused_causal)
            weights = None
        y = self.resid_dropout(self.proj(merge_heads(y)))
        return (y, weights) if return_weights else y

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> MultiHeadAttention:
        """Our module with the weights of a batch_first ``nn.MultiheadAttention``."""
        if not mha._qkv_same_embed_dim:
            raise ValueError("only nn.MultiheadAttention with kdim == vdim == embed_dim is supported")
        ours = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout, bias=mha.in_proj_bias is not None)
        with torch.no_grad():
            ours.qkv.weight.copy_(mha.in_proj_weight)
            ours.proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                ours.qkv.bias.copy_(mha.in_proj_bias)
                ours.proj.bias.copy_(mha.out_proj.bias)
        return ours


def attention_with_weights(q, k, v, mask=None, dropout_p: float = 0.0):
    """Explicit S = Q K^T / sqrt(d), A = Softmax(S), Y = A V; returns (Y, A). Fully masked rows give 0."""
    S = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        S = S.masked_fill(~mask, float("-inf"))
    A = torch.softmax(S.float(), dim=-1).to(q.dtype)
    A = torch.nan_to_num(A, nan=0.0)
    if dropout_p > 0:
        A = F.dropout(A, dropout_p)
    return A @ v, A


class MLP(nn.Module):
    """The position-wise feed-forward network: Linear(d, r d) -> GELU -> Linear(r d, d)."""

    def __init__(self, d_model: int, mlp_ratio: float = 4.0, dropout: float = 0.0, bias: bool = True,
                 activation: str = "gelu"):
        super().__init__()
        if activation not in ("gelu", "gelu_tanh", "relu"):
            raise ValueError(f"activation must be 'gelu', 'gelu_tanh' or 'relu', got {activation!r}")
        hidden = int(mlp_ratio * d_model)
        self.fc = nn.Linear(d_model, hidden, bias=bias)
        self.proj = nn.Linear(hidden, d_model, bias=bias)
        self.activation = activation
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.activation == "relu":
            h = F.relu(h)
        else:
            h = F.gelu(h, approximate="tanh" if self.activation == "gelu_tanh" else "none")
        return self.dropout(self.proj(h))


class Block(nn.Module):
    """One transformer block: x + MHA(LN(x)), then x + MLP(LN(x)) (pre-norm; ``norm_first=False``
    gives the original post-norm LN(x + MHA(x)))."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 bias: bool = True, causal: bool = False, norm_first: bool = True, activation: str = "gelu",
                 norm_eps: float = 1e-5):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, eps=norm_eps, bias=bias)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout, bias)
        self.ln2 = nn.LayerNorm(d_model, eps=norm_eps, bias=bias)
        self.mlp = MLP(d_model, mlp_ratio, dropout, bias, activation)
        self.causal, self.norm_first = causal, norm_first

    def forward(self, x: torch.Tensor, *, attn_mask=None, key_valid=None, return_weights: bool = False,
                kv_cache: KVCache | None = None):
        kw = dict(causal=self.causal, attn_mask=attn_mask, key_valid=key_valid,
                  return_weights=return_weights)
        if kv_cache is not None:
            kw["kv_cache"] = kv_cache
        if self.norm_first:
            out = self.attn(self.ln1(x), **kw)
            a, w = out if return_weights else (out, None)
            x = x + a
            x = x + self.mlp(self.ln2(x))
        else:
            out = self.attn(x, **kw)
            a, w = out if return_weights else (out, None)
            x = self.ln1(x + a)
            x = self.ln2(x + self.mlp(x))
        return (x, w) if return_weights else x


class TransformerEncoder(nn.Module):
    """A stack of blocks and a final LayerNorm (pre-norm); ``causal=True`` makes it decoder-only."""

    def __init__(self, n_layers: int, d_model: int, n_heads: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, bias: bool = True, causal: bool = False, activation: str = "gelu",
                 norm_eps: float = 1e-5):
        super().__init__()
        positive_int(n_layers, "n_layers")
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, mlp_ratio, dropout, bias, causal, True, activation, norm_eps)
            for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model, eps=norm_eps, bias=bias)

    def forward(self, x: torch.Tensor, *, attn_mask=None, key_valid=None, return_weights: bool = False):
        maps = []
        for blk in self.blocks:
            out = blk(x, attn_mask=attn_mask, key_valid=key_valid, return_weights=return_weights)
            if return_weights:
                x, w = out
                maps.append(w)
            else:
                x = out
        x = self.ln_f(x)
        return (x, torch.stack(maps, dim=1)) if return_weights else x  # maps: (B, layers, heads, n, n)


def block_param_count(d_model: int, mlp_ratio: float = 4.0, bias: bool = True) -> int:
    """Parameters of one pre-norm block: attention 4d^2 (+4d bias), MLP 2 r d^2 (+ r d + d bias),
    two LayerNorms 2 * 2d (2 * d without bias). With r = 4 and biases: 12 d^2 + 13 d."""
    d, hidden = d_model, int(mlp_ratio * d_model)
    attn = 4 * d * d + (4 * d if bias else 0)
    mlp = 2 * d * hidden + ((hidden + d) if bias else 0)
    norms = 2 * (2 * d if bias else d)
    return attn + mlp + norms


class TransformerClassifier(nn.Module):
    """Embedding + positional encoding + :class:`~course_lib.models.transformer.TransformerEncoder`,
    classified from the last position (the recall task of notebooks 01 and 04).

    ``causal=True`` makes it a decoder-only stack. Returns logits (B, n_classes), or
    (logits, maps) with maps (B, layers, heads, n, n) when ``return_weights``.
    """

    def __init__(self, vocab_size: int, n_classes: int, max_len: int, d_model: int = 64, n_heads: int = 4,
                 n_layers: int = 2, pos: str = "learned", causal: bool = False, dropout: float = 0.0):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = PositionalEncoding(max_len, d_model, pos)
        self.encoder = TransformerEncoder(n_layers, d_model, n_heads, dropout=dropout, causal=causal)
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        if x.dim() != 2:
            raise ValueError(f"expected token ids (B, n), got shape {tuple(x.shape)}")
        h = self.pos(self.tok(x))
        if return_weights:
            h, maps = self.encoder(h, return_weights=True)
            return self.head(h[:, -1]), maps
        return self.head(self.encoder(h)[:, -1])
