"""Student versions from worked solutions.

``solutions/NN_topic.ipynb`` is the single source of truth; ``notebooks/`` is generated:

* code between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` becomes
  ``raise NotImplementedError()`` at the marker's indent (nbgrader's convention);
* in markdown cells the region becomes ``YOUR ANSWER HERE``;
* regions between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` are removed;
* outputs, execution counts and execution metadata are cleared.

CLI::

    python -m course_lib.assignments build   # write notebooks/ from solutions/
    python -m course_lib.assignments check   # non-zero exit if notebooks/ is stale or has outputs
    python -m course_lib.assignments from-py SRC.py DEST.ipynb   # author in percent format
    python -m course_lib.assignments to-py SRC.ipynb DEST.py
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
ANSWER = "YOUR ANSWER HERE"


class MarkerError(ValueError):
    """Malformed solution markers, naming the notebook and cell."""


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _strip_cell(lines: list[str], cell_type: str, where: str) -> list[str]:
    out: list[str] = []
    region: str | None = None  # "solution" | "hidden"
    region_line = 0
    for i, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith(BEGIN) or stripped.startswith(BEGIN_HIDDEN):
            kind = "solution" if stripped.startswith(BEGIN) else "hidden"
            if region is not None:
                raise MarkerError(f"{where}, line {i}: {stripped!r} inside an open {region} region "
                                  f"(opened at line {region_line}); regions cannot nest")
            region, region_line = kind, i
            if kind == "solution":
                indent = line[: len(line) - len(line.lstrip())]
                out.append(f"{indent}raise NotImplementedError()" if cell_type == "code" else ANSWER)
            continue
        if stripped.startswith(END) or stripped.startswith(END_HIDDEN):
            kind = "solution" if stripped.startswith(END) else "hidden"
            if region != kind:
                raise MarkerError(f"{where}, line {i}: {stripped!r} without a matching "
                                  f"{BEGIN if kind == 'solution' else BEGIN_HIDDEN}")
            region = None
            continue
        if region is None:
            out.append(line)
    if region is not None:
        raise MarkerError(f"{where}: {region} region opened at line {region_line} is never closed")
    return out


def student_version(nb: dict, name: str = "notebook") -> dict:
    """The student version of a solution notebook (a new dict)."""
    nb = copy.deepcopy(nb)
    for idx, cell in enumerate(nb.get("cells", [])):
        where = f"{name}, cell {idx}"
        lines = _source(cell).split("\n")
        cell["source"] = "\n".join(_strip_cell(lines, cell.get("cell_type", "code"), where))
        _clear(cell)
    return nb


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


def _pairs(solutions: Path, notebooks: Path):
    for src in sorted(solutions.glob("*.ipynb")):
        yield src, notebooks / src.name


def build(solutions: Path = ROOT / "solutions", notebooks: Path = ROOT / "notebooks") -> list[Path]:
    """Write the student version of every solution notebook; returns the written paths."""
    notebooks.mkdir(parents=True, exist_ok=True)
    written = []
    for src, dst in _pairs(solutions, notebooks):
        text = dumps(student_version(load(src), src.name))
        if not dst.exists() or dst.read_text(encoding="utf-8") != text:
            dst.write_text(text, encoding="utf-8")
        written.append(dst)
    return written


def outputs_in(nb: dict) -> int:
    return sum(len(c.get("outputs", [])) + (c.get("execution_count") is not None)
               for c in nb.get("cells", []) if c.get("cell_type") == "code")


def check(solutions: Path = ROOT / "solutions", notebooks: Path = ROOT / "notebooks") -> list[str]:
    """Problems found (empty when ``notebooks/`` equals a fresh build and nothing has outputs)."""
    problems = []
    expected_names = set()
    for src, dst in _pairs(solutions, notebooks):
        expected_names.add(dst.name)
        try:
            sol = load(src)
            if outputs_in(sol):
                problems.append(f"{src}: has outputs or execution counts; clear them before committing")
            text = dumps(student_version(sol, src.name))
        except ValueError as e:
            problems.append(str(e))
            continue
        if not dst.exists():
            problems.append(f"{dst}: missing; run `python -m course_lib.assignments build`")
        elif dst.read_text(encoding="utf-8") != text:
            problems.append(f"{dst}: differs from a fresh build of {src}; run `python -m course_lib.assignments build`"
                            " (never edit notebooks/ by hand)")
    for extra in sorted(notebooks.glob("*.ipynb")):
        if extra.name not in expected_names:
            problems.append(f"{extra}: has no source in {solutions}/")
    return problems


# -- authoring helpers: a minimal percent format ("# %%" cells) <-> ipynb ---------------------

_HEADER = re.compile(r"^# %%(?:\s*\[(markdown|md)\])?(?:\s+tags=(\[.*\]))?\s*$")


def from_py(text: str) -> dict:
    """Parse percent-format Python (``# %%``, ``# %% [markdown]``, ``# %% tags=["parameters"]``)."""
    cells: list[dict] = []
    cur: dict | None = None
    for line in text.split("\n"):
        m = _HEADER.match(line)
        if m:
            if cur is not None:
                cells.append(cur)
            kind = "markdown" if m.group(1) else "code"
            tags = json.loads(m.group(2)) if m.group(2) else []
            cur = {"cell_type": kind, "metadata": {"tags": tags} if tags else {}, "lines": []}
            continue
        if cur is None:
            continue
        cur["lines"].append(line)
    if cur is not None:
        cells.append(cur)
    nb_cells = []
    for i, c in enumerate(cells):
        c["id"] = f"cell-{i:03d}"
        lines = c.pop("lines")
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if c["cell_type"] == "markdown":
            lines = [ln[2:] if ln.startswith("# ") else ln[1:] if ln.startswith("#") else ln for ln in lines]
            c["source"] = "\n".join(lines)
        else:
            c.update(source="\n".join(lines), outputs=[], execution_count=None)
        nb_cells.append(c)
    return {
        "cells": nb_cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def to_py(nb: dict) -> str:
    parts = []
    for c in nb.get("cells", []):
        tags = c.get("metadata", {}).get("tags", [])
        tag_s = f" tags={json.dumps(tags)}" if tags else ""
        src = _source(c)
        if c.get("cell_type") == "markdown":
            body = "\n".join(("# " + ln) if ln else "#" for ln in src.split("\n"))
            parts.append(f"# %% [markdown]{tag_s}\n{body}")
        else:
            parts.append(f"# %%{tag_s}\n{src}")
    return "\n\n".join(parts) + "\n"


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.assignments")
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd in ("build", "check"):
        s = sub.add_parser(cmd)
        s.add_argument("--solutions", type=Path, default=ROOT / "solutions")
        s.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    s = sub.add_parser("from-py"); s.add_argument("src", type=Path); s.add_argument("dst", type=Path)
    s = sub.add_parser("to-py"); s.add_argument("src", type=Path); s.add_argument("dst", type=Path)
    args = p.parse_args(argv)
    try:
        if args.cmd == "build":
            for path in build(args.solutions, args.notebooks):
                print(f"wrote {path}")
            return 0
        if args.cmd == "check":
            problems = check(args.solutions, args.notebooks)
            for prob in problems:
                print(prob, file=sys.stderr)
            if not problems:
                print(f"ok: {args.notebooks} matches a fresh build of {args.solutions}; no outputs committed")
            return 1 if problems else 0
        if args.cmd == "from-py":
            args.dst.write_text(dumps(from_py(args.src.read_text(encoding="utf-8"))), encoding="utf-8")
            return 0
        if args.cmd == "to-py":
            args.dst.write_text(to_py(load(args.src)), encoding="utf-8")
            return 0
    except MarkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main())
