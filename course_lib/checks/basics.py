"""Checkers for notebook 00 (getting started)."""
from __future__ import annotations

import torch

from ._core import checker, expect, expect_close, expect_grads, expect_tensor

_softmax = torch.softmax  # the reference, as imported


def _reference_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return _softmax(x, dim=dim)


@checker("softmax", hint="subtract the row maximum before exp, then divide by the row sum.", forbid=("softmax",))
def softmax(student_softmax) -> str:
    """Warm-up: a numerically stable softmax over the last dimension, without torch.softmax."""
    g = torch.Generator().manual_seed(0)
    cases = [torch.randn(5, generator=g), torch.randn(3, 7, generator=g), torch.randn(2, 3, 4, generator=g),
             torch.randn(4, 6, generator=g, dtype=torch.float64)]
    for x in cases:
        what = f"softmax of a {tuple(x.shape)} {str(x.dtype).replace('torch.', '')} input"
        out = expect_tensor(student_softmax(x), what, shape=tuple(x.shape), dtype=x.dtype, device=x.device)
        expect_close(out, _reference_softmax(x), what, atol=1e-6,
                     hint="softmax normalises along the last dimension, so every row sums to 1")
    big = torch.tensor([1000.0, 1001.0, 1002.0])
    out = expect_tensor(student_softmax(big), "softmax([1000, 1001, 1002])", shape=(3,), dtype=big.dtype)
    expect(bool(torch.isfinite(out).all()),
           "softmax([1000, 1001, 1002]) overflowed to inf/nan: exp(1000) is too large for float32")
    expect_close(out, _reference_softmax(big), "softmax of large logits")
    rows = torch.tensor([[1000.0, 1001.0, 999.0], [0.0, 1.0, -1.0], [-1000.0, -999.0, -1001.0]])
    out = expect_tensor(student_softmax(rows), "softmax of rows of very different sizes", shape=(3, 3))
    expect(bool(torch.isfinite(out).all()),
           "softmax of the rows [1000, 1001, 999], [0, 1, -1], [-1000, -999, -1001] gave inf/nan: subtract each "
           "row's own maximum (x.max(dim=-1, keepdim=True)), not the maximum of the whole tensor")
    expect_close(out, _reference_softmax(rows), "softmax of rows of very different sizes",
                 hint="subtract each row's own maximum (keepdim=True), not one number for the whole tensor")
    x = (torch.randn(3, 5, generator=g) * 3).requires_grad_()
    expect_grads(student_softmax(x), {"x": x}, _reference_softmax, "softmax(x)")
    return "stable for large inputs too"
