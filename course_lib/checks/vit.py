"""Checkers for notebook 05 (the Vision Transformer)."""
from __future__ import annotations

import torch

from ..models import vit
from ..models.vit import ViT
from ._core import CheckFailed, checker, expect_close, expect_grads, expect_tensor


def _images(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@checker("patchify", hint="reshape (B, C, H, W) to (B, C, H/P, P, W/P, P), move the two grid axes to the "
                          "front with permute, then flatten: patches row by row, each as (C, P, P).")
def patchify(student_patchify) -> str:
    """``patchify(x, patch_size)``: (B, C, H, W) -> (B, N, C P^2) in the layout of a Conv2d weight."""

    cases = [((2, 3, 8, 8), 4), ((1, 3, 6, 9), 3), ((3, 1, 8, 8), 2), ((2, 2, 4, 8), 2), ((1, 3, 4, 4), 4)]
    for k, (shape, P) in enumerate(cases):
        x = _images(shape, k)
        out = student_patchify(x, P)
        want = vit.patchify(x, P)
        expect_tensor(out, f"patchify of a {shape} batch with P={P}", tuple(want.shape), dtype=x.dtype,
                      device=x.device)
        if not torch.allclose(out.double(), want.double()):
            same_set = torch.allclose(out.sort(-1).values.double(), want.sort(-1).values.double())
            if same_set:
                raise CheckFailed(f"patchify({shape}, P={P}) has the right pixels in each patch but in the wrong "
                                  f"order: flatten each patch as (channel, row, column), like a Conv2d weight")
            raise CheckFailed(f"patchify({shape}, P={P}) differs from the reference: patch i should be the i-th "
                              f"P x P block in row-major order (a plain reshape mixes rows of different patches)")
    # The first patch of an image is its top-left corner.
    x = _images((1, 3, 8, 8), 9)
    expect_close(student_patchify(x, 4)[0, 0], x[0, :, :4, :4].reshape(-1), "the first patch")
    x = _images((2, 2, 4, 6), 10).requires_grad_()
    expect_grads(student_patchify(x, 2), {"x": x}, lambda x_: vit.patchify(x_, 2), "patchify(x)")
    return "patches in row-major order, each flattened as (C, P, P)"


@checker("patch_embedding", hint="z_0 = [x_class; patchify(x) W_P^T + b] + E: project the patches, put the class "
                                 "token first, then add the position embeddings to all N+1 tokens.")
def patch_embedding(student_embed) -> str:
    """``embed(x, weight, bias, cls_token, pos_embed, patch_size)`` -> z_0 (B, N+1, d) (ViT eq. 1)."""

    g = torch.Generator().manual_seed(5)
    for B, C, H, W, P, d in [(2, 3, 8, 8, 4, 16), (3, 1, 8, 8, 2, 8), (1, 3, 12, 6, 3, 12), (2, 2, 4, 4, 2, 5)]:
        x = torch.randn(B, C, H, W, generator=g)
        N = (H // P) * (W // P)
        leaves = {"x": x, "weight": torch.randn(d, C * P * P, generator=g) * 0.2, "bias": torch.randn(d, generator=g),
                  "cls_token": torch.randn(1, 1, d, generator=g), "pos_embed": torch.randn(1, N + 1, d, generator=g)}
        for t in leaves.values():
            t.requires_grad_()
        out = student_embed(*leaves.values(), P)
        want = vit.embed_patches(*leaves.values(), P)
        pos = leaves["pos_embed"]
        what = f"z_0 for {B} images of {C}x{H}x{W}, P={P}, d={d}"
        expect_tensor(out, what, (B, N + 1, d), dtype=x.dtype, device=x.device)
        expect_close(out[:, 0], want[:, 0], "token 0 (class token + E_pos[0])",
                     hint="the class token goes first, and it gets a position embedding too")
        expect_close(out[:, 1:] - pos[:, 1:], want[:, 1:] - pos[:, 1:], "the patch tokens without positions",
                     hint="each patch is projected with W_P (weight) and bias, in patchify's order")
        expect_close(out, want, "z_0", hint="add E_pos to every token, the class token included")
        expect_grads(out, leaves, lambda *t, P=P: vit.embed_patches(*t, P), what,
                     hint="the weight, bias, class token and positions are trained through z_0")
    return "class token first, positions added to all N+1 tokens"


@checker("vit_forward", hint="z_0 from the patches, class token and positions; run model.encoder; the logits are "
                             "model.head applied to the class token's output z_L[:, 0].")
def vit_forward(student_forward) -> str:
    """``vit_forward(model, x)`` -> logits (B, n_classes), equal to the course ViT's ``model(x)``."""

    torch.manual_seed(11)
    for cfg, shape in [(dict(image_size=8, patch_size=2, in_channels=1, n_classes=10, d_model=16, n_layers=2,
                             n_heads=2), (3, 1, 8, 8)),
                       (dict(image_size=12, patch_size=4, in_channels=3, n_classes=5, d_model=24, n_layers=1,
                             n_heads=4), (2, 3, 12, 12))]:
        model = ViT(**cfg).eval()
        with torch.no_grad():  # a non-zero head and position embeddings, so that mistakes show
            torch.nn.init.normal_(model.head.weight, std=0.5)
            torch.nn.init.normal_(model.pos_embed, std=1.0)
            torch.nn.init.normal_(model.cls_token, std=1.0)
        x = _images(shape, 3).requires_grad_()
        out = student_forward(model, x)
        with torch.no_grad():
            want = model(x)
        expect_tensor(out, f"logits for a {shape} batch", tuple(want.shape), dtype=want.dtype, device=want.device)
        expect_close(out, want, "the logits", atol=1e-4,
                     hint="use the class token's final state (index 0), not the mean of all tokens")
        expect_grads(out, {"x": x}, lambda x_, m=model: m(x_), "the logits", shared=dict(model.named_parameters()),
                     atol=1e-4, hint="the whole forward pass is trained: no torch.no_grad() or .detach() inside")
    return "logits equal model(x)"
