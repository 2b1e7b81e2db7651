"""Measuring models: parameters, saved activations, wall time. A service: knows no model."""
from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn


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
