"""Run profiles: ``smoke`` (CI, seconds), ``cpu`` (a 2-core laptop, minutes), ``gpu`` (one GPU).

The active profile comes from the ``COURSE_PROFILE`` environment variable; without it the
course picks ``gpu`` when CUDA is available and ``cpu`` otherwise. Notebooks choose their sizes
visibly with :func:`pick`, so nothing branches on the device inside a notebook.
"""
from __future__ import annotations

import os
from typing import Any, TypeVar

PROFILES = ("smoke", "cpu", "gpu")
T = TypeVar("T")


def _default() -> str:
    try:
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover - torch missing is reported elsewhere
        return "cpu"


def name() -> str:
    """The active profile name, validated."""
    value = os.environ.get("COURSE_PROFILE", "").strip().lower()
    if not value:
        return _default()
    if value not in PROFILES:
        raise ValueError(
            f"COURSE_PROFILE={value!r} is not a known profile; expected one of {', '.join(PROFILES)}"
        )
    return value


def pick(smoke: T, cpu: T, gpu: T | None = None, *, profile: str | None = None) -> T:
    """Return the value for the active profile (``gpu`` falls back to ``cpu`` when omitted).

    >>> pick(smoke=1, cpu=2, gpu=3, profile="cpu")
    2
    """
    p = profile or name()
    if p not in PROFILES:
        raise ValueError(f"unknown profile {p!r}; expected one of {', '.join(PROFILES)}")
    choice: Any = {"smoke": smoke, "cpu": cpu, "gpu": cpu if gpu is None else gpu}[p]
    return choice


def is_smoke() -> bool:
    return name() == "smoke"
