"""Device choice, autocast policy and seeding.

``get_device()`` prefers cuda > mps > cpu; ``COURSE_DEVICE`` (e.g. ``cpu`` or ``cuda:1``)
overrides. The autocast policy is bf16 on CUDA GPUs with bf16 tensor cores (compute capability
8.0 and up: A100, H100, the RTX 30/40 series, L4/L40), fp16 with a GradScaler on older ones (T4,
V100: Colab's free GPU, where bf16 is only emulated and slow), and plain fp32 on CPU and MPS (CPU
bf16 autocast is slow on laptops).
"""
from __future__ import annotations

import contextlib
import os
import random
import warnings
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


BF16_MIN_CAPABILITY = (8, 0)  # Ampere: the first tensor cores with bf16


def autocast_policy(device: torch.device | str | None = None, enabled: bool = True) -> AutocastPolicy:
    """bf16 on CUDA GPUs of compute capability 8.0 and up, fp16 + GradScaler on older CUDA GPUs,
    fp32 elsewhere. Decided by the capability, not ``torch.cuda.is_bf16_supported()``, which also
    says yes where bf16 is only emulated (T4, V100)."""
    dev = torch.device(device) if device is not None else get_device()
    if not enabled or dev.type != "cuda":
        return AutocastPolicy(dev.type, None, False)
    if tuple(torch.cuda.get_device_capability(dev)) >= BF16_MIN_CAPABILITY:
        return AutocastPolicy("cuda", torch.bfloat16, False)
    return AutocastPolicy("cuda", torch.float16, True)


def is_compiling() -> bool:
    """True while ``torch.compile`` traces the code: input checks that read a tensor's values on
    the host (a device sync and a graph break) run in eager mode only."""
    return torch.compiler.is_compiling()


def is_compile_error(e: BaseException) -> bool:
    """An error of torch.compile's machinery (dynamo, inductor, a missing C++ compiler or Triton)."""
    from torch._dynamo import exc as dynamo_exc
    from torch._inductor import exc as inductor_exc

    kinds = (dynamo_exc.TorchDynamoException, inductor_exc.CppCompileError, inductor_exc.InvalidCxxCompiler,
             getattr(dynamo_exc, "TritonUnavailableError", dynamo_exc.TorchDynamoException))
    return isinstance(e, kinds)


def _warn_eager(e: BaseException) -> None:
    cause = getattr(e, "inner_exception", None) or e.__cause__ or e  # what the compiler itself raised
    first = (str(cause).strip().splitlines() or [""])[0][:300]
    warnings.warn(f"torch.compile failed ({type(cause).__name__}: {first}); training continues in eager mode, "
                  f"which gives the same results, more slowly. Pass compile=False to skip the attempt.",
                  RuntimeWarning, stacklevel=4)


class CompiledOrEager:
    """``torch.compile(model)`` where that works, else ``model`` itself, with one warning.

    ``.model`` is what to call. Compilation is lazy, so it can also fail at the first call (or a
    recompilation): pass that exception to :meth:`falls_back`, which switches to the eager model
    for good (warning once) and returns True when the caller should redo the call, or returns
    False for an error that is not compilation's, to be raised."""

    def __init__(self, model: torch.nn.Module, compile: bool = True) -> None:
        self.eager, self.model, self.compiled = model, model, False
        if compile:
            try:
                self.model, self.compiled = torch.compile(model), True
            except Exception as e:  # noqa: BLE001 -- e.g. "Windows not yet supported for torch.compile"
                _warn_eager(e)

    def falls_back(self, e: BaseException) -> bool:
        if not (self.compiled and is_compile_error(e)):
            return False
        _warn_eager(e)
        self.model, self.compiled = self.eager, False
        return True


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
