"""Verdicts as data: the structured output every check emits, and a reader for executed notebooks.

Inside IPython (a Jupyter kernel), each check displays one output with two representations::

    display({VERDICT_MIME: payload, "text/plain": "[ok] softmax: correct (...)"}, raw=True)

Frontends do not know the course MIME type and show the ``text/plain`` line; a program reads
the payload from the notebook's ``display_data`` outputs with :func:`verdicts_in`. Outside
IPython (a plain Python process, pytest) the check prints the line and returns the
:class:`~course_lib.checks.Verdict`; nothing is displayed.

The MIME type is ``application/vnd.llm-course.verdict+v1+json``; the payload is a JSON object:

=============  =====================================================================================
``schema``     ``"llm-course.verdict"``
``version``    ``1`` (a new major version gets a new MIME type)
``exercise``   the exercise id, the checker's name (``"softmax"``, ``"pad_batch"``, ...)
``checker``    the checker's dotted path (``"course_lib.checks.basics.softmax"``)
``status``     ``"passed"``, ``"failed"`` or ``"not implemented"``
``passed``     ``true`` exactly when ``status == "passed"``
``reason``     why: ``"correct"``, ``"wrong"`` (a wrong value, shape, dtype or gradient), ``"error"``
               (the student's code raised), ``"timeout"``, ``"exit"`` (``sys.exit``), ``"mutation"``
               (an input changed in place), ``"rule"`` (a forbidden call such as ``torch.softmax``),
               ``"patched"`` (torch or course_lib was reassigned in the kernel), ``"not implemented"``
``points``     points earned: ``max_points`` when passed, else ``0``
``max_points`` points the exercise is worth (1 unless the check cell passes ``points=``)
``message``    the verdict in words (what was expected, what was received)
``hint``       the exercise's hint, shown on failure
``seconds``    wall time of the check
=============  =====================================================================================

Printed text never counts: a student's ``print("[ok] softmax: correct")`` is a ``stream``
output and :func:`verdicts_in` ignores it. A payload is still produced by code running in the
student's kernel, so a determined student can display a forged one; :func:`verdicts_in` only
accepts verdicts from cells that call the matching checker (``require_check_call``), and a
grader that must not trust the kernel recomputes the answers in its own process.

This module imports nothing but the standard library, so a grader can read verdicts without torch.
"""
from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from typing import Any

VERDICT_MIME = "application/vnd.llm-course.verdict+v1+json"
SCHEMA = "llm-course.verdict"
VERSION = 1
STATUSES = ("passed", "failed", "not implemented")
REASONS = ("correct", "wrong", "error", "timeout", "exit", "mutation", "rule", "patched", "not implemented")
_REQUIRED = {"exercise": str, "status": str, "passed": bool, "points": (int, float), "max_points": (int, float),
             "message": str}

__all__ = ["VERDICT_MIME", "SCHEMA", "VERSION", "payload", "emit", "verdicts_in", "in_ipython"]


def payload(*, exercise: str, checker: str, status: str, reason: str, points: float, max_points: float,
            message: str, hint: str, seconds: float) -> dict[str, Any]:
    """The JSON object of one verdict (see the module docstring for the fields)."""
    return {"schema": SCHEMA, "version": VERSION, "exercise": exercise, "checker": checker, "status": status,
            "passed": status == "passed", "reason": reason, "points": points, "max_points": max_points,
            "message": message, "hint": hint, "seconds": round(float(seconds), 4)}


def in_ipython() -> bool:
    """True inside a running IPython shell (a Jupyter kernel); never imports IPython itself."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        return ipython.get_ipython() is not None
    except Exception:  # a half-initialised IPython: behave like plain Python
        return False


def emit(data: dict[str, Any], line: str) -> None:
    """Show one verdict: a display_data output with the course MIME type in IPython, a printed line elsewhere."""
    if in_ipython():
        from IPython.display import display

        display({VERDICT_MIME: data, "text/plain": line}, raw=True)
    else:
        print(line, flush=True)


def _valid(data: Any) -> bool:
    if not isinstance(data, Mapping) or data.get("schema") != SCHEMA or data.get("version") != VERSION:
        return False
    for key, kind in _REQUIRED.items():
        if not isinstance(data.get(key), kind):
            return False
    return data["status"] in STATUSES and data["passed"] == (data["status"] == "passed")


def _source(cell: Mapping) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def verdicts_in(nb: Mapping | str, *, require_check_call: bool = True) -> list[dict[str, Any]]:
    """The verdicts in an executed notebook's outputs, in cell order.

    ``nb`` is a notebook as a dict (``json.load`` or ``nbformat.read``) or a path to an ``.ipynb``.
    Only ``display_data`` / ``execute_result`` outputs carrying :data:`VERDICT_MIME` with a valid
    payload count; ``stream`` outputs (printed text) never do. With ``require_check_call`` (the
    default) a verdict counts only if its cell's source calls ``checks.<exercise>(``, so a verdict
    displayed from an answer cell is ignored. Each result is the payload plus ``cell`` (the cell's
    index) and ``cell_id`` (nbformat >= 4.5, else None).
    """
    if isinstance(nb, str):
        with open(nb, encoding="utf-8") as f:
            nb = json.load(f)
    found: list[dict[str, Any]] = []
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        source = _source(cell)
        for out in cell.get("outputs", []) or []:
            if out.get("output_type") not in ("display_data", "execute_result"):
                continue
            data = (out.get("data") or {}).get(VERDICT_MIME)
            if isinstance(data, str):  # some writers store JSON MIME bundles as text
                try:
                    data = json.loads(data)
                except ValueError:
                    continue
            if not _valid(data):
                continue
            if require_check_call and not re.search(rf"\bchecks\s*\.\s*{re.escape(data['exercise'])}\s*\(", source):
                continue
            found.append({**data, "cell": index, "cell_id": cell.get("id")})
    return found
