"""Measuring models and runs: parameters, saved activations, wall time, a training run's clock
(tokens/s with evaluation and checkpoint writes left out) and the GPUs' peak FLOP/s for MFU.
A service: knows no model."""
from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .device import synchronize

_now = time.perf_counter  # the clock of RunClock and time_apart (a test replaces it with a fake)

# Dense (no sparsity) tensor-core peaks in FLOP/s from the vendors' datasheets, per precision.
# A key is the words of ``torch.cuda.get_device_name`` that identify the part; names match word
# for word and the key with the most words wins, so "NVIDIA L40S" is not an L40 and "NVIDIA H100
# PCIe" not the SXM part. V100 and T4 have no bf16 tensor cores: they appear in the fp16 table only.
PEAK_BF16_FLOPS: dict[tuple[str, ...], float] = {
    ("H200",): 989e12, ("H200", "NVL"): 835e12, ("H100",): 989e12, ("H100", "PCIE"): 756e12,
    ("H100", "NVL"): 835e12, ("A100",): 312e12, ("A10",): 125e12, ("L40S",): 362e12, ("L40",): 181e12,
    ("L4",): 121e12, ("4090",): 165e12, ("3090",): 71e12,
}
PEAK_FP16_FLOPS: dict[tuple[str, ...], float] = {**PEAK_BF16_FLOPS, ("V100",): 125e12, ("T4",): 65e12}


def peak_flops_for(device: torch.device, dtype: torch.dtype | None = torch.bfloat16) -> float | None:
    """The dense tensor-core peak of a CUDA ``device`` in ``dtype`` (bf16 or fp16) from
    :data:`PEAK_BF16_FLOPS` / :data:`PEAK_FP16_FLOPS`; None on other devices, for an unknown GPU,
    and for fp32 (``dtype=None``: no tensor-core peak to compare with). ``fit(peak_flops=)`` overrides."""
    table = {torch.bfloat16: PEAK_BF16_FLOPS, torch.float16: PEAK_FP16_FLOPS}.get(dtype)
    if device.type != "cuda" or table is None:
        return None
    words = set(re.findall(r"[A-Z0-9]+", torch.cuda.get_device_name(device).upper()))
    matches = [key for key in table if words.issuperset(key)]
    return table[max(matches, key=len)] if matches else None


@contextlib.contextmanager
def time_apart(device: torch.device, record: Callable[[float], None]) -> Iterator[None]:
    """Time a block that is not training (an evaluation, a checkpoint write) and pass its seconds to
    ``record``. The device is synchronised first, so training kernels still queued are charged to
    training, not to this block, and again at the end."""
    synchronize(device)
    t0 = _now()
    try:
        yield
    finally:
        synchronize(device)
        record(_now() - t0)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Parameters of ``model``, shared (tied) tensors counted once; with ``trainable_only`` only
    those with ``requires_grad``. Works on the meta device (no memory), e.g. for GPT-3."""
    seen, n = set(), 0
    for p in model.parameters():  # nn.Module.parameters() already yields a tied tensor once
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        n += p.numel()
    return n


def saved_activation_bytes(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of ``fn(*inputs)``.

    An exact, device-independent memory measure: the naive attention saves the (n x n)
    attention matrix, a fused kernel (flash / memory-efficient) only O(n) statistics.
    Storage shared between saved tensors (and the inputs) is counted once; inputs are excluded.
    """
    seen = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return total


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds (after ``warmup`` calls; CUDA synchronised)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


class RunClock:
    """A run's wall clock, and its tokens/s clock: that one starts after ``skip`` steps
    (compilation, allocator warm-up) and leaves out the time spent in evaluation and checkpoint
    writes (``history.eval_seconds`` and ``history.checkpoint_seconds``, timed by :func:`time_apart`).
    ``dtype`` is the precision the run trains in, whose peak MFU compares with."""

    def __init__(self, device: torch.device, skip: int = 0, dtype: torch.dtype | None = None) -> None:
        self.device, self.skip, self.dtype, self.steps = device, skip, dtype, 0
        synchronize(device)
        self.t0 = _now()
        self.t_timing, self.apart_at_timing = self.t0, 0.0

    def elapsed(self) -> float:
        return _now() - self.t0

    def step_done(self, apart_seconds: float) -> None:
        """One optimizer step finished; ``apart_seconds``: evaluation + checkpoint time so far."""
        self.steps += 1
        if self.steps == self.skip:
            synchronize(self.device)
            self.t_timing, self.apart_at_timing = _now(), apart_seconds

    def finish(self, history: Any, tokens_per_step: int | None = None, flops_per_token: float | None = None,
               peak_flops: float | None = None) -> None:
        """Set ``history.seconds``, and ``tokens_per_s`` (``tokens_per_step``: per optimizer step)
        and, with ``flops_per_token`` and a known peak, ``mfu``."""
        synchronize(self.device)
        history.seconds = self.elapsed()
        if self.steps <= self.skip:  # too short to skip anything: time the whole run
            self.skip, self.t_timing, self.apart_at_timing = 0, self.t0, 0.0
        counted = self.steps - self.skip
        apart = history.eval_seconds + history.checkpoint_seconds - self.apart_at_timing
        train_seconds = (self.t0 + history.seconds - self.t_timing) - apart
        if tokens_per_step and counted and train_seconds > 0:
            history.tokens_per_s = tokens_per_step * counted / train_seconds
            peak = peak_flops or peak_flops_for(self.device, self.dtype)
            if flops_per_token and peak:
                history.mfu = flops_per_token * history.tokens_per_s / peak
