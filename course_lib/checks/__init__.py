"""Exercise checkers: ``checks.<exercise>(your_function)`` reports a verdict and returns it.

Each topic has its own module (``checks/<topic>.py``); every function made with ``@checker`` in
any of them is exported from here, found by walking the package (no hand-kept list), and listed
in :data:`CHECKERS`. Inside IPython every verdict is also a ``display_data`` output with the MIME
type :data:`VERDICT_MIME`; :func:`verdicts_in` reads them back from an executed notebook.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from . import _guard
from ._core import (
    CheckFailed,
    Verdict,
    checker,
    expect,
    expect_close,
    expect_count,
    expect_grads,
    expect_items,
    expect_tensor,
)
from .verdicts import VERDICT_MIME, verdicts_in

CHECKERS: dict[str, Callable] = {}
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _name, _obj in vars(_module).items():
        if callable(_obj) and hasattr(_obj, "exercise") and not _name.startswith("_"):
            if CHECKERS.get(_name, _obj) is not _obj:
                raise ImportError(f"two checkers are named {_name!r} (in {CHECKERS[_name].__module__} and "
                                  f"{_obj.__module__}); rename one")
            CHECKERS[_name] = _obj
globals().update(CHECKERS)

__all__ = ["CHECKERS", "CheckFailed", "VERDICT_MIME", "Verdict", "checker", "expect", "expect_close", "expect_count",
           "expect_grads", "expect_items", "expect_tensor", "verdicts_in", *CHECKERS]

# what the checks rely on, as imported: a later reassignment (torch.softmax = ..., reference.f = ...) fails the check
_guard.take_snapshot()
