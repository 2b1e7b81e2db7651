"""Checkpoints: atomic saves, loads that never unpickle code, the random-number state, training
state that resumes exactly, and the check that a state dict fits a model.

``fit`` (:mod:`course_lib.train`) saves and resumes through these; :meth:`GPT.load_state_dict_checked`
and the GPT-2 weight loader use :func:`check_state_fits`, so every "this checkpoint does not fit"
error reads the same: where the state came from, the key, and both shapes.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .files import atomic_write


def save_checkpoint(path: str | os.PathLike, obj: dict) -> None:
    """``torch.save`` to a temporary file beside ``path``, then an atomic rename."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` without unpickling code (``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_training_state(path: str | os.PathLike, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler | None = None, history: dict | None = None) -> None:
    """A checkpoint to resume training from: weights, optimizer (and grad-scaler) state, ``step``,
    the random-number state and ``history`` (plain lists of what was measured so far)."""
    obj = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "rng": rng_state(),
           "history": dict(history or {})}
    if scaler is not None:
        obj["scaler"] = scaler.state_dict()
    save_checkpoint(path, obj)


def resume_training_state(path: str | os.PathLike | None, model: nn.Module, optimizer: torch.optim.Optimizer,
                          scaler: torch.amp.GradScaler | None = None, until: int | None = None) -> tuple[int, dict]:
    """Restore what :func:`save_training_state` wrote at ``path`` into ``model``, ``optimizer``,
    ``scaler`` and the random-number generators; returns ``(step, history)``, or ``(0, {})`` when
    ``path`` is None or does not exist. A checkpoint of another model is a ValueError naming the
    file, the key and both shapes (:func:`check_state_fits`). With ``until`` (the step the run
    ends at), a checkpoint already past it is a ValueError before anything is loaded: resuming it
    would hand back later weights that the caller's run would then save as an earlier step."""
    if path is None or not Path(path).exists():
        return 0, {}
    ck = load_checkpoint(path)
    if until is not None and int(ck["step"]) > until:
        raise ValueError(f"checkpoint {path} is at step {int(ck['step'])}, past this run's end at step {until}; "
                         f"resume it with steps/stop_at >= {int(ck['step'])}, or pass resume=False (or another "
                         f"checkpoint_path) to train from scratch")
    check_state_fits(model, ck["model"], f"checkpoint {path}")
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    if scaler is not None and "scaler" in ck:
        scaler.load_state_dict(ck["scaler"])
    set_rng_state(ck["rng"])
    return int(ck["step"]), ck["history"]


def rng_state() -> dict:
    """The torch, numpy, Python (and CUDA) random-number states, as tensors and plain lists that
    a ``weights_only`` load accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_rest": [int(pos), int(has_gauss), float(cached)],
        "python": [py[0], list(py[1]), py[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (the CUDA part only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    pos, has_gauss, cached = state["numpy_rest"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    v, keys, gauss = state["python"]
    random.setstate((v, tuple(keys), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_state_fits(model: nn.Module, state: dict, where: str = "checkpoint") -> None:
    """Raise a ValueError unless ``state`` has exactly ``model``'s state-dict keys with the same
    shapes. The message names ``where`` (e.g. the file), the missing / unexpected keys or the first
    mismatching key with both shapes, and the model's ``config`` when it has one."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"{where} does not fit this model: missing keys {missing[:5]}, unexpected keys {extra[:5]}")
    config = getattr(model, "config", None)
    described = f" ({config})" if config is not None else ""
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"{where}: parameter {k!r} has shape {tuple(state[k].shape)}, "
                             f"this model{described} expects {tuple(v.shape)}")
