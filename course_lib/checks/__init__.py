"""Exercise checkers: ``checks.<exercise>(your_function)`` prints a verdict and returns it.

Each topic has its own module (``checks/<topic>.py``); every function made with ``@checker`` in
any of them is exported from here, found by walking the package (no hand-kept list), and listed
in :data:`CHECKERS`.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from ._core import CheckFailed, Verdict, checker, expect, expect_close, expect_tensor

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

__all__ = ["CHECKERS", "CheckFailed", "Verdict", "checker", "expect", "expect_close", "expect_tensor", *CHECKERS]
