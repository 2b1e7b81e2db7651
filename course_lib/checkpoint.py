"""Checkpoints: atomic saves, loads that never unpickle code, the random-number state, training
state that resumes exactly, and the check that a state dict fits a model.

``fit`` (:mod:`course_lib.train`) saves and resumes through these; :meth:`GPT.load_state_dict_checked`
and the GPT-2 weight loader use :func:`check_state_fits`, so every "this checkpoint does not fit"
error reads the same: where the state came from, the key, and both shapes.
"""
from __future__ import annotations

import dataclasses
import errno
import glob
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .files import atomic_write


def save_checkpoint(path: str | os.PathLike, obj: dict) -> None:
    """``torch.save`` to a temporary file beside ``path``, then an atomic rename. Temporary files
    left beside ``path`` by killed writes are removed first (:func:`remove_stale_temp_files`). A
    failed write (a full disk) is an ``OSError`` with the errno that names ``path``; ``path`` is
    left as it was."""
    remove_stale_temp_files(path)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            sink = _Sink(f)
            try:
                torch.save(obj, sink)
                f.flush()
            except (OSError, RuntimeError) as e:
                cause = sink.error or (e if isinstance(e, OSError) else None)
                if cause is None:
                    raise
                raise OSError(cause.errno, f"cannot write checkpoint {path}: {cause.strerror or cause} "
                                           f"(errno {cause.errno}, {errno.errorcode.get(cause.errno, '?')}); "
                                           f"free space there or pass another checkpoint_path", str(path)) from e

    atomic_write(path, write, suffix=f".{os.getpid()}.tmp")


class _Sink:
    """The file ``torch.save`` writes through, keeping the first ``OSError`` (torch reports a failed
    write as an "enforce fail" RuntimeError that has lost the errno)."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, b) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Remove the ``.<name>.*.tmp`` files beside ``path`` that killed writes left behind: those
    whose writer (the process id in the name) no longer runs, or that carry no process id. A write
    in flight in another living process is left alone. Returns what was removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp") if path.parent.is_dir() else ():
        pid = tmp.name[:-len(".tmp")].rsplit(".", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


REQUIRED_KEYS = ("model", "optimizer", "step", "rng")


def _what_to_do(path) -> str:
    return (f"delete {path} to train from scratch, or pass resume=False (or another checkpoint_path) "
            f"to leave it where it is")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` without unpickling code (``weights_only=True``).
    A file that cannot be read as one (truncated, garbage bytes, code to unpickle) is a ValueError
    naming the file and what to do."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except OSError as e:  # a folder, no permission, an I/O error: the errno, and the file named
        raise type(e)(e.errno, f"cannot read checkpoint {path}: {e.strerror or e}; {_what_to_do(path)}",
                      str(path)) from e
    except Exception as e:  # PytorchStreamReader, EOFError, UnicodeDecodeError, UnpicklingError, ...
        first = (str(e).strip().splitlines() or ["no message"])[0][:200]
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}: {first}): it is truncated, "
                         f"damaged or not a checkpoint; {_what_to_do(path)}") from e
    return obj


def save_training_state(path: str | os.PathLike, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler | None = None, history: dict | None = None,
                        settings: dict | None = None) -> None:
    """A checkpoint to resume training from: weights, optimizer (and grad-scaler) state, ``step``,
    the random-number state, ``history`` (plain lists of what was measured so far) and the run's
    ``settings`` (:func:`run_settings`), which a resume compares with its own."""
    obj = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "rng": rng_state(),
           "history": dict(history or {})}
    if settings is not None:
        obj["settings"] = settings
    if scaler is not None:
        obj["scaler"] = scaler.state_dict()
    save_checkpoint(path, obj)


def run_settings(model: nn.Module, **settings: object) -> dict:
    """What a resume must not change silently, as plain values a ``weights_only`` load accepts:
    the model's ``config`` (when it has one) and the given ``settings`` (e.g. the optimiser's, the
    number of steps, the accumulation)."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    config = getattr(inner, "config", None)
    if config is not None and not dataclasses.is_dataclass(config) and hasattr(config, "to_dict"):
        config = config.to_dict()
    return _plain({"model_config": config, **settings})


def _plain(v: object) -> object:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _plain(dataclasses.asdict(v))
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return repr(v)


def settings_changes(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """Each difference between two :func:`run_settings`, as ``"name: saved -> now"``."""
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k, "(not recorded)"), now.get(k, "(not recorded)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += settings_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def resume_training_state(path: str | os.PathLike | None, model: nn.Module, optimizer: torch.optim.Optimizer,
                          scaler: torch.amp.GradScaler | None = None, until: int | None = None,
                          settings: dict | None = None, allow_changes: bool = False,
                          opt_in: str = "allow_changes=True") -> tuple[int, dict]:
    """Restore what :func:`save_training_state` wrote at ``path`` into ``model``, ``optimizer``,
    ``scaler`` and the random-number generators; returns ``(step, history)``, or ``(0, {})`` when
    ``path`` is None or does not exist. A checkpoint of another model is a ValueError naming the
    file, the key and both shapes (:func:`check_state_fits`). With ``until`` (the step the run
    ends at), a checkpoint already past it is a ValueError before anything is loaded: resuming it
    would hand back later weights that the caller's run would then save as an earlier step.

    With ``settings`` (:func:`run_settings` of this run), a checkpoint written with other settings
    is a ValueError naming each difference, before anything is loaded; with ``allow_changes`` it
    resumes with one warning listing them, and the optimiser keeps this run's hyperparameters
    (weight decay, betas, ...), not the checkpoint's. A damaged file, or one without the keys of a
    training checkpoint, is a ValueError naming the file and what to do. Temporary files of killed
    writes beside ``path`` are removed."""
    if path is None:
        return 0, {}
    remove_stale_temp_files(path)
    if not Path(path).exists():
        return 0, {}
    ck = load_checkpoint(path)
    missing = [k for k in REQUIRED_KEYS if k not in ck] if isinstance(ck, dict) else list(REQUIRED_KEYS)
    if missing:
        raise ValueError(f"checkpoint {path} is not a training checkpoint of fit (missing {missing}); "
                         f"{_what_to_do(path)}")
    if until is not None and int(ck["step"]) > until:
        raise ValueError(f"checkpoint {path} is at step {int(ck['step'])}, past this run's end at step {until}; "
                         f"resume it with steps/stop_at >= {int(ck['step'])}, or pass resume=False (or another "
                         f"checkpoint_path) to train from scratch")
    if settings is not None:
        if "settings" not in ck:
            warnings.warn(f"checkpoint {path} records no run settings (an older checkpoint): resuming without "
                          f"checking that they are this run's", stacklevel=3)
        elif changes := settings_changes(ck["settings"], settings):
            if not allow_changes:
                raise ValueError(f"checkpoint {path} was written with other settings: {'; '.join(changes)}. "
                                 f"Resume with the checkpoint's settings, pass {opt_in} to continue with the "
                                 f"new ones, or resume=False (or another checkpoint_path) to train from scratch")
            warnings.warn(f"resuming {path} with changed settings: {'; '.join(changes)}", stacklevel=3)
    check_state_fits(model, ck["model"], f"checkpoint {path}")
    own = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scaler is not None and "scaler" in ck:
            scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise ValueError(f"checkpoint {path} does not fit this run ({type(e).__name__}: {e}); "
                         f"{_what_to_do(path)}") from e
    for group, mine in zip(optimizer.param_groups, own, strict=True):
        group.update(mine)  # this run's hyperparameters, the checkpoint's moments
    history = ck.get("history", {})
    return int(ck["step"]), dict(history) if isinstance(history, dict) else {}


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
