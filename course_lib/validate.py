"""Checks of inputs at the public boundary: the one copy every model, tokenizer, task and tuning
function uses, so a bad input always reads the same: what was expected, what was received.

Each helper raises a ``TypeError`` for the wrong kind of thing (a float where ids belong, a string
where a list of prompts belongs) and a ``ValueError`` for a right kind with a wrong value (an id
out of the vocabulary, zero heads, a probability of 1.5), and otherwise returns its input (a
sequence as a list), so a call reads ``n = positive_int(n, "n_heads")``.

Range checks of tensor values (:func:`token_ids`) read them on the host: one device sync. They
run in eager mode only: under ``torch.compile`` they are skipped, so a compiled forward keeps one
graph and never waits for the device.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

from .device import is_compiling

INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class InputTypeError(TypeError, ValueError):
    """The wrong kind of input. A TypeError that is also a ValueError, so code that caught the
    ValueError these checks raised before keeps working."""


def shape_of(x: Any) -> tuple[int, ...] | str:
    """The shape tuple of a tensor, the type's name for anything else (for messages and comparisons)."""
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def tensor(x: Any, what: str, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """``x`` when it is a tensor (with ``dim`` dimensions, or one of them)."""
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    dims = (dim,) if isinstance(dim, int) else dim
    if dims is not None and x.dim() not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{what} must be a {want} tensor, got shape {shape_of(x)}")
    return x


def token_ids(x: Any, vocab_size: int | None, what: str = "token ids", dim: int | tuple[int, ...] | None = None,
              non_empty: bool = True) -> torch.Tensor:
    """``x`` when it is an integer tensor (not bool, not float) whose values lie in
    ``[0, vocab_size)`` (checked in eager mode only; ``vocab_size=None``: the dtype only), with
    ``dim`` dimensions and, unless ``non_empty=False``, at least one element."""
    tensor(x, what, dim)
    if x.dtype not in INTEGER_DTYPES:
        raise InputTypeError(f"{what} must hold integer token ids (torch.long), got dtype {x.dtype}")
    if non_empty and x.numel() == 0:
        raise ValueError(f"{what} is empty, shape {shape_of(x)}; need at least one token")
    # reading the values syncs with the device and would split a compiled graph: eager mode only
    if vocab_size is not None and not is_compiling() and x.numel() and bool(((x < 0) | (x >= vocab_size)).any()):
        prefix = "" if what == "token ids" else f"{what}: "
        raise ValueError(f"{prefix}token ids must be in [0, {vocab_size}), got ids in "
                         f"[{int(x.min())}, {int(x.max())}]")
    return x


def id_list(ids: Any, what: str = "ids") -> list[int]:
    """``ids`` (a 1-D integer tensor or a sequence of integers) as a list of ints. Floats (which
    ``int()`` would truncate), bools and strings are refused; range checks are the caller's."""
    if isinstance(ids, torch.Tensor):
        if ids.dtype not in INTEGER_DTYPES:
            raise InputTypeError(f"{what} must be integer token ids, got a tensor of dtype {ids.dtype}")
        if ids.dim() > 1:
            raise ValueError(f"{what} must be a 1-D sequence of token ids, got shape {shape_of(ids)}")
        return ids.reshape(-1).tolist()
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise InputTypeError(f"{what} must be a sequence of integer token ids, got {type(ids).__name__}")
    out = []
    for k, i in enumerate(ids):
        if isinstance(i, torch.Tensor) and i.dim() == 0 and i.dtype in INTEGER_DTYPES:
            i = int(i)  # e.g. [t for t in ids_tensor]
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise InputTypeError(f"{what} must be integer token ids, got {type(i).__name__} {i!r} at position {k}")
        out.append(int(i))
    return out


def floating(x: Any, what: str, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """``x`` when it is a floating-point tensor (an integer tensor would silently compute garbage)."""
    tensor(x, what, dim)
    if not x.is_floating_point():
        raise InputTypeError(f"{what} must be a floating-point tensor, got dtype {x.dtype} (convert it with .float())")
    return x


def _integer(n: Any, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise InputTypeError(f"{what} must be an integer, got {type(n).__name__} {n!r}")
    return int(n)


def positive_int(n: Any, what: str) -> int:
    """``n`` when it is an integer >= 1 (not a bool, not a float)."""
    if (n := _integer(n, what)) < 1:
        raise ValueError(f"{what} must be a positive integer (>= 1), got {n}")
    return n


def non_negative_int(n: Any, what: str) -> int:
    """``n`` when it is an integer >= 0."""
    if (n := _integer(n, what)) < 0:
        raise ValueError(f"{what} must be an integer >= 0, got {n}")
    return n


def number(x: Any, what: str, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> float:
    """``x`` as a float when it is a finite real number in the given range (ends closed unless
    ``low_open`` / ``high_open``)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise InputTypeError(f"{what} must be a number, got {type(x).__name__} {x!r}")
    x = float(x)
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    span = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    bad = (not math.isfinite(x) or (low is not None and (x < low or (low_open and x == low)))
           or (high is not None and (x > high or (high_open and x == high))))
    if bad:
        raise ValueError(f"{what} must be a finite number in {span}, got {x!r}")
    return x


def probability(p: Any, what: str, *, open_low: bool = False, open_high: bool = False) -> float:
    """``p`` when it is a number in [0, 1] (or the half-open variants)."""
    return number(p, what, 0.0, 1.0, low_open=open_low, high_open=open_high)


def non_empty(seq: Any, what: str) -> list:
    """``seq`` as a list when it is a non-empty sequence; a lone string is refused (iterating it
    would treat each character as an item)."""
    if isinstance(seq, (str, bytes)):
        raise InputTypeError(f"{what} must be a sequence (e.g. a list) of items, got a single {type(seq).__name__}; "
                        f"wrap it in a list: [{seq!r}]")
    if isinstance(seq, torch.Tensor):
        seq = list(seq)
    if not isinstance(seq, Sequence):
        raise InputTypeError(f"{what} must be a sequence (e.g. a list), got {type(seq).__name__}")
    if len(seq) == 0:
        raise ValueError(f"{what} is empty; need at least one")
    return list(seq)


def strings(seq: Any, what: str) -> list[str]:
    """``seq`` as a list when it is a non-empty sequence of strings."""
    items = non_empty(seq, what)
    for i, s in enumerate(items):
        if not isinstance(s, str):
            raise InputTypeError(f"{what}[{i}] must be a str, got {type(s).__name__}")
    return items


def sampling(temperature: Any = 1.0, top_k: Any = None, top_p: Any = None) -> None:
    """Sampling settings in range: temperature >= 0 (0 is greedy), top_k >= 1, top_p in (0, 1]."""
    number(temperature, "temperature", 0.0)
    if top_k is not None:
        positive_int(top_k, "top_k")
    if top_p is not None:
        probability(top_p, "top_p", open_low=True)
