"""A short device self-test: does this accelerator compute what the CPU computes?

Accelerators other than CUDA (Apple's MPS above all) have shipped silent wrong results: a matmul
of a transposed view, a softmax of large scores, an optimiser step that updated nothing. The
course's results are only as good as the device, so notebook 00 runs :func:`run` once::

    report = selftest.run(device)
    print(report)          # one line per check, then a plain verdict
    report.ok              # False: the device disagrees with the CPU beyond tolerance

Each check computes the same thing twice from the same inputs, on ``device`` and on the CPU
(in float64 where that is the reference), and compares them by relative error
``||x - x_ref|| / ||x_ref||``: a matmul (plain and of a transposed, non-contiguous view), a
batched linear layer, Adam's in-place ``addcdiv_`` on a transposed view, a softmax of large
scores, and a few AdamW training steps of a small MLP with LayerNorm and GELU (the losses of
every step, the final weights and the update). The linear layer and ``addcdiv_`` cases are the
shapes of two silent MPS bugs reported to PyTorch (#109457, #118115). The default tolerance, 1e-2, admits TF32 and
reduced-precision reductions (errors near 1e-3) and catches the failures seen in practice
(errors of order one, NaN, weights that did not move).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn

TOLERANCE = 1e-2


@dataclass(frozen=True)
class Check:
    name: str
    error: float  # relative error against the CPU reference (nan when the device produced nan or inf)
    tolerance: float

    @property
    def ok(self) -> bool:
        return math.isfinite(self.error) and self.error <= self.tolerance


@dataclass
class SelfTestReport:
    device: str  # e.g. "mps", or "cpu (bfloat16)" when run below float32
    tolerance: float = TOLERANCE
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def verdict(self) -> str:
        if self.device == "cpu" and self.ok:
            return ("the device is the CPU itself: float32 agrees with the float64 reference, "
                    "and the course's results come straight from it")
        if self.ok:
            return f"{self.device} agrees with the CPU on every check: results on it can be trusted"
        names = ", ".join(c.name for c in self.failed)
        return (f"{self.device} DISAGREES with the CPU ({names}): results computed on it cannot be trusted. "
                "Run the course on the CPU (COURSE_DEVICE=cpu), try another PyTorch release, and report "
                "this output with your PyTorch and OS versions")

    def __str__(self) -> str:
        lines = [f"device self-test on {self.device} (relative error vs the CPU; tolerance {self.tolerance:g}):"]
        for c in self.checks:
            lines.append(f"  {'ok  ' if c.ok else 'FAIL'} {c.name:40s} {c.error:.2e}")
        lines.append(("OK: " if self.ok else "WARNING: ") + self.verdict())
        return "\n".join(lines)


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``||x - ref|| / ||ref||`` computed in float64 on the CPU; nan when ``x`` is not finite."""
    x = x.detach().cpu().double()  # to the CPU first: MPS has no float64
    ref = ref.detach().cpu().double()
    if x.shape != ref.shape:
        raise ValueError(f"shapes differ: device gave {tuple(x.shape)}, the CPU {tuple(ref.shape)}")
    if not torch.isfinite(x).all():
        return math.nan
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def _mlp(seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 64), nn.LayerNorm(64), nn.GELU(), nn.Linear(64, 8))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _train(device: torch.device, dtype: torch.dtype, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses of ``steps`` AdamW steps and the final flattened weights, from the same start."""
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(steps, 32, 16, generator=g)
    y = torch.randint(0, 8, (steps, 32), generator=g)
    model = _mlp(seed).to(device=device, dtype=dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    losses = []
    for i in range(steps):
        loss = nn.functional.cross_entropy(model(x[i].to(device, dtype)), y[i].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach().float().cpu())
    weights = torch.cat([p.detach().float().cpu().flatten() for p in model.parameters()])
    return torch.stack(losses), weights


@contextlib.contextmanager
def _full_float32():
    """float32 matmuls in full float32 (no TF32) while the test runs: it checks the device's
    float32, not a faster, less precise mode that the caller may have switched on."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def run(device: torch.device | str | None = None, *, steps: int = 5, tolerance: float = TOLERANCE,
        dtype: torch.dtype = torch.float32, seed: int = 0) -> SelfTestReport:
    """Compare ``device`` (default: the course's device) with the CPU; see the module docstring.

    ``dtype`` is the precision used on ``device`` (the CPU reference is float32 for training and
    float64 for the kernels); lowering it shows what a disagreement looks like."""
    if device is None:
        from .device import get_device

        device = get_device()
    device = torch.device(device)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    label = str(device) if dtype == torch.float32 else f"{device} ({str(dtype).removeprefix('torch.')})"
    report = SelfTestReport(device=label, tolerance=tolerance)
    add = lambda name, err: report.checks.append(Check(name, err, tolerance))
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(96, 64, generator=g), torch.randn(96, 48, generator=g)
    # a.t() is a transposed, non-contiguous view: kernels for strided inputs have been wrong before
    ref = a.double().t() @ b.double()
    with _full_float32():
        add("matmul", relative_error(a.t().contiguous().to(device, dtype) @ b.to(device, dtype), ref))
        add("matmul of a transposed view", relative_error(a.to(device, dtype).t() @ b.to(device, dtype), ref))
        # a batched linear layer: MPS once went wrong past batch size 8 (pytorch/pytorch#109457)
        x, w = torch.randn(12, 64, 256, generator=g), torch.randn(1024, 256, generator=g) / 16
        add("linear layer, batch of 12", relative_error(nn.functional.linear(x.to(device, dtype), w.to(device, dtype)),
                                                        x.double() @ w.double().t()))
        # Adam's in-place addcdiv_ on a transposed view (pytorch/pytorch#118115: silently wrong on MPS)
        p0, num, den = (torch.rand(3, 5, generator=g) + 0.5 for _ in range(3))
        on_device = p0.clone().to(device, dtype).t()  # a copy even on the CPU: it is changed in place
        on_device.addcdiv_(num.to(device, dtype).t(), den.to(device, dtype).t(), value=-0.1)
        add("in-place addcdiv_ on a transposed view", relative_error(
            on_device, p0.double().t().addcdiv(num.double().t(), den.double().t(), value=-0.1)))
        scores = torch.randn(32, 100, generator=g) * 30  # large scores: an unstable softmax overflows
        add("softmax of large scores", relative_error(torch.softmax(scores.to(device, dtype), dim=-1),
                                                      torch.softmax(scores.double(), dim=-1)))
        losses, weights = _train(device, dtype, steps, seed)
    ref_losses, ref_weights = _train(torch.device("cpu"), torch.float32, steps, seed)
    start = torch.cat([p.detach().flatten() for p in _mlp(seed).parameters()])
    add(f"{steps} AdamW steps: losses", relative_error(losses, ref_losses))
    add(f"{steps} AdamW steps: final weights", relative_error(weights, ref_weights))
    # the update itself, so that "the weights did not move" cannot pass as a small error
    add(f"{steps} AdamW steps: weight update", relative_error(weights - start, ref_weights - start))
    return report
