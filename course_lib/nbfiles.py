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
    """The notebook's file text exactly as Jupyter writes it: ``nbformat.writes`` (sources as lists
    of lines, indent 1, sorted keys) plus the final newline ``nbformat.write`` adds, so opening and
    saving a notebook in JupyterLab leaves ``git diff`` empty. Needs nbformat (the ``test`` / ``dev``
    extras: building and checking notebooks are maintainers' commands)."""
    try:
        import nbformat
    except ImportError:  # pragma: no cover - the maintainers' environment always has it
        raise ImportError("writing notebooks needs nbformat: pip install -e '.[dev]' (or nbformat)") from None
    for cell in nb.get("cells", []):
        if isinstance(cell.get("source"), list):
            cell["source"] = "".join(cell["source"])
    text = nbformat.writes(nbformat.from_dict(nb), version=4)
    return text if text.endswith("\n") else text + "\n"


def load(path: Path) -> dict:
    """A notebook file as a dict, every cell's ``source`` one string (on disk Jupyter stores it as a
    list of lines)."""
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid notebook JSON: {e}") from None
    for cell in nb.get("cells", []) if isinstance(nb, dict) else []:
        if isinstance(cell.get("source"), list):
            cell["source"] = "".join(cell["source"])
    return nb
