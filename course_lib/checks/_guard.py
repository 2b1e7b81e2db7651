"""How a checker calls the student's function: every call is guarded.

* **Copies.** The student gets copies of the checker's tensors (and lists, tuples, dicts of
  them); the checker's originals stay pristine, so expected answers never see a mutation. After
  the call the copies are compared with the originals, and a module argument (a ``Block``, a
  model) with a snapshot of its state and plain attributes: any change is reported as such.
* **Time limit** (:mod:`~course_lib.checks._clock`). Each call gets ``_clock.TIME_LIMIT``
  seconds (``COURSE_CHECK_TIME_LIMIT``, default 10). On Linux and macOS, in the main thread (where
  a Jupyter kernel runs cells), a ``SIGALRM`` timer raises inside the student's code: the loop
  really stops, and the code runs on the kernel's own thread with its thread-local torch state
  (grad mode, autocast). Where there is no ``SIGALRM`` (Windows) or off the main thread, the call
  runs in a daemon thread joined with a timeout; on expiry an exception is injected into it (this
  stops pure-Python loops; a single long C call finishes in the background) and the check
  reports and returns. Either way the verdict says "took longer than N s" and the cell continues.
* **Exits.** ``SystemExit`` (``sys.exit()``, ``exit()``) fails the check; ``KeyboardInterrupt``
  still stops the cell.
* **Patches** (:mod:`~course_lib.checks._patches`). ``take_snapshot`` records, when
  ``course_lib.checks`` is imported, every function and class of torch, ``torch.nn.functional``,
  the tensor methods, ``torch.nn``'s modules and course_lib's modules. Before and after each call
  the checker verifies that none was reassigned (``torch.softmax = mine``,
  ``reference.attention_weights = mine``): expected answers are then computed by the code that
  was imported, or the check fails saying what was replaced.
* **Rules.** ``forbid=("softmax",)`` wraps the named library functions during the call; a call
  to one fails the check ("without calling torch.softmax").
"""
from __future__ import annotations

import inspect
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import _clock
from ._patches import patched, take_snapshot  # noqa: F401  (take_snapshot: called by checks/__init__)


class CheckFailed(Exception):
    """Raised inside a checker body to report a wrong answer with a hint."""

    reason = "wrong"


class CheckTimeout(CheckFailed):
    reason = "timeout"


class GuardFailure(CheckFailed):
    """A failure of the call itself (mutation, exit, a forbidden call, patched torch)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class StudentError(Exception):
    """The student's function raised ``original`` (wrapped so the checker can tell it from its own errors)."""

    def __init__(self, original: BaseException):
        super().__init__(f"{type(original).__name__}: {original}")
        self.original = original


def assert_unpatched() -> None:
    bad = patched()
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise GuardFailure(f"{shown} {'was' if len(bad) == 1 else 'were'} reassigned after course_lib.checks was "
                           f"imported, so this check cannot trust its reference answers; remove the assignment and "
                           f"restart the kernel", "patched")


# ---------------------------------------------------------------------------------------------
# Rules: library functions an exercise must not call
# ---------------------------------------------------------------------------------------------

RULES: dict[str, tuple[str, list[tuple[object, str]]]] = {
    "softmax": ("torch.softmax", [(torch, "softmax"), (torch, "log_softmax"), (torch, "_softmax"),
                                  (torch.Tensor, "softmax"), (torch.Tensor, "log_softmax"), (F, "softmax"),
                                  (F, "log_softmax"), (torch.special, "softmax"), (torch.special, "log_softmax")]),
    "cross_entropy": ("F.cross_entropy", [(F, "cross_entropy")]),
}


class _Tripwires:
    def __init__(self, rules: tuple[str, ...]):
        self.rules, self.used, self.saved = rules, [], []

    def __enter__(self):
        for rule in self.rules:
            label, targets = RULES[rule]
            for owner, attr in targets:
                original = getattr(owner, attr, None)
                if original is None:
                    continue
                had_own = attr in vars(owner)
                label = f"{getattr(owner, '__name__', owner)}.{attr}"

                def wire(*args, _original=original, _label=label, **kw):
                    self.used.append(_label)
                    return _original(*args, **kw)

                self.saved.append((owner, attr, had_own, vars(owner).get(attr)))
                setattr(owner, attr, wire)
        return self

    def __exit__(self, *exc):
        for owner, attr, had_own, value in reversed(self.saved):
            if had_own:
                setattr(owner, attr, value)
            else:
                delattr(owner, attr)
        self.saved.clear()
        return False


class _ExitTrap:
    """In a Jupyter kernel, ``exit()`` and ``quit()`` do not raise: they ask the kernel to shut down
    after the cell. During the student's call they raise SystemExit instead, which fails the check."""

    def __enter__(self):
        ipython = sys.modules.get("IPython")
        self.shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
        if self.shell is not None and hasattr(self.shell, "ask_exit"):
            self.own = vars(self.shell).get("ask_exit")  # an instance attribute to put back, if any
            self.keep = getattr(self.shell, "keepkernel_on_exit", None)

            def ask_exit():
                raise SystemExit("exit()")

            self.shell.ask_exit = ask_exit
        else:
            self.shell = None
        return self

    def __exit__(self, *exc):
        if self.shell is not None:
            if self.own is not None:
                self.shell.ask_exit = self.own
            else:
                del self.shell.ask_exit
            if self.keep is not None:
                self.shell.keepkernel_on_exit = self.keep
        return False


# ---------------------------------------------------------------------------------------------
# Copies and mutation
# ---------------------------------------------------------------------------------------------

def _copy(x):
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, list):
        return [_copy(v) for v in x]
    if isinstance(x, tuple) and type(x) is tuple:
        return tuple(_copy(v) for v in x)
    if isinstance(x, dict) and type(x) is dict:
        return {k: _copy(v) for k, v in x.items()}
    return x


def _same(a, b) -> bool:
    if isinstance(b, torch.Tensor):
        if not isinstance(a, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
            return False
        if b.device.type == "meta":  # no values to compare
            return True
        with torch.no_grad():
            both_nan = a.isnan() & b.isnan() if a.is_floating_point() else torch.zeros_like(a, dtype=torch.bool)
            return bool(((a == b) | both_nan).all())
    if isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(b, dict):
        return isinstance(a, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in b)
    return True


def _module_state(m: nn.Module) -> dict:
    state = {f"{k}": v.detach().clone() for k, v in m.state_dict(keep_vars=True).items()}
    for prefix, sub in m.named_modules():
        for k, v in vars(sub).items():
            if not k.startswith("_") and (isinstance(v, (bool, int, float, str, type(None))) or callable(v)):
                state[f"{prefix}.{k}" if prefix else k] = v if not callable(v) else id(v)
    return state


def _module_changes(before: dict, m: nn.Module) -> list[str]:
    after = _module_state(m)
    changed = [k for k in before if k not in after or not _same_value(after[k], before[k])]
    return changed + [k for k in after if k not in before]


def _same_value(a, b) -> bool:
    return _same(a, b) if isinstance(b, torch.Tensor) else a == b


def _names(fn: Callable, n: int) -> list[str]:
    try:
        params = [p.name for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"argument {i + 1}" for i in range(n)]


def _mutation_message(name: str, before, after) -> str:
    detail = ""
    if (isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor) and after.shape == before.shape
            and before.device.type != "meta"):
        with torch.no_grad():
            n = int((~((after == before) | (after.isnan() & before.isnan()))).sum()) if before.is_floating_point() \
                else int((after != before).sum())
        detail = f" ({n} of {before.numel()} values changed)"
    return (f"your function changed its input `{name}` in place{detail}; the caller still needs it as it was: "
            f"compute on a copy (`{name}.clone()`) or with out-of-place operations (`x - m`, not `x -= m`; "
            f"`masked_fill`, not `masked_fill_`)")


def _check_output(out, where: str = "your function's output") -> None:
    if isinstance(out, torch.Tensor) and type(out) not in (torch.Tensor, nn.Parameter):
        raise GuardFailure(f"{where} is a {type(out).__name__}, a subclass of torch.Tensor; return a plain "
                           f"torch.Tensor", "wrong")
    if type(out) in (tuple, list):
        for i, v in enumerate(out):
            _check_output(v, f"item {i} of your function's output")


class Student:
    """The student's function as a checker calls it: copied inputs, time limit, exits, patches, rules."""

    def __init__(self, fn, check_name: str, forbid: tuple[str, ...] = ()):
        if not callable(fn):
            raise CheckFailed(f"{check_name} checks a function: pass your function itself (without calling it), "
                              f"got a {type(fn).__name__}")
        self.fn, self.check_name, self.forbid = fn, check_name, forbid
        self.calls = 0
        self.violation = ""  # a broken rule, reported when the check ends (a wrong value is reported first)

    def __call__(self, *args, **kwargs):
        return self._call(args, kwargs)

    def raises(self, exc_type: type[BaseException], *args, **kwargs) -> bool:
        """True if the call raises ``exc_type``; False if it returns or raises something else."""
        try:
            self._call(args, kwargs)
        except StudentError as e:
            return isinstance(e.original, exc_type)
        return False

    def probe(self, *args, **kwargs) -> tuple[bool, object]:
        """``(True, output)``, or ``(False, exception)`` when the student's code raises (any Exception,
        NotImplementedError included): for probes whose failure the checker interprets itself."""
        try:
            return True, self._call(args, kwargs)
        except StudentError as e:
            return False, e.original
        except NotImplementedError as e:
            return False, e

    def _call(self, args: tuple, kwargs: dict):
        assert_unpatched()
        copies = tuple(_copy(a) for a in args)
        kw_copies = {k: _copy(v) for k, v in kwargs.items()}
        modules = {i: _module_state(a) for i, a in enumerate(args) if isinstance(a, nn.Module)}
        self.calls += 1
        try:
            with _Tripwires(self.forbid) as wires, _ExitTrap():
                out = _clock.call_with_limit(self.fn, copies, kw_copies)
        except (CheckFailed, KeyboardInterrupt, NotImplementedError):
            raise
        except _clock.TimedOut as e:
            raise CheckTimeout(str(e)) from None
        except SystemExit as e:
            raise GuardFailure(f"your code called sys.exit({e.code!r}) (or exit()), which would end the kernel; "
                               f"return a value instead", "exit") from None
        except Exception as e:
            raise StudentError(e) from e
        assert_unpatched()
        names = _names(self.fn, len(args))
        for i, (before, after) in enumerate(zip(args, copies, strict=True)):
            if not _same(after, before):
                raise GuardFailure(_mutation_message(names[i], before, after), "mutation")
            if i in modules and (changed := _module_changes(modules[i], args[i])):
                raise GuardFailure(f"your function changed `{names[i]}` ({', '.join(changed[:3])}); use the module "
                                   f"as given and leave its parameters and attributes as they were", "mutation")
        for k, before in kwargs.items():
            if not _same(kw_copies[k], before):
                raise GuardFailure(_mutation_message(k, before, kw_copies[k]), "mutation")
        if wires.used and not self.violation:
            label = " or ".join(RULES[r][0] for r in self.forbid)
            self.violation = f"your function calls {wires.used[0]}; this exercise asks you to build it without {label}"
        _check_output(out)
        return out
