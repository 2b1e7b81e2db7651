"""Device choice, autocast policy and seeding.

``get_device()`` prefers cuda > mps > cpu; ``COURSE_DEVICE`` (e.g. ``cpu`` or ``cuda:1``)
overrides. The autocast policy is bf16 where the hardware supports it, fp16 with a GradScaler
on older CUDA GPUs, and plain fp32 on CPU and MPS (CPU bf16 autocast is slow on laptops).
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch


def get_device() -> torch.device:
    """The device the course runs on: ``COURSE_DEVICE`` if set, else cuda > mps > cpu."""
    override = os.environ.get("COURSE_DEVICE", "").strip()
    if override:
        try:
            dev = torch.device(override)
        except RuntimeError as e:
            raise ValueError(f"COURSE_DEVICE={override!r} is not a valid torch device: {e}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"COURSE_DEVICE={override!r} but CUDA is not available on this machine")
        if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"COURSE_DEVICE={override!r} but MPS is not available on this machine")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class AutocastPolicy:
    """What mixed precision to use on a device."""

    device_type: str
    dtype: torch.dtype | None  # None: no autocast (fp32)
    use_grad_scaler: bool

    def context(self):
        """A context manager running the forward pass under this policy."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def __str__(self) -> str:
        name = "fp32" if self.dtype is None else str(self.dtype).replace("torch.", "")
        return f"{name}{' + GradScaler' if self.use_grad_scaler else ''} on {self.device_type}"


def autocast_policy(device: torch.device | str | None = None, enabled: bool = True) -> AutocastPolicy:
    """bf16 on CUDA GPUs that support it, fp16 + GradScaler on older CUDA, fp32 elsewhere."""
    dev = torch.device(device) if device is not None else get_device()
    if not enabled or dev.type != "cuda":
        return AutocastPolicy(dev.type, None, False)
    if torch.cuda.is_bf16_supported():
        return AutocastPolicy("cuda", torch.bfloat16, False)
    return AutocastPolicy("cuda", torch.float16, True)


def seed_everything(seed: int = 1337) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); returns a torch Generator with that seed."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels (for honest timings)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def describe(device: torch.device | str | None = None) -> str:
    """A one-line hardware description, used in results."""
    dev = torch.device(device) if device is not None else get_device()
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores ({dev.type})"
