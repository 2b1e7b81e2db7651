"""The machinery behind every exercise checker.

A checker takes the student's function (or value), runs it on cases whose answers come from
the course's reference implementation, prints one verdict line with a hint, and returns a
:class:`Verdict` (truthy when passed). It never raises: an unfinished exercise
(``NotImplementedError``) is reported as "not implemented yet", and any other exception is
explained, so the notebook always runs on.
"""
from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch


class CheckFailed(Exception):
    """Raised inside a checker body to report a wrong answer with a hint."""


@dataclass
class Verdict:
    name: str
    passed: bool
    message: str
    status: str  # "passed" | "failed" | "not implemented"

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"Verdict({self.name!r}, {self.status})"


def expect(condition: bool, message: str) -> None:
    """Fail the check with ``message`` unless ``condition``."""
    if not condition:
        raise CheckFailed(message)


def expect_tensor(value, what: str, shape: tuple[int, ...] | None = None,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """The value must be a tensor (of that shape and dtype)."""
    expect(isinstance(value, torch.Tensor), f"{what} should be a torch.Tensor, got {type(value).__name__}")
    if shape is not None:
        expect(tuple(value.shape) == tuple(shape),
               f"{what} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    if dtype is not None:
        expect(value.dtype == dtype, f"{what} has dtype {value.dtype}, expected {dtype}")
    return value


def expect_close(actual, expected: torch.Tensor, what: str, *, atol: float = 1e-5, rtol: float = 1e-4,
                 hint: str = "") -> None:
    """``actual`` must be a tensor of ``expected``'s shape and values (within tolerance)."""
    if not isinstance(actual, torch.Tensor):
        try:
            actual = torch.as_tensor(actual, dtype=expected.dtype)
        except Exception:
            raise CheckFailed(f"{what} should be a tensor, got {type(actual).__name__}") from None
    expect(tuple(actual.shape) == tuple(expected.shape),
           f"{what} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    if not torch.allclose(a, e, atol=atol, rtol=rtol, equal_nan=False):
        diff = (a - e).abs()
        diff = torch.nan_to_num(diff, nan=float("inf"))
        msg = f"{what} differs from the reference (max abs difference {diff.max().item():.3g})"
        raise CheckFailed(msg + (f". {hint}" if hint else ""))


def _print(line: str) -> None:
    print(line, flush=True)


def checker(name: str | None = None, hint: str = "") -> Callable:
    """Turn ``body(student, ...)`` (which raises CheckFailed on a wrong answer) into a checker."""

    def wrap(body: Callable) -> Callable:
        check_name = name or body.__name__

        @functools.wraps(body)
        def run(*args, **kwargs) -> Verdict:
            try:
                extra = body(*args, **kwargs)
            except NotImplementedError:
                msg = ("not implemented yet: replace `raise NotImplementedError()` with your code; "
                       "the notebook continues with the course's reference")
                _print(f"[ ] {check_name}: {msg}")
                return Verdict(check_name, False, msg, "not implemented")
            except CheckFailed as e:
                msg = str(e)
                _print(f"[x] {check_name}: {msg}" + (f" Hint: {hint}" if hint else ""))
                return Verdict(check_name, False, msg, "failed")
            except Exception as e:  # a student's bug: explain, never raise
                frame = traceback.extract_tb(e.__traceback__)[-1]
                msg = f"your code raised {type(e).__name__}: {e} (at line {frame.lineno}: {frame.line!r})"
                _print(f"[x] {check_name}: {msg}" + (f" Hint: {hint}" if hint else ""))
                return Verdict(check_name, False, msg, "failed")
            msg = "correct" + (f" ({extra})" if isinstance(extra, str) and extra else "")
            _print(f"[ok] {check_name}: {msg}")
            return Verdict(check_name, True, msg, "passed")

        run.exercise = check_name  # marks it as a checker: checks/__init__.py exports every one
        return run

    return wrap
