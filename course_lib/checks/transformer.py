"""Checkers for notebook 04 (the transformer): splitting and merging heads, the block's forward
pass, the parameter-count formula. Answers come from :mod:`course_lib.models.transformer`."""
from __future__ import annotations

import torch

from ..models import transformer as ref
from ._core import checker, expect, expect_close, expect_tensor


@checker("split_heads", hint="view (B, n, d) as (B, n, h, d/h), then move the head axis forward: (B, h, n, d/h).")
def split_heads(student) -> str:
    """``student(x, n_heads)``: (B, n, d) -> (B, h, n, d/h), head i gets features [i d/h, (i+1) d/h)."""
    g = torch.Generator().manual_seed(4)
    for B, n, d, h in [(2, 5, 12, 3), (1, 7, 16, 4), (3, 2, 8, 8)]:
        x = torch.randn(B, n, d, generator=g)
        out = expect_tensor(student(x, h), f"split_heads of {(B, n, d)} with {h} heads", shape=(B, h, n, d // h))
        expect_close(out[:, 1, :, :], x[:, :, d // h: 2 * d // h], "head 1",
                     hint="head 1 must hold features d/h .. 2d/h of every token, for all n tokens")
        expect_close(out, ref.split_heads(x, h), f"split_heads of {(B, n, d)}")
    return "(B, n, d) -> (B, h, n, d/h)"


@checker("merge_heads", hint="the inverse of split_heads: transpose back to (B, n, h, d/h), then reshape to (B, n, d).")
def merge_heads(student) -> str:
    """``student(x)``: (B, h, n, d/h) -> (B, n, d), concatenating the heads feature-wise."""
    g = torch.Generator().manual_seed(5)
    for B, h, n, dh in [(2, 3, 5, 4), (1, 4, 7, 2), (2, 2, 2, 2)]:
        x = torch.randn(B, h, n, dh, generator=g)
        out = expect_tensor(student(x), f"merge_heads of {(B, h, n, dh)}", shape=(B, n, h * dh))
        expect_close(out, ref.merge_heads(x), f"merge_heads of {(B, h, n, dh)}",
                     hint="reshaping (B, h, n, d/h) directly mixes tokens; transpose(1, 2) first")
        y = torch.randn(B, n, h * dh, generator=g)
        expect_close(student(ref.split_heads(y, h)), y, "merge_heads(split_heads(y))")
    return "merge_heads(split_heads(x)) == x"


@checker("block_forward", hint="pre-norm: x = x + attn(ln1(x)), then x = x + mlp(ln2(x)); "
         "pass causal=causal to the attention.")
def block_forward(student) -> str:
    """``student(block, x, causal=False)`` reproduces a pre-norm :class:`Block`'s forward pass."""
    g = torch.Generator().manual_seed(6)
    for d, h, n, causal in [(16, 4, 6, False), (24, 3, 5, True), (8, 2, 4, False)]:
        torch.manual_seed(d)
        blk = ref.Block(d, h, causal=causal).eval()
        with torch.no_grad():  # non-trivial LayerNorm parameters, so LN placement matters
            for ln in (blk.ln1, blk.ln2):
                ln.weight.normal_(1.0, 0.3)
                ln.bias.normal_(0.0, 0.3)
        x = torch.randn(2, n, d, generator=g) * 2 + 1
        with torch.no_grad():
            out = expect_tensor(student(blk, x, causal=causal), f"block output ({'decoder' if causal else 'encoder'})",
                                shape=(2, n, d))
            expected = blk(x)
        if causal:
            x2 = x.clone()
            x2[:, -1] += 1.0
            with torch.no_grad():
                out2 = student(blk, x2, causal=True)
            expect_close(out2[:, :-1], out[:, :-1], "decoder outputs before a changed last token",
                         hint="the decoder block must use a causal mask")
        expect_close(out, expected, f"block output (d={d}, heads={h}, {'decoder' if causal else 'encoder'})",
                     atol=1e-4, rtol=1e-4)
    return "encoder and decoder (causal) blocks match"


@checker("block_param_count", hint="attention: W_Q, W_K, W_V, W_O (each d x d, bias d); MLP: d x rd and rd x d "
         "(biases rd and d); two LayerNorms (scale and shift, d each).")
def block_param_count(student) -> str:
    """``student(d_model, mlp_ratio=4.0, bias=True)`` -> int, the parameters of one block."""
    for d, r, bias in [(64, 4.0, True), (48, 2.0, True), (32, 4.0, False), (768, 4.0, True)]:
        got = student(d, r, bias)
        counted = sum(p.numel() for p in ref.Block(d, max(1, d // 16), mlp_ratio=r, bias=bias).parameters())
        expect(isinstance(got, int) or (isinstance(got, float) and got.is_integer()),
               f"the count should be an integer, got {got!r}")
        expect(int(got) == counted, f"d_model={d}, mlp_ratio={r}, bias={bias}: you count {int(got):,} "
               f"parameters, the module has {counted:,} (off by {int(got) - counted:+,})")
    return "12 d^2 + 13 d for d = 768: 7,087,872 per GPT-2 small block"
