"""Checkers for notebook 00 (getting started)."""
from __future__ import annotations

import torch

from ._core import CheckFailed, checker, expect, expect_close


def _reference_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.softmax(x, dim=dim)


@checker("softmax", hint="subtract the row maximum before exp, then divide by the row sum.")
def softmax(student_softmax) -> str:
    """Warm-up: a numerically stable softmax over the last dimension."""
    g = torch.Generator().manual_seed(0)
    cases = [torch.randn(5, generator=g), torch.randn(3, 7, generator=g), torch.randn(2, 3, 4, generator=g)]
    for x in cases:
        out = student_softmax(x)
        expect_close(out, _reference_softmax(x), f"softmax of a {tuple(x.shape)} input",
                     hint="softmax normalises along the last dimension")
    big = torch.tensor([1000.0, 1001.0, 1002.0])
    out = student_softmax(big)
    if not isinstance(out, torch.Tensor) or not torch.isfinite(out).all():
        raise CheckFailed("softmax([1000, 1001, 1002]) overflowed to inf/nan: exp(1000) is too large for float32")
    expect_close(out, _reference_softmax(big), "softmax of large logits")
    expect(out.dtype == big.dtype, f"output dtype {out.dtype}, expected {big.dtype}")
    return "stable for large inputs too"
