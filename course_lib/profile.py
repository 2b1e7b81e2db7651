"""Run profiles: ``smoke`` (CI, seconds), ``cpu`` (a 2-core laptop, minutes), ``gpu`` (one GPU).

The active profile comes from the ``COURSE_PROFILE`` environment variable; without it the
course picks ``gpu`` when CUDA is available and ``cpu`` otherwise. Choosing ``gpu`` without CUDA
(``COURSE_PROFILE=gpu``, ``PROFILE = "gpu"``) is an error where a run starts (:func:`use`,
building an artifact), since the gpu sizes would train for about a day on a CPU; set
``COURSE_ALLOW_GPU_PROFILE_ON_CPU=1`` to mean it. A notebook's ``parameters``
cell holds plain values that papermill can set (``PROFILE = None``, ``CFG_OVERRIDES = {}``); its
setup cell makes them the run's settings, visibly::

    PROFILE = profile.use(PROFILE)          # None keeps COURSE_PROFILE (or the default)
    CFG = profile.pick(smoke=dict(...), cpu=dict(...), gpu=dict(...), profile=PROFILE,
                       overrides=CFG_OVERRIDES)

so nothing branches on the device inside a notebook, and what ``results.record`` writes is the
profile (and any overridden size) the run really used.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, TypeVar

PROFILES = ("smoke", "cpu", "gpu")
T = TypeVar("T")
_overrides: dict[str, Any] = {}  # what the last pick(..., overrides=) changed; results.record writes it


def _default() -> str:
    try:
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover - torch missing is reported elsewhere
        return "cpu"


def _validate(value: str, what: str) -> str:
    v = str(value).strip().lower()
    if v not in PROFILES:
        raise ValueError(f"{what}={value!r} is not a known profile; expected one of {', '.join(PROFILES)}")
    return v


ALLOW_GPU_ON_CPU = "COURSE_ALLOW_GPU_PROFILE_ON_CPU"


def require_runnable(value: str) -> str:
    """``value`` (a profile name) when this machine can run it: ``gpu`` needs CUDA, unless
    ``COURSE_ALLOW_GPU_PROFILE_ON_CPU=1`` says the caller means it. Otherwise a ValueError that
    says so and how to go on."""
    if value == "gpu" and os.environ.get(ALLOW_GPU_ON_CPU, "").strip() != "1":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("the gpu profile needs CUDA, which is not available here (its sizes would train "
                             "for about a day on a CPU); use PROFILE='cpu' (or COURSE_PROFILE=cpu), or set "
                             f"{ALLOW_GPU_ON_CPU}=1 to run the gpu sizes on this machine anyway")
    return value


def name() -> str:
    """The active profile name, validated."""
    value = os.environ.get("COURSE_PROFILE", "").strip()
    return _validate(value, "COURSE_PROFILE") if value else _default()


def use(value: str | None) -> str:
    """Make ``value`` the active profile of this process (and of the processes it starts) and
    return it; ``None`` or ``""`` keep the active one. A notebook calls it with its ``PROFILE``
    parameter, so ``papermill -p PROFILE smoke`` sets the sizes, the cached artifacts and what
    ``results.record`` writes, all at once. The gpu profile without CUDA is a ValueError
    (:func:`require_runnable`).

    >>> use(None) in PROFILES
    True
    """
    if value is None or not str(value).strip():
        return require_runnable(name())
    chosen = require_runnable(_validate(value, "PROFILE"))
    os.environ["COURSE_PROFILE"] = chosen
    return chosen


def _merge(base: Any, overrides: dict, path: str) -> Any:
    if not isinstance(base, dict):
        raise ValueError(f"overrides for {path or 'CFG'}: {path or 'CFG'} is a {type(base).__name__}, not a dict")
    out = dict(base)
    for k, v in overrides.items():
        where = f"{path}.{k}" if path else str(k)
        if k not in base:
            raise ValueError(f"override {where!r} names no setting; the settings here are {', '.join(map(str, base))}")
        out[k] = _merge(base[k], v, where) if isinstance(v, dict) and isinstance(base[k], dict) else v
    return out


def pick(smoke: T, cpu: T, gpu: T | None = None, *, profile: str | None = None,
         overrides: dict | str | None = None) -> T:
    """Return the value for the profile (``gpu`` falls back to ``cpu`` when omitted).

    ``profile`` defaults to the active one. ``overrides`` (a dict, or its JSON text as
    ``papermill -p CFG_OVERRIDES '{"steps": 5}'`` passes it) replaces settings of a dict value,
    nested dicts merged key by key; a key that names no setting is an error. What it changed is
    kept for :mod:`course_lib.results` to record beside the profile (a notebook passes
    ``overrides=CFG_OVERRIDES`` even when empty, which also clears an earlier run's record).

    >>> pick(smoke=1, cpu=2, gpu=3, profile="cpu")
    2
    >>> pick(smoke={}, cpu=dict(steps=100, lr=0.1), profile="cpu", overrides={"steps": 5})
    {'steps': 5, 'lr': 0.1}
    """
    p = name() if profile is None or not str(profile).strip() else str(profile).strip().lower()
    if p not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    choice: Any = {"smoke": smoke, "cpu": cpu, "gpu": cpu if gpu is None else gpu}[p]
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides) if overrides.strip() else None
        except json.JSONDecodeError as e:
            raise ValueError(f"overrides must be a dict or its JSON text, got {overrides!r}: {e}") from None
    if overrides is None:  # library calls (recipes) leave the notebook's record alone
        return choice
    if not isinstance(overrides, dict):
        raise ValueError(f"overrides must be a dict, got {type(overrides).__name__}")
    _overrides.clear()
    if overrides:
        choice = _merge(copy.deepcopy(choice), overrides, "")
        _overrides.update(copy.deepcopy(overrides))
    return choice


def overrides() -> dict[str, Any]:
    """The settings the last :func:`pick` overrode (empty when none)."""
    return copy.deepcopy(_overrides)


def is_smoke() -> bool:
    return name() == "smoke"
