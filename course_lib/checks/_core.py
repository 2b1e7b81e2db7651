"""The machinery behind every exercise checker.

A checker takes the student's function, runs it on cases whose answers come from the course's
reference implementation, reports one verdict with a hint, and returns a :class:`Verdict`
(truthy when passed). It never raises: an unfinished exercise (``NotImplementedError``) is
reported as "not implemented yet", any other exception is explained, so the notebook always
runs on. ``KeyboardInterrupt`` is the one exception that still stops the cell. A check leaves the
global (CPU) random state as it found it, so a notebook's later cells draw the same numbers whether
an exercise is done, wrong or unfinished.

Every call of the student's function goes through :class:`~course_lib.checks._guard.Student`:
copied inputs (mutation is reported as such), a per-call time limit ("took longer than N s"),
``SystemExit`` as a failed check, detection of reassigned torch / course_lib functions, and
rules such as "without calling torch.softmax". See :mod:`course_lib.checks._guard`.

**Verdicts a program reads.** Besides the printed line, inside IPython each check displays its
verdict as a ``display_data`` output whose bundle holds ``text/plain`` (the line) and the MIME
type ``application/vnd.llm-course.verdict+v1+json`` with the JSON payload::

    {"schema": "llm-course.verdict", "version": 1, "exercise": "softmax",
     "checker": "course_lib.checks.basics.softmax", "status": "passed" | "failed" | "not implemented",
     "passed": true, "reason": "correct" | "wrong" | "error" | "timeout" | "exit" | "mutation" | "rule"
                               | "patched" | "not implemented",
     "points": 1, "max_points": 1, "message": "...", "hint": "...", "seconds": 0.012}

``points`` is ``max_points`` when passed and 0 otherwise; ``max_points`` is 1 unless the check
cell says ``checks.x(f, points=2)``. A plain Python process only prints the line and returns
the Verdict. :func:`course_lib.checks.verdicts_in` reads the verdicts from an executed
notebook's outputs; printed text (a ``stream`` output) never counts. Details and the reader's
rules are in :mod:`course_lib.checks.verdicts`.
"""
from __future__ import annotations

import functools
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from . import verdicts as _verdicts
from ._guard import CheckFailed, GuardFailure, Student, StudentError, assert_unpatched

__all__ = ["CheckFailed", "Verdict", "checker", "expect", "expect_close", "expect_tensor", "expect_count",
           "expect_grads", "expect_items", "Student"]

_TORCH_DIR = os.path.dirname(torch.__file__)
_CHECKS_DIR = os.path.dirname(__file__)


@dataclass
class Verdict:
    name: str
    passed: bool
    message: str
    status: str  # "passed" | "failed" | "not implemented"
    reason: str = ""
    points: float = 0
    max_points: float = 1
    hint: str = ""
    seconds: float = 0.0

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"Verdict({self.name!r}, {self.status})"

    def to_dict(self) -> dict:
        return asdict(self)


def expect(condition: bool, message: str) -> None:
    """Fail the check with ``message`` unless ``condition``."""
    if not condition:
        raise CheckFailed(message)


def _kind(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}, dtype {value.dtype}"
    return f"a {type(value).__name__}"


def expect_tensor(value, what: str, shape: tuple[int, ...] | None = None, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None, floating: bool = False) -> torch.Tensor:
    """The value must be a plain tensor (of that shape, dtype and device; ``floating``: any float dtype
    of at least single precision)."""
    expect(isinstance(value, torch.Tensor), f"{what} should be a torch.Tensor, got {_kind(value)}")
    if shape is not None:
        expect(tuple(value.shape) == tuple(shape), f"{what} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    if dtype is not None:
        expect(value.dtype == dtype, f"{what} has dtype {value.dtype}, expected {dtype}")
    if floating:
        expect(value.dtype in (torch.float32, torch.float64),
               f"{what} has dtype {value.dtype}, expected a floating dtype (torch.float32 or torch.float64)")
    if device is not None:
        expect(value.device == torch.device(device),
               f"{what} is on device {value.device}, expected {torch.device(device)} (the inputs' device)")
    return value


def expect_close(actual, expected: torch.Tensor, what: str, *, atol: float = 1e-5, rtol: float = 1e-4,
                 hint: str = "") -> None:
    """``actual`` must be a tensor of ``expected``'s shape and values (within tolerance)."""
    expect(isinstance(actual, torch.Tensor), f"{what} should be a torch.Tensor, got {_kind(actual)}")
    expect(tuple(actual.shape) == tuple(expected.shape),
           f"{what} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if torch.allclose(a, e, atol=atol, rtol=rtol, equal_nan=True):
        return
    bad = ~torch.isfinite(a) & torch.isfinite(e)
    if bool(bad.any()):
        msg = (f"{what} contains {'nan' if bool(a[bad].isnan().any()) else 'inf'} where the reference is finite "
               f"(an overflow: exp of a large number is inf in float32)")
    else:
        diff = torch.nan_to_num((a - e).abs(), nan=float("inf"))
        msg = f"{what} differs from the reference (max abs difference {diff.max().item():.3g})"
    raise CheckFailed(msg + (f". {hint}" if hint else ""))


def expect_items(out, n: int, what: str) -> tuple:
    """``out`` must be a tuple (or list) of ``n`` items, returned as a tuple."""
    expect(type(out) in (tuple, list) and len(out) == n,
           f"{what} should return a tuple of {n} items, got {_kind(out)}"
           + (f" of length {len(out)}" if type(out) in (tuple, list) else ""))
    return tuple(out)


def expect_count(value, what: str) -> int:
    """A count: a Python int, a numpy integer, a 0-d integer tensor, or an integral float."""
    if isinstance(value, torch.Tensor):
        expect(value.dim() == 0, f"{what} should be one number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    elif type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()
    expect(isinstance(value, (int, float)) and not isinstance(value, bool),
           f"{what} should be an integer, got {_kind(value)}")
    if isinstance(value, float):
        expect(value == value and abs(value) != float("inf") and value.is_integer(),
               f"{what} should be an integer, got {value!r}")
    return int(value)


def expect_grads(out, leaves: dict[str, torch.Tensor], reference: Callable, what: str, *,
                 shared: dict[str, torch.Tensor] | None = None, atol: float = 1e-5, rtol: float = 1e-4,
                 hint: str = "", transform: Callable | None = None) -> None:
    """The gradient of ``out`` must match the reference's.

    ``leaves`` are the tensors (requires_grad) the student's call received; ``reference`` is called
    with detached copies of them, in order, and must build its answer from those (and from the
    ``shared`` tensors, e.g. module parameters both calls use). A random weighting of the outputs
    is back-propagated through both; gradients are compared for every leaf and shared tensor.
    ``transform`` (applied to both outputs first) selects what counts, e.g. only the finite entries.
    """
    expect_tensor(out, what)
    expect(out.requires_grad,
           f"{what} carries no gradient (requires_grad=False although its inputs require grad): `.item()`, "
           f"`.detach()`, `.numpy()`, `torch.tensor(...)` of a result or `torch.no_grad()` cut it from autograd, "
           f"and training needs the graph")
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
    targets = list(leaves.values()) + list((shared or {}).values())
    names = list(leaves) + list(shared or {})
    keep = transform or (lambda t: t)
    try:
        got = torch.autograd.grad((keep(out).to(torch.float64) * w).sum(), targets, allow_unused=True)
    except RuntimeError as e:
        raise CheckFailed(f"back-propagating through {what} failed: {e}") from None
    copies = [t.detach().clone().requires_grad_(True) for t in leaves.values()]
    ref_out = reference(*copies)
    want = torch.autograd.grad((keep(ref_out).to(torch.float64) * w).sum(), copies + list((shared or {}).values()),
                               allow_unused=True)
    for name, g, r in zip(names, got, want, strict=True):
        if r is None or not bool(r.ne(0).any()):
            continue
        expect(g is not None and bool(g.ne(0).any()),
               f"no gradient reaches `{name}` through {what}: part of the computation is detached "
               f"(`.detach()`, `.data`, `torch.no_grad()`) or replaced by a constant")
        expect_close(g, r, f"the gradient of {what} with respect to `{name}`", atol=atol, rtol=rtol, hint=hint)


def _student_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if not f.filename.startswith((_TORCH_DIR, _CHECKS_DIR)) and "threading" not in f.filename]
    frame = (own or frames)[-1] if frames else None
    return f" (at line {frame.lineno}: {frame.line!r})" if frame is not None else ""


def checker(name: str | None = None, hint: str = "", points: float = 1, forbid: tuple[str, ...] = ()) -> Callable:
    """Turn ``body(student, ...)`` (which raises CheckFailed on a wrong answer) into a checker.

    The body receives the student's function wrapped in a :class:`Student` (every call guarded);
    ``forbid`` names rules of :data:`course_lib.checks._guard.RULES` enforced during the calls.
    A check cell may pass ``points=`` to weigh the exercise (default ``points``).
    """

    def wrap(body: Callable) -> Callable:
        check_name = name or body.__name__
        dotted = f"{body.__module__}.{body.__name__}"

        @functools.wraps(body)
        def run(student=None, *args, points: float = points, **kwargs) -> Verdict:
            start = time.perf_counter()
            status, reason, extra, target = "failed", "wrong", None, None
            try:
                assert_unpatched()
                target = Student(student, check_name, forbid) if callable(student) else student
                with torch.random.fork_rng(devices=[]):  # a check cell leaves the notebook's random stream alone
                    extra = body(target, *args, **kwargs)
                if getattr(target, "violation", ""):
                    raise GuardFailure(target.violation, "rule")
                status, reason = "passed", "correct"
                msg = "correct" + (f" ({extra})" if isinstance(extra, str) and extra else "")
            except NotImplementedError:
                status, reason = "not implemented", "not implemented"
                msg = ("not implemented yet: replace `raise NotImplementedError()` with your code; "
                       "the notebook continues with the course's version")
            except (CheckFailed, GuardFailure) as e:
                reason, msg = getattr(e, "reason", "wrong"), str(e)
                if reason != "rule" and getattr(target, "violation", ""):
                    msg += f" (and {target.violation})"
            except StudentError as e:
                err = e.original
                reason, msg = "error", f"your code raised {type(err).__name__}: {err}{_student_frame(err)}"
            except SystemExit as e:  # student code reached outside a guarded call
                reason, msg = "exit", f"your code called sys.exit({e.code!r}), which would end the kernel"
            except Exception as e:  # the output made the checker itself stumble: explain, never raise
                reason = "error"
                msg = (f"{check_name} checks a function: pass your function itself, got a {type(student).__name__}"
                       if not callable(student) else
                       f"the check could not use your function's output: {type(e).__name__}: {e}")
            passed = status == "passed"
            v = Verdict(check_name, passed, msg, status, reason, points if passed else 0, points, hint,
                        time.perf_counter() - start)
            mark = {"passed": "[ok]", "failed": "[x]", "not implemented": "[ ]"}[status]
            line = f"{mark} {check_name}: {msg}" + (f" Hint: {hint}" if hint and status == "failed" else "")
            _verdicts.emit(_verdicts.payload(exercise=check_name, checker=dotted, status=status, reason=reason,
                                             points=v.points, max_points=points, message=msg, hint=hint,
                                             seconds=v.seconds), line)
            return v

        run.exercise = check_name  # marks it as a checker: checks/__init__.py exports every one
        return run

    return wrap
