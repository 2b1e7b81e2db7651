"""Vision meets language (notebook 09), part 1: an image captioner with cross-attention
(the LLaVA-style model is :mod:`course_lib.models.llava`).

**Captioner** (the transformer version of Xu et al., 2015, "Show, Attend and Tell"): a ViT
encoder (notebook 05's patch embedding and pre-norm encoder, no class token) turns an image into
N patch features F in R^{N x d}; a character decoder predicts the caption one character at a time.
Each decoder block has three sub-layers, all pre-norm with residual connections:

    H = H + SelfAttn(LN(H))            (causal: character t sees characters <= t)
    H = H + CrossAttn(LN(H), F)        (Q = LN(H) W_Q; K = F W_K, V = F W_V; A in R^{T x N})
    H = H + MLP(LN(H))

Row t of the cross-attention A says which patches the decoder looked at to write character t+1:
the "where did it look" maps of the notebook.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..validate import positive_int, token_ids
from .lm import masked_lm_loss
from .transformer import MLP, MultiHeadAttention, TransformerEncoder
from .vit import PatchEmbedding, check_images


def cross_attention(x: torch.Tensor, feats: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
                    w_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One head of cross-attention, written out: Q = x W_Q (queries from the text, (B, T, d)),
    K = F W_K and V = F W_V (keys and values from the patches, (B, N, d)); A = softmax(Q K^T /
    sqrt(d_k)) over the N patches; Y = A V. Weights are (d, d_k) matrices. Returns (Y, A)."""
    if x.dim() != 3 or feats.dim() != 3 or x.size(0) != feats.size(0):
        raise ValueError(f"expected x (B, T, d) and feats (B, N, d) with the same B, received "
                         f"{tuple(x.shape)} and {tuple(feats.shape)}")
    q, k, v = x @ w_q, feats @ w_k, feats @ w_v
    A = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1)
    return A @ v, A


def word_attention(A: torch.Tensor, caption: str, grid: tuple[int, int]) -> torch.Tensor:
    """Per-word attention maps. ``A`` (len(caption), N): row t is the cross-attention used to write
    ``caption[t]``. Returns (n_words, gh, gw): for each word of ``caption.split(" ")``, the mean of
    its characters' rows, laid out on the patch grid (row-major, as :func:`patchify` orders patches)."""
    gh, gw = grid
    if A.dim() != 2 or A.size(0) != len(caption) or A.size(1) != gh * gw:
        raise ValueError(f"expected A of shape (len(caption)={len(caption)}, {gh * gw}), received {tuple(A.shape)}")
    maps, start = [], 0
    for w in caption.split(" "):
        maps.append(A[start:start + len(w)].mean(0).reshape(gh, gw))
        start += len(w) + 1
    return torch.stack(maps)


class PatchEncoder(nn.Module):
    """A ViT without class token or head: (B, C, H, W) -> patch features (B, N, d)."""

    def __init__(self, image_size: int, patch_size: int, in_channels: int, d_model: int, n_layers: int,
                 n_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        positive_int(image_size, "image_size")
        positive_int(patch_size, "patch_size")
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not divisible by the patch size {patch_size}")
        self.image_size, self.patch_size, self.in_channels, self.d_model = image_size, patch_size, in_channels, d_model
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.n_patches = self.grid[0] * self.grid[1]
        self.patch_embed = PatchEmbedding(patch_size, in_channels, d_model)
        self.pos_embed = nn.Parameter(torch.randn(1, self.n_patches, d_model) * 0.02)
        self.encoder = TransformerEncoder(n_layers, d_model, n_heads, mlp_ratio, dropout)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.patch_size, self.in_channels, self.image_size)
        return self.encoder(self.patch_embed(images) + self.pos_embed)


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the patches, MLP; each pre-norm with a residual."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.mlp = MLP(d_model, mlp_ratio, dropout)

    def forward(self, h: torch.Tensor, feats: torch.Tensor, return_weights: bool = False):
        h = h + self.self_attn(self.ln1(h), causal=True)
        out = self.cross_attn(self.ln2(h), context=feats, return_weights=return_weights)
        a, w = out if return_weights else (out, None)
        h = h + a
        h = h + self.mlp(self.ln3(h))
        return (h, w) if return_weights else h


class Captioner(nn.Module):
    """Image -> caption characters: :class:`PatchEncoder` + a decoder of :class:`DecoderBlock`.

    ``forward(images, tokens)`` gives logits (B, T, V) for the next character at each position;
    with ``return_weights`` also the cross-attention maps (B, layers, heads, T, N)."""

    def __init__(self, vocab_size: int, image_size: int = 32, patch_size: int = 8, in_channels: int = 3,
                 d_model: int = 64, enc_layers: int = 2, dec_layers: int = 2, n_heads: int = 4,
                 max_len: int = 48, dropout: float = 0.0):
        super().__init__()
        for n, what in ((vocab_size, "vocab_size"), (dec_layers, "dec_layers"), (max_len, "max_len")):
            positive_int(n, what)
        self.vocab_size, self.max_len = vocab_size, max_len
        self.encoder = PatchEncoder(image_size, patch_size, in_channels, d_model, enc_layers, n_heads,
                                    dropout=dropout)
        self.tok_embed = nn.Embedding(vocab_size, d_model)
        self.pos_embed = nn.Parameter(torch.randn(1, max_len, d_model) * 0.02)
        self.blocks = nn.ModuleList(DecoderBlock(d_model, n_heads, dropout=dropout) for _ in range(dec_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    @property
    def grid(self) -> tuple[int, int]:
        return self.encoder.grid

    def decode(self, feats: torch.Tensor, tokens: torch.Tensor, return_weights: bool = False):
        token_ids(tokens, self.vocab_size, "tokens", dim=2)  # the range in eager mode only
        if tokens.size(0) != feats.size(0):
            raise ValueError(f"expected tokens (B={feats.size(0)}, T), received {tuple(tokens.shape)}")
        T = tokens.size(1)
        if T > self.max_len:
            raise ValueError(f"expected at most max_len={self.max_len} tokens, received {T}")
        h = self.tok_embed(tokens) + self.pos_embed[:, :T]
        maps = []
        for blk in self.blocks:
            if return_weights:
                h, w = blk(h, feats, return_weights=True)
                maps.append(w)
            else:
                h = blk(h, feats)
        logits = self.head(self.ln_f(h))
        return (logits, torch.stack(maps, dim=1)) if return_weights else logits

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, return_weights: bool = False):
        return self.decode(self.encoder(images), tokens, return_weights)


def caption_loss(model: Captioner, batch) -> torch.Tensor:
    images, x, y = batch
    return masked_lm_loss(model(images, x), y)


@torch.no_grad()
def greedy_captions(model: Captioner, images: torch.Tensor, tokenizer, max_len: int | None = None,
                    return_weights: bool = False, batch_size: int = 500):
    """Greedy captions (cut at the first newline); with ``return_weights`` also, per image, the
    last decoder layer's cross-attention averaged over heads, (len(caption), N) per caption."""
    model.eval()
    stop = tokenizer.encode("\n")[0]
    max_len = max_len or model.max_len
    device = next(model.parameters()).device
    caps, weights = [], []
    for s in range(0, len(images), batch_size):
        imgs = images[s:s + batch_size].to(device)
        feats = model.encoder(imgs)
        tokens = torch.full((len(imgs), 1), stop, dtype=torch.long, device=device)
        for _ in range(max_len - 1):
            logits = model.decode(feats, tokens)
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            if (tokens[:, 1:] == stop).any(1).all():
                break
        if return_weights:
            _, maps = model.decode(feats, tokens, return_weights=True)
            maps = maps[:, -1].mean(1).cpu()  # last layer, heads averaged: (B, T, N)
        for r in range(len(imgs)):
            text = tokenizer.decode(tokens[r, 1:].cpu()).split("\n", 1)[0]
            caps.append(text)
            if return_weights:
                weights.append(maps[r, :len(text)])
    return (caps, weights) if return_weights else caps


@torch.no_grad()
def teacher_forced_attention(model: Captioner, images: torch.Tensor, captions: Sequence[str], tokenizer,
                             batch_size: int = 500) -> list[torch.Tensor]:
    """Per image, the last decoder layer's cross-attention (heads averaged) while the decoder reads
    the given caption (teacher forcing: "\\n" + caption in, as in training): (len(caption), N), row t
    the attention used to predict ``caption[t]``, as :func:`greedy_captions` returns for its own."""
    if len(images) != len(captions):
        raise ValueError(f"expected as many images as captions, received {len(images)} and {len(captions)}")
    if any(len(c) + 1 > model.max_len for c in captions):
        raise ValueError(f"captions must be shorter than max_len={model.max_len} characters")
    model.eval()
    stop = tokenizer.encode("\n")[0]
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(images), batch_size):
        caps = captions[s:s + batch_size]
        T = 1 + max(len(c) for c in caps)
        tokens = torch.full((len(caps), T), stop, dtype=torch.long)
        for r, c in enumerate(caps):
            tokens[r, 1:1 + len(c)] = torch.tensor(tokenizer.encode(c), dtype=torch.long)
        _, maps = model(images[s:s + batch_size].to(device), tokens.to(device), return_weights=True)
        maps = maps[:, -1].mean(1).float().cpu()  # causal: the padding after a caption changes none of its rows
        out.extend(maps[r, :len(c)] for r, c in enumerate(caps))
    return out


def caption_scores(predicted: Sequence[str], reference: Sequence[str]) -> dict[str, float]:
    """Exact match of whole captions and word accuracy (words compared position by position,
    over the reference's words)."""
    if len(predicted) != len(reference) or not reference:
        raise ValueError(f"expected equally many predicted and reference captions, received "
                         f"{len(predicted)} and {len(reference)}")
    exact = sum(p == r for p, r in zip(predicted, reference, strict=True)) / len(reference)
    hit = tot = 0
    for p, r in zip(predicted, reference, strict=True):
        pw, rw = p.split(), r.split()
        hit += sum(a == b for a, b in zip(pw, rw, strict=False))
        tot += len(rw)
    return {"exact_match": exact, "word_accuracy": hit / tot}
