"""The Vision Transformer (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words"), built on the
course's transformer encoder: an image becomes a sequence of patches, and the encoder that reads
words reads them.

Notation (the lecture's: E is the position embedding, as in notebook 03; the ViT paper calls the
patch projection E, we call it W_P): an image x in R^{C x H x W} is cut into N = (H/P)(W/P) patches of
P x P pixels; each patch is flattened to x_p^i in R^{C P^2} (channel, then row, then column, the
order of a ``Conv2d`` weight). The patch embedding is a linear map W_P in R^{C P^2 x d}; a learned
class token x_class is prepended and learned position embeddings E in R^{(N+1) x d} are added:

    z_0 = [x_class; x_p^1 W_P; ...; x_p^N W_P] + E                   (ViT eq. 1)
    z_L = TransformerEncoder(z_0)        (pre-norm blocks + final LayerNorm)
    y   = head(z_L^0)                    (logits from the class token)

Because every patch goes through the same W_P and patches do not overlap, x_p W_P is exactly a
``Conv2d(C, d, kernel_size=P, stride=P)`` whose weight is W_P reshaped to (d, C, P, P)
(:meth:`PatchEmbedding.as_conv`). Looking inside: :func:`cls_attention`, :func:`attention_rollout`
(Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers") and
:func:`position_similarity`. :class:`SmallCNN` is the baseline of the same size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..measure import count_parameters
from ..validate import floating, positive_int
from .transformer import TransformerEncoder, block_param_count

__all__ = [
    "check_images", "patchify", "unpatchify", "embed_patches", "vit_forward", "PatchEmbedding", "ViT",
    "SmallCNN", "vit_param_count", "VIT_B_16", "cls_attention", "attention_rollout", "position_similarity",
]

# The ViT-B/16 configuration of the paper (and of torchvision.models.vit_b_16).
VIT_B_16 = dict(image_size=224, patch_size=16, in_channels=3, n_classes=1000, d_model=768, n_layers=12,
                n_heads=12, mlp_ratio=4.0)


def check_images(x: torch.Tensor, patch_size: int, in_channels: int | None = None,
                 image_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
    """Validate a (B, C, H, W) batch for patches of ``patch_size``; returns the patch grid (H/P, W/P)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected a tensor of images (B, C, H, W), received {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), received shape {tuple(x.shape)}")
    floating(x, "images (B, C, H, W)")  # integer pixels: convert (e.g. x.float() / 255) before the model
    if patch_size <= 0:
        raise ValueError(f"patch size must be positive, received {patch_size}")
    _, C, H, W = x.shape
    if in_channels is not None and C != in_channels:
        raise ValueError(f"expected {in_channels} channel(s) (images of shape (B, {in_channels}, H, W)), "
                         f"received {C} channel(s) in shape {tuple(x.shape)}")
    if image_size is not None:
        hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if (H, W) != hw:
            raise ValueError(f"expected images of {hw[0]}x{hw[1]} pixels, received {H}x{W}")
    if H % patch_size or W % patch_size:
        raise ValueError(f"image size {H}x{W} is not divisible by the patch size {patch_size}: "
                         f"expected height and width that are multiples of {patch_size}")
    return H // patch_size, W // patch_size


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C P^2): non-overlapping P x P patches in row-major order, each
    flattened as (channel, row, column), the layout of a Conv2d weight (d, C, P, P)."""
    gh, gw = check_images(x, patch_size)
    B, C, _, _ = x.shape
    P = patch_size
    x = x.reshape(B, C, gh, P, gw, P)           # split H into (gh, P) and W into (gw, P)
    x = x.permute(0, 2, 4, 1, 3, 5)              # (B, gh, gw, C, P, P)
    return x.reshape(B, gh * gw, C * P * P)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, C P^2) -> (B, C, gh P, gw P)."""
    if patches.dim() != 3:
        raise ValueError(f"expected patches of shape (B, N, C*P*P), received {tuple(patches.shape)}")
    B, N, D = patches.shape
    gh, gw = grid
    P = patch_size
    if N != gh * gw or D != channels * P * P:
        raise ValueError(f"expected (B, {gh * gw}, {channels * P * P}) for a {gh}x{gw} grid of {channels}-channel "
                         f"{P}x{P} patches, received {tuple(patches.shape)}")
    x = patches.reshape(B, gh, gw, channels, P, P).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, channels, gh * P, gw * P)


def embed_patches(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cls_token: torch.Tensor,
                  pos_embed: torch.Tensor, patch_size: int) -> torch.Tensor:
    """z_0 = [x_class; x_p^1 W_P; ...; x_p^N W_P] + E (ViT eq. 1), with W_P given as a Linear weight (d, C P^2).

    ``cls_token`` is (d,) or (1, 1, d); ``pos_embed`` is (N+1, d) or (1, N+1, d). Returns (B, N+1, d).
    """
    tokens = F.linear(patchify(x, patch_size), weight, bias)       # (B, N, d)
    B, N, d = tokens.shape
    cls = cls_token.reshape(1, 1, d).expand(B, 1, d)
    pos = pos_embed.reshape(1, -1, d)
    if pos.size(1) != N + 1:
        raise ValueError(f"pos_embed must have N+1 = {N + 1} rows (N patches and the class token), "
                         f"received {pos.size(1)}")
    return torch.cat([cls, tokens], dim=1) + pos


def vit_forward(model: ViT, x: torch.Tensor) -> torch.Tensor:
    """The ViT forward pass to logits (B, n_classes), written out from the model's parts."""
    z = embed_patches(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, model.cls_token,
                      model.pos_embed, model.patch_size)
    z = model.encoder(model.dropout(z))
    return model.head(z[:, 0])


class PatchEmbedding(nn.Module):
    """x -> patchify(x) W_P + b: one linear map shared by all patches (``proj``: Linear(C P^2, d))."""

    def __init__(self, patch_size: int, in_channels: int, d_model: int):
        super().__init__()
        if patch_size <= 0 or in_channels <= 0 or d_model <= 0:
            raise ValueError(f"patch_size, in_channels and d_model must be positive, received "
                             f"{patch_size}, {in_channels}, {d_model}")
        self.patch_size, self.in_channels = patch_size, in_channels
        self.proj = nn.Linear(in_channels * patch_size * patch_size, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.patch_size, self.in_channels)
        return self.proj(patchify(x, self.patch_size))

    def as_conv(self) -> nn.Conv2d:
        """The same map as a strided convolution: weight W_P reshaped to (d, C, P, P), stride P."""
        d = self.proj.out_features
        P = self.patch_size
        conv = nn.Conv2d(self.in_channels, d, kernel_size=P, stride=P, device=self.proj.weight.device,
                         dtype=self.proj.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.proj.weight.reshape(d, self.in_channels, P, P))
            conv.bias.copy_(self.proj.bias)
        return conv


class ViT(nn.Module):
    """Vision Transformer classifier: patch embedding, class token, learned positions, pre-norm encoder
    (``course_lib.models.transformer.TransformerEncoder``), linear head on the class token."""

    def __init__(self, image_size: int | tuple[int, int], patch_size: int, in_channels: int, n_classes: int,
                 d_model: int, n_layers: int, n_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        for n, what in ((hw[0], "image height"), (hw[1], "image width"), (patch_size, "patch_size")):
            positive_int(n, what)
        if hw[0] % patch_size or hw[1] % patch_size:
            raise ValueError(f"image size {hw[0]}x{hw[1]} is not divisible by the patch size {patch_size}: "
                             f"expected multiples of {patch_size}")
        if n_classes <= 0:
            raise ValueError(f"n_classes must be positive, received {n_classes}")
        self.image_size, self.patch_size, self.in_channels = hw, patch_size, in_channels
        self.grid = (hw[0] // patch_size, hw[1] // patch_size)
        self.n_patches = self.grid[0] * self.grid[1]
        self.patch_embed = PatchEmbedding(patch_size, in_channels, d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.n_patches + 1, d_model))
        self.dropout = nn.Dropout(dropout)
        self.encoder = TransformerEncoder(n_layers, d_model, n_heads, mlp_ratio, dropout)
        self.head = nn.Linear(d_model, n_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.zeros_(self.head.weight)  # start from uniform predictions, as the ViT paper does

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """z_0: (B, C, H, W) -> (B, N+1, d)."""
        check_images(x, self.patch_size, self.in_channels, self.image_size)
        B = x.size(0)
        tokens = self.patch_embed(x)
        z = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1) + self.pos_embed
        return self.dropout(z)

    def forward(self, x: torch.Tensor, *, return_weights: bool = False):
        """Logits (B, n_classes); with ``return_weights`` also the attention maps (B, L, h, N+1, N+1)."""
        z = self.embed(x)
        if return_weights:
            z, maps = self.encoder(z, return_weights=True)
            return self.head(z[:, 0]), maps
        return self.head(self.encoder(z)[:, 0])


class SmallCNN(nn.Module):
    """The baseline: three 3x3 conv stages (conv-BN-ReLU, 2x max-pool between stages) of widths
    w, 2w, 4w, global average pooling, a linear head. :meth:`matching` picks w for a parameter budget."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 32, convs_per_stage: int = 1):
        super().__init__()
        if width <= 0 or convs_per_stage <= 0:
            raise ValueError(f"width and convs_per_stage must be positive, received {width}, {convs_per_stage}")
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        c = in_channels
        for stage, w in enumerate((width, 2 * width, 4 * width)):
            if stage > 0:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.size(1) != self.in_channels:
            raise ValueError(f"expected images of shape (B, {self.in_channels}, H, W), received {tuple(x.shape)}")
        return self.head(self.features(x).mean(dim=(2, 3)))

    @classmethod
    def matching(cls, n_params: int, in_channels: int, n_classes: int, convs_per_stage: int = 1) -> SmallCNN:
        """The SmallCNN whose parameter count is closest to ``n_params``."""
        best, best_gap = None, math.inf
        for w in range(4, 257):
            with torch.device("meta"):
                m = cls(in_channels, n_classes, w, convs_per_stage)
            gap = abs(count_parameters(m) - n_params)
            if gap < best_gap:
                best, best_gap = w, gap
        return cls(in_channels, n_classes, best, convs_per_stage)


# Notebook 01's parameter counter, under the name notebook 05 uses (works on the meta device).


def vit_param_count(image_size: int, patch_size: int, in_channels: int, n_classes: int, d_model: int,
                    n_layers: int, n_heads: int = 1, mlp_ratio: float = 4.0) -> int:
    """Parameters by formula: patch embedding (C P^2 d + d), class token d, positions (N+1) d,
    L blocks (12 d^2 + 13 d each for r = 4), final LayerNorm 2d, head d K + K."""
    del n_heads  # the count does not depend on how d is split into heads
    N = (image_size // patch_size) ** 2
    d = d_model
    return ((in_channels * patch_size ** 2 * d + d) + d + (N + 1) * d
            + n_layers * block_param_count(d, mlp_ratio) + 2 * d + (d * n_classes + n_classes))


def cls_attention(maps: torch.Tensor, grid: tuple[int, int], layer: int = -1) -> torch.Tensor:
    """How much the class token attends to each patch: (B, L, h, N+1, N+1) -> (B, h, gh, gw)."""
    if maps.dim() != 5:
        raise ValueError(f"expected maps of shape (B, layers, heads, N+1, N+1), received {tuple(maps.shape)}")
    gh, gw = grid
    if maps.size(-1) != gh * gw + 1:
        raise ValueError(f"a {gh}x{gw} grid needs maps over {gh * gw + 1} tokens, received {maps.size(-1)}")
    return maps[:, layer, :, 0, 1:].reshape(maps.size(0), maps.size(2), gh, gw)


def attention_rollout(maps: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): average the heads, account for the residual
    connection as A' = (1 - a) A + a I with a = ``residual``, renormalise the rows, and multiply
    through the layers: R = A'_L ... A'_1. Input (B, L, h, n, n), output (B, n, n); row 0 says how
    much each input token flows into the class token's final representation."""
    if maps.dim() != 5 or maps.size(-1) != maps.size(-2):
        raise ValueError(f"expected maps of shape (B, layers, heads, n, n), received {tuple(maps.shape)}")
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual weight must be in [0, 1], received {residual}")
    A = maps.float().mean(dim=2)                                      # (B, L, n, n)
    eye = torch.eye(A.size(-1), device=A.device)
    A = (1 - residual) * A + residual * eye
    A = A / A.sum(dim=-1, keepdim=True)
    R = A[:, 0]
    for layer in range(1, A.size(1)):
        R = A[:, layer] @ R
    return R


def position_similarity(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Cosine similarity of each patch's learned position embedding with all others (class token
    excluded): (1, N+1, d) or (N+1, d) -> (gh, gw, gh, gw); entry [i, j] is a gh x gw map."""
    pos = pos_embed.detach().reshape(-1, pos_embed.size(-1))[1:].float()
    gh, gw = grid
    if pos.size(0) != gh * gw:
        raise ValueError(f"a {gh}x{gw} grid needs {gh * gw} patch positions, received {pos.size(0)}")
    pos = F.normalize(pos, dim=-1)
    return (pos @ pos.T).reshape(gh, gw, gh, gw)
