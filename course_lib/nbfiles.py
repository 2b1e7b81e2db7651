"""Notebook files as the course writes them: the solution markers, reading, deterministic
writing, clearing outputs. Shared by :mod:`course_lib.assignments` (build, check) and
:mod:`course_lib.grading` (grade, nbgrader); the standard library only.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
ANSWER = "YOUR ANSWER HERE"


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _clear(cell: dict) -> None:
    if cell.get("cell_type") == "code":
        cell["outputs"] = []
        cell["execution_count"] = None
    cell.get("metadata", {}).pop("execution", None)


def clean(nb: dict) -> dict:
    """A copy without outputs or execution metadata (what solutions are committed as)."""
    nb = copy.deepcopy(nb)
    for cell in nb.get("cells", []):
        _clear(cell)
    return nb


def dumps(nb: dict) -> str:
    """Deterministic notebook JSON (nbformat's layout: indent 1, sorted keys)."""
    for cell in nb.get("cells", []):
        src = cell.get("source", "")
        if isinstance(src, list):
            cell["source"] = "".join(src)
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def load(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid notebook JSON: {e}") from None
