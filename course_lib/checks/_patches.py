"""Patch detection: what ``course_lib.checks`` relies on, recorded when it is imported.

:func:`take_snapshot` records every function, class and module attribute of torch,
``torch.nn.functional``, ``torch.linalg``, ``torch.special``, ``math``, the tensor methods, the
classes of ``torch.nn`` and every course_lib module and class; :func:`patched` lists what was
reassigned, deleted or shadowed since (torch's own wrappers, such as the one importing
torch._dynamo puts around torch.manual_seed, are recognised and allowed).
"""
from __future__ import annotations

import inspect
import math
import os
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn

_SNAPSHOT: list[tuple[str, object, dict, frozenset]] = []


def _watched(value) -> bool:
    return callable(value) or isinstance(value, types.ModuleType)


def take_snapshot() -> None:
    """Record the functions and classes the checks rely on (called once, when checks is imported)."""
    owners: list[tuple[str, object]] = [("torch", torch), ("torch.nn.functional", F), ("torch.Tensor", torch.Tensor),
                                        ("torch.linalg", torch.linalg), ("torch.special", torch.special),
                                        ("math", math)]
    base = getattr(torch._C, "TensorBase", None) or getattr(torch._C, "_TensorBase", None)
    if base is not None:
        owners.append(("torch.Tensor", base))
    owners += [(f"torch.nn.{k}", v) for k, v in vars(nn).items() if inspect.isclass(v)]
    for name, module in sorted(sys.modules.items()):
        if module is None or not (name == "course_lib" or name.startswith("course_lib.")):
            continue
        owners.append((name, module))
        owners += [(f"{name}.{k}", v) for k, v in vars(module).items()
                   if inspect.isclass(v) and getattr(v, "__module__", "") == name]
    _SNAPSHOT[:] = [(label, owner, {k: v for k, v in vars(owner).items() if _watched(v)}, frozenset(vars(owner)))
                    for label, owner in owners]


_TORCH_DIR = os.path.dirname(torch.__file__)


def _torch_wrapper_of(new, old, depth: int = 0) -> bool:
    """True when ``new`` is torch's own wrapper around ``old``: a function whose code lives inside
    the torch package and that wraps (``__wrapped__``) or closes over ``old``, directly or through
    another such wrapper. Importing torch._dynamo wraps torch.manual_seed; torch.compile wraps
    torch.nn.Module.__init__ and __setstate__."""
    code = getattr(new, "__code__", None)
    if code is None or not os.path.abspath(code.co_filename).startswith(_TORCH_DIR):
        return False
    inner = [getattr(new, "__wrapped__", None)]
    for cell in getattr(new, "__closure__", None) or ():
        try:
            inner.append(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    return any(x is old or (depth < 3 and callable(x) and _torch_wrapper_of(x, old, depth + 1))
               for x in inner if x is not None)


def patched() -> list[str]:
    """Names reassigned or deleted since :func:`take_snapshot`, and names added to a class that shadow
    a base class's (``torch.Tensor.softmax = mine``); empty when nothing was touched."""
    bad = []
    for label, owner, snap, keys in _SNAPSHOT:
        now = vars(owner)
        bad += [f"{label}.{k}" for k, v in snap.items() if now.get(k) is not v and not _torch_wrapper_of(now.get(k), v)]
        if isinstance(owner, type) and len(now) != len(keys):
            bad += [f"{label}.{k}" for k, v in now.items() if k not in keys and _watched(v)
                    and any(k in vars(b) for b in owner.__mro__[1:])]
    return sorted(set(bad))
