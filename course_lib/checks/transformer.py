"""Checkers for notebook 04 (the transformer): splitting and merging heads, the block's forward
pass, the parameter-count formula. Answers come from :mod:`course_lib.models.transformer`."""
from __future__ import annotations

import copy

import torch

from ..models import transformer as ref
from ._core import checker, expect, expect_close, expect_count, expect_grads, expect_tensor


@checker("split_heads", hint="view (B, n, d) as (B, n, h, d/h), then move the head axis forward: (B, h, n, d/h).")
def split_heads(student) -> str:
    """``student(x, n_heads)``: (B, n, d) -> (B, h, n, d/h), head i gets features [i d/h, (i+1) d/h)."""
    g = torch.Generator().manual_seed(4)
    for B, n, d, h in [(2, 5, 12, 3), (1, 7, 16, 4), (3, 2, 8, 8), (2, 4, 6, 1)]:
        x = torch.randn(B, n, d, generator=g)
        what = f"split_heads of {(B, n, d)} with {h} heads"
        out = expect_tensor(student(x, h), what, shape=(B, h, n, d // h), dtype=x.dtype, device=x.device)
        if h > 1:
            expect_close(out[:, 1, :, :], x[:, :, d // h: 2 * d // h], "head 1",
                         hint="head 1 must hold features d/h .. 2d/h of every token, for all n tokens")
        expect_close(out, ref.split_heads(x, h), what)
    x = torch.randn(2, 3, 8, generator=g).requires_grad_()
    expect_grads(student(x, 2), {"x": x}, lambda x_: ref.split_heads(x_, 2), "split_heads(x)")
    return "(B, n, d) -> (B, h, n, d/h)"


@checker("merge_heads", hint="the inverse of split_heads: transpose back to (B, n, h, d/h), then reshape to (B, n, d).")
def merge_heads(student) -> str:
    """``student(x)``: (B, h, n, d/h) -> (B, n, d), concatenating the heads feature-wise."""
    g = torch.Generator().manual_seed(5)
    for B, h, n, dh in [(2, 3, 5, 4), (1, 4, 7, 2), (2, 2, 2, 2), (3, 1, 4, 5)]:
        x = torch.randn(B, h, n, dh, generator=g)
        what = f"merge_heads of {(B, h, n, dh)}"
        out = expect_tensor(student(x), what, shape=(B, n, h * dh), dtype=x.dtype, device=x.device)
        expect_close(out, ref.merge_heads(x), what,
                     hint="reshaping (B, h, n, d/h) directly mixes tokens; transpose(1, 2) first")
        y = torch.randn(B, n, h * dh, generator=g)
        expect_close(student(ref.split_heads(y, h)), y, "merge_heads(split_heads(y))")
    x = torch.randn(2, 3, 4, 2, generator=g).requires_grad_()
    expect_grads(student(x), {"x": x}, ref.merge_heads, "merge_heads(x)")
    return "merge_heads(split_heads(x)) == x"


def _block(d: int, h: int, built_causal: bool) -> ref.Block:
    torch.manual_seed(d + 100 * built_causal)
    blk = ref.Block(d, h, causal=built_causal).eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters, so LN placement matters
        for ln in (blk.ln1, blk.ln2):
            ln.weight.normal_(1.0, 0.3)
            ln.bias.normal_(0.0, 0.3)
    return blk


def _expected(blk: ref.Block, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """The block's forward pass with the mask ``causal`` asks for, on a copy (the block keeps its flag)."""
    twin = copy.deepcopy(blk)
    twin.causal = causal
    return twin(x)


@checker("block_forward", hint="pre-norm: x = x + attn(ln1(x), causal=causal), then x = x + mlp(ln2(x)); "
         "the argument `causal` decides the mask, whatever the block was built with.")
def block_forward(student) -> str:
    """``student(block, x, causal=False)`` reproduces a pre-norm :class:`Block`'s forward pass with the
    mask that ``causal`` asks for."""
    g = torch.Generator().manual_seed(6)
    # blocks built with the opposite flag, too: the argument decides (block(x) is not the answer)
    for d, h, n, causal, built in [(16, 4, 6, False, False), (24, 3, 5, True, False), (8, 2, 4, False, True),
                                   (16, 2, 7, True, True)]:
        blk = _block(d, h, built)
        kind = "decoder (causal=True)" if causal else "encoder (causal=False)"
        x = torch.randn(2, n, d, generator=g) * 2 + 1
        with torch.no_grad():
            out = expect_tensor(student(blk, x, causal=causal), f"block output, {kind}", shape=(2, n, d),
                                dtype=x.dtype, device=x.device)
            expected = _expected(blk, x, causal)
            if causal:
                for t in (n - 1, n // 2):  # a new random vector at token t: LayerNorm cannot hide it
                    x2 = x.clone()
                    x2[:, t] = torch.randn(2, d, generator=g) * 2
                    out2 = expect_tensor(student(blk, x2, causal=True), f"block output, {kind}", shape=(2, n, d))
                    expect_close(out2[:, :t], out[:, :t], f"decoder outputs before a changed token {t}",
                                 hint="the decoder block must pass causal=True to block.attn")
        expect_close(out, expected, f"block output (d={d}, heads={h}, {kind}, block built with causal={built})",
                     atol=1e-4, rtol=1e-4,
                     hint="use the argument causal for the mask (block(x) uses the block's own flag)"
                     if causal != built else "")
    blk = _block(8, 2, False)
    x = (torch.randn(2, 4, 8, generator=g)).requires_grad_()
    expect_grads(student(blk, x, causal=True), {"x": x}, lambda x_: _expected_shared(blk, x_, True),
                 "the block output", shared=dict(blk.named_parameters()), atol=1e-4)
    return "encoder and decoder (causal) blocks match"


def _expected_shared(blk: ref.Block, x: torch.Tensor, causal: bool) -> torch.Tensor:
    saved, blk.causal = blk.causal, causal
    try:
        return blk(x)
    finally:
        blk.causal = saved


@checker("block_param_count", hint="attention: W_Q, W_K, W_V, W_O (each d x d, bias d); MLP: d x rd and rd x d "
         "(biases rd and d); two LayerNorms (scale and shift, d each).")
def block_param_count(student) -> str:
    """``student(d_model, mlp_ratio=4.0, bias=True)`` -> the parameters of one block (an int, a numpy
    integer or a 0-d integer tensor)."""
    for d, r, bias in [(64, 4.0, True), (48, 2.0, True), (32, 4.0, False), (768, 4.0, True), (40, 3.0, False),
                       (12288, 4.0, True)]:
        got = expect_count(student(d, r, bias), f"the count for d_model={d}, mlp_ratio={r}, bias={bias}")
        with torch.device("meta"):
            counted = sum(p.numel() for p in ref.Block(d, max(1, d // 16), mlp_ratio=r, bias=bias).parameters())
        expect(got == counted, f"d_model={d}, mlp_ratio={r}, bias={bias}: you count {got:,} parameters, the module "
               f"has {counted:,} (off by {got - counted:+,})")
    got = expect_count(student(768), "block_param_count(768), with the default mlp_ratio=4.0 and bias=True")
    expect(got == ref.block_param_count(768), f"block_param_count(768) gives {got:,}, expected "
           f"{ref.block_param_count(768):,}: the defaults are mlp_ratio=4.0 and bias=True (the notebook calls it so)")
    return "12 d^2 + 13 d for d = 768: 7,087,872 per GPT-2 small block"
