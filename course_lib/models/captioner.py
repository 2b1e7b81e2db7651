"""Vision meets language (notebook 09): an image captioner with cross-attention, and a
LLaVA-style model that feeds projected image patches to a pretrained language model.

**Captioner** (the transformer version of Xu et al., 2015, "Show, Attend and Tell"): a ViT
encoder (notebook 05's patch embedding and pre-norm encoder, no class token) turns an image into
N patch features F in R^{N x d}; a character decoder predicts the caption one character at a time.
Each decoder block has three sub-layers, all pre-norm with residual connections:

    H = H + SelfAttn(LN(H))            (causal: character t sees characters <= t)
    H = H + CrossAttn(LN(H), F)        (Q = LN(H) W_Q; K = F W_K, V = F W_V; A in R^{T x N})
    H = H + MLP(LN(H))

Row t of the cross-attention A says which patches the decoder looked at to write character t+1:
the "where did it look" maps of the notebook.

**LLaVA-style** (Liu et al., 2023, "Visual Instruction Tuning"): a frozen vision encoder's patch
features go through a trainable projector (a 2-layer MLP, as in LLaVA-1.5) into the token
embedding space of a pretrained GPT; the N projected patches are a prefix of "visual tokens"
before the text, and only the answer's tokens are learned (label -100 elsewhere).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..instruct import IGNORE, length_groups, sft_loss
from .transformer import MLP, MultiHeadAttention, TransformerEncoder
from .vit import PatchEmbedding, check_images

__all__ = ["PatchEncoder", "DecoderBlock", "Captioner", "cross_attention", "word_attention", "Projector",
           "prefix_sequence", "VisualLM", "caption_batches", "caption_loss", "greedy_captions", "caption_scores",
           "vqa_batches", "vqa_accuracy"]


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
        if tokens.dim() != 2 or tokens.size(0) != feats.size(0):
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


def caption_batches(data, tokenizer, batch_size: int, seed: int = 0):
    """``i -> (images, x, y)`` for :func:`course_lib.train.fit`: x = "\\n" + caption (the newline is
    the start token), y = caption + "\\n" (it is the stop token too), right-padded with label -100."""
    stop = tokenizer.encode("\n")[0]
    encoded = [torch.tensor(tokenizer.encode(c + "\n")) for c in data.captions]

    def get(i: int):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        idx = torch.randint(len(encoded), (batch_size,), generator=g).tolist()
        T = max(len(encoded[j]) for j in idx)
        x = torch.full((batch_size, T), stop, dtype=torch.long)
        y = torch.full((batch_size, T), IGNORE, dtype=torch.long)
        for r, j in enumerate(idx):
            e = encoded[j]
            x[r, 1:len(e)] = e[:-1]
            y[r, :len(e)] = e
        return data.images[idx], x, y

    return get


def caption_loss(model: Captioner, batch) -> torch.Tensor:
    images, x, y = batch
    return sft_loss(model(images, x), y)


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


# ---------------------------------------------------------------------------------------------
# LLaVA-style: projected patches as a prefix of a pretrained GPT
# ---------------------------------------------------------------------------------------------

class Projector(nn.Module):
    """Patch features (B, N, d_vision) -> visual tokens (B, N, d_lm): Linear, GELU, Linear
    (LLaVA-1.5's projector; LLaVA-1 used a single linear map)."""

    def __init__(self, d_vision: int, d_lm: int):
        super().__init__()
        self.d_vision, self.d_lm = d_vision, d_lm
        self.fc1 = nn.Linear(d_vision, d_lm)
        self.fc2 = nn.Linear(d_lm, d_lm)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.dim() != 3 or feats.size(-1) != self.d_vision:
            raise ValueError(f"expected patch features (B, N, {self.d_vision}), received {tuple(feats.shape)}")
        return self.fc2(F.gelu(self.fc1(feats)))


def prefix_sequence(image_tokens: torch.Tensor, text_embeds: torch.Tensor, labels: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The LM's input: [image tokens; text embeddings] (B, N + T, d), and labels (B, N + T): -100 at
    the N image positions (nothing to predict there), then the text's labels."""
    if image_tokens.dim() != 3 or text_embeds.dim() != 3:
        raise ValueError(f"expected image_tokens (B, N, d) and text_embeds (B, T, d), received "
                         f"{tuple(image_tokens.shape)} and {tuple(text_embeds.shape)}")
    B, N, d = image_tokens.shape
    if text_embeds.shape[0] != B or text_embeds.shape[2] != d:
        raise ValueError(f"expected text_embeds ({B}, T, {d}), received {tuple(text_embeds.shape)}")
    if tuple(labels.shape) != tuple(text_embeds.shape[:2]):
        raise ValueError(f"expected labels {tuple(text_embeds.shape[:2])}, received {tuple(labels.shape)}")
    pad = torch.full((B, N), IGNORE, dtype=labels.dtype, device=labels.device)
    return torch.cat([image_tokens, text_embeds], dim=1), torch.cat([pad, labels], dim=1)


class VisualLM(nn.Module):
    """Vision encoder (frozen) -> :class:`Projector` -> prefix of a pretrained :class:`GPT`.

    ``forward(images, x)`` returns logits (B, N + T, V) for text ids ``x`` (B, T) after the N
    visual tokens. ``freeze(lm=True)`` trains the projector alone (LLaVA's stage 1);
    ``freeze(lm=False)`` trains the projector and the LM (stage 2). The encoder stays frozen."""

    def __init__(self, vision: PatchEncoder, lm, projector: Projector | None = None):
        super().__init__()
        self.vision, self.lm = vision, lm
        self.projector = projector or Projector(vision.d_model, lm.config.n_embd)
        self.n_image_tokens = vision.n_patches
        if self.n_image_tokens >= lm.config.block_size:
            raise ValueError(f"{self.n_image_tokens} image tokens leave no room in the LM's context "
                             f"block_size={lm.config.block_size}")
        self.freeze(lm=True)

    def freeze(self, lm: bool = True) -> None:
        for p in self.vision.parameters():
            p.requires_grad_(False)
        for p in self.lm.parameters():
            p.requires_grad_(not lm)
        for p in self.projector.parameters():
            p.requires_grad_(True)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        self.vision.eval()
        with torch.no_grad():
            feats = self.vision(images)
        return self.projector(feats)

    def lm_logits(self, embeds: torch.Tensor) -> torch.Tensor:
        """The GPT's forward pass from input embeddings (B, n, d) instead of token ids."""
        return self.lm(embeds=embeds)

    def forward(self, images: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        img = self.image_tokens(images)
        if x.dim() != 2 or x.size(0) != img.size(0):
            raise ValueError(f"expected text ids (B={img.size(0)}, T), received {tuple(x.shape)}")
        return self.lm_logits(torch.cat([img, self.lm.wte(x)], dim=1))

    def loss(self, batch) -> torch.Tensor:
        images, x, y = batch
        img = self.image_tokens(images)
        embeds, labels = prefix_sequence(img, self.lm.wte(x), y)
        return sft_loss(self.lm_logits(embeds), labels)

    @torch.no_grad()
    def answer(self, images: torch.Tensor, prompts: Sequence[str], tokenizer, max_new_tokens: int = 12,
               batch_size: int = 256) -> list[str]:
        """Greedy answers to ``prompts`` about ``images`` (one each), cut at the first newline."""
        if len(images) != len(prompts):
            raise ValueError(f"expected one prompt per image, received {len(images)} images and {len(prompts)} prompts")
        was = self.training
        self.eval()
        device = next(self.projector.parameters()).device
        encoded = [tokenizer.encode(p) for p in prompts]
        out: list[str] = [""] * len(prompts)
        for n, chunk in length_groups(encoded, batch_size):
            new = min(max_new_tokens, self.lm.config.block_size - self.n_image_tokens - n)
            img = self.image_tokens(images[chunk].to(device))
            ids = torch.tensor([encoded[i] for i in chunk], device=device)
            for _ in range(new):
                logits = self.lm_logits(torch.cat([img, self.lm.wte(ids)], dim=1))
                ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            for i, row in zip(chunk, ids[:, n:].cpu(), strict=True):
                out[i] = tokenizer.decode(row).split("\n", 1)[0]
        self.train(was)
        return out


def vqa_batches(data, items: Sequence[tuple[int, str, str]], tokenizer, batch_size: int, seed: int = 0):
    """``i -> (images, x, y)`` for :func:`course_lib.train.fit`: random (image index, prompt, answer)
    items, the answer followed by the stop newline; the prompt's labels are masked
    (:func:`course_lib.instruct.mask_prompt_labels`) and the batch right-padded. A prompt is either
    the instruct template around a question or, for captions (LLaVA's stage 1), just ``"\n"``."""
    from ..instruct import mask_prompt_labels, pad_batch

    if not items:
        raise ValueError("need at least one (image index, prompt, answer) item")
    pad = tokenizer.encode("\n")[0]
    pairs = []
    for _, p, a in items:
        ids = tokenizer.encode(p)
        pairs.append(mask_prompt_labels(torch.tensor(ids + tokenizer.encode(a + "\n")), len(ids)))

    def get(i: int):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        idx = torch.randint(len(items), (batch_size,), generator=g).tolist()
        x, y = pad_batch([pairs[j] for j in idx], 10_000, pad)
        return data.images[[items[j][0] for j in idx]], x, y

    return get


def vqa_accuracy(model: VisualLM, data, qa: Sequence[tuple[int, str, str, str]], tokenizer) -> dict[str, float]:
    """Exact-match accuracy of the answers, overall (``"all"``) and per question kind."""
    from ..instruct import format_prompt

    if not qa:
        raise ValueError("need at least one question")
    answers = model.answer(data.images[[i for i, *_ in qa]], [format_prompt(q) for _, _, q, _ in qa], tokenizer)
    hits: dict[str, list[bool]] = {}
    for (_, kind, _, a), got in zip(qa, answers, strict=True):
        hits.setdefault(kind, []).append(got == a)
        hits.setdefault("all", []).append(got == a)
    return {k: sum(v) / len(v) for k, v in hits.items()}
