"""How a checker calls the student's function: every call is guarded.

* **Copies.** The student gets copies of the checker's tensors (and lists, tuples, dicts of
  them); the checker's originals stay pristine, so expected answers never see a mutation. After
  the call the copies are compared with the originals, and a module argument (a ``Block``, a
  model) with a snapshot of its state and plain attributes: any change is reported as such.
* **Time limit.** Each call gets :data:`TIME_LIMIT` seconds (``COURSE_CHECK_TIME_LIMIT``,
  default 10). On Linux and macOS, in the main thread (where a Jupyter kernel runs cells), a
  ``SIGALRM`` timer raises inside the student's code: the loop really stops, and the code runs on
  the kernel's own thread with its thread-local torch state (grad mode, autocast). Where there is
  no ``SIGALRM`` (Windows) or off the main thread, the call runs in a daemon thread joined with a
  timeout; on expiry an exception is injected into it (this stops pure-Python loops; a single
  long C call finishes in the background) and the check reports and returns. Either way the
  verdict says "took longer than N s" and the cell continues.
* **Exits.** ``SystemExit`` (``sys.exit()``, ``exit()``) fails the check; ``KeyboardInterrupt``
  still stops the cell.
* **Patches.** :func:`take_snapshot` records, when ``course_lib.checks`` is imported, every
  function and class of torch, ``torch.nn.functional``, the tensor methods, ``torch.nn``'s modules
  and course_lib's modules. Before and after each call the checker verifies that none was
  reassigned (``torch.softmax = mine``, ``reference.attention_weights = mine``): expected answers
  are then computed by the code that was imported, or the check fails saying what was replaced.
* **Rules.** ``forbid=("softmax",)`` wraps the named library functions during the call; a call
  to one fails the check ("without calling torch.softmax").
"""
from __future__ import annotations

import ctypes
import inspect
import math
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


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


class _TimeLimit(BaseException):  # a BaseException, so that `except Exception` in student code lets it through
    pass


def _limit_from_env() -> float:
    try:
        value = float(os.environ.get("COURSE_CHECK_TIME_LIMIT", "10"))
    except ValueError:
        return 10.0
    return value if value > 0 and math.isfinite(value) else 10.0


TIME_LIMIT = _limit_from_env()
METHOD = "auto"  # "auto" | "signal" | "thread" (tests force each)


# ---------------------------------------------------------------------------------------------
# Time limits
# ---------------------------------------------------------------------------------------------

def _use_signal() -> bool:
    if METHOD == "thread":
        return False
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _call_with_signal(fn: Callable, args: tuple, kwargs: dict, limit: float):
    state = {"armed": True}

    def on_alarm(signum, frame):
        if state["armed"]:
            raise _TimeLimit()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    # re-fires every 0.25 s after expiry, in case the student's code swallows the first one
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, limit, 0.25)
    start = time.monotonic()
    try:
        return fn(*args, **kwargs)
    except _TimeLimit:
        raise CheckTimeout(f"your function took longer than {limit:g} s (stopped); look for a loop that never "
                           f"ends (a while loop whose condition never changes)") from None
    finally:
        state["armed"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay > 0:  # someone else's timer (e.g. pytest-timeout) was running: give it back
            signal.setitimer(signal.ITIMER_REAL, max(outer_delay - (time.monotonic() - start), 1e-3), outer_interval)


def _inject(thread: threading.Thread, exc: type[BaseException]) -> None:
    """Raise ``exc`` in ``thread`` at its next bytecode (CPython; best effort)."""
    try:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc))
    except Exception:
        pass


def _call_in_thread(fn: Callable, args: tuple, kwargs: dict, limit: float):
    box: dict = {}
    grad = torch.is_grad_enabled()

    def target():
        try:
            with torch.set_grad_enabled(grad):
                box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=target, name="course-check", daemon=True)
    worker.start()
    deadline = time.monotonic() + limit
    try:
        while worker.is_alive() and time.monotonic() < deadline:
            worker.join(min(0.05, max(deadline - time.monotonic(), 0.0)))  # short joins: Ctrl-C gets through
    except KeyboardInterrupt:
        _inject(worker, _TimeLimit)
        raise
    if worker.is_alive():
        _inject(worker, _TimeLimit)
        worker.join(0.5)
        left = " (it is still running in the background)" if worker.is_alive() else " (stopped)"
        raise CheckTimeout(f"your function took longer than {limit:g} s{left}; look for a loop that never ends")
    if "error" in box:
        err = box["error"]
        if isinstance(err, _TimeLimit):
            raise CheckTimeout(f"your function took longer than {limit:g} s (stopped)")
        raise err
    return box.get("value")


def call_with_limit(fn: Callable, args: tuple = (), kwargs: dict | None = None, limit: float | None = None):
    """``fn(*args, **kwargs)`` with a wall-clock limit; raises :class:`CheckTimeout` past it."""
    limit = TIME_LIMIT if limit is None else limit
    if _use_signal():
        return _call_with_signal(fn, args, kwargs or {}, limit)
    return _call_in_thread(fn, args, kwargs or {}, limit)


# ---------------------------------------------------------------------------------------------
# Patch detection
# ---------------------------------------------------------------------------------------------

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


def _torch_wrapper_of(new, old) -> bool:
    """True when ``new`` is torch's own wrapper around ``old`` (importing torch._dynamo wraps
    torch.manual_seed, for one): a ``__wrapped__`` chain ending at ``old`` whose wrappers' code
    all lives inside the torch package."""
    for _ in range(5):
        code = getattr(new, "__code__", None)
        if code is None or not os.path.abspath(code.co_filename).startswith(_TORCH_DIR):
            return False
        new = getattr(new, "__wrapped__", None)
        if new is old:
            return True
    return False


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
            with _Tripwires(self.forbid) as wires:
                out = call_with_limit(self.fn, copies, kw_copies)
        except (CheckFailed, KeyboardInterrupt, NotImplementedError):
            raise
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
