"""Grading homework without trusting the student's notebook, and an nbgrader course with no manual step.

``python -m course_lib.assignments grade SUBMISSIONS --out gradebook.csv`` (:func:`grade`):

1. **Find the submissions**: ``SUBMISSIONS/<student>/<NN_topic>.ipynb`` or nbgrader's
   ``SUBMISSIONS/<student>/<assignment>/<NN_topic>.ipynb``; a notebook counts when ``solutions/``
   has one of that name.
2. **Run each one headless** in its own kernel (smoke profile unless told), with a time limit per
   cell and per notebook, carrying on after errors. The executed copy is kept for the feedback;
   its printed lines and displayed verdicts earn nothing.
3. **Grade in a process the notebook never ran in.** A fresh worker imports ``course_lib`` and
   captures every checker *before* any student code runs; it executes the course's own setup
   cells (from ``solutions/``, not the student's), then, for each exercise, only the student's
   answer cell (found by cell id, else by the ``def`` of the function) in a copy of that
   namespace, and calls the captured checker on the function. Whatever the rest of the notebook
   did (patching torch, redefining ``checks``, printing ``[ok]``, looping, ``sys.exit``) happens
   in the other kernel and changes nothing here. Inside the answer cell itself, patches of torch
   or the references are detected by the checks (``reason="patched"``); an endless loop or
   ``sys.exit`` fails that exercise only (time limit per exercise; the worker's own limit ends a
   hang that survives it).
4. **Write** the gradebook CSV (``student,notebook,exercise,status,points,max_points,reason,
   message``; written answers appear with status ``manual`` for the instructor) and one feedback
   file per student (markdown: every verdict with its hint, the cells that raised).

What is not defended: the answer cell's code runs in the grading worker, so an answer written to
attack the grader (e.g. rewriting the worker's output file) could forge its *own* exercise's row;
it cannot touch other exercises (each has a clean namespace, the checkers were captured before it
ran), other students or the gradebook. Every answer cell is in the feedback for a human to read.

``python -m course_lib.assignments nbgrader --out DIR [NOTEBOOK ...]`` (:func:`nbgrader_course`)
writes ``DIR/nbgrader_config.py`` and ``DIR/source/<stem>/<stem>.ipynb`` per notebook, with
nbgrader's cell metadata: answer cells are autograded answers, check cells are locked autograder
tests worth their points that fail when the exercise is wrong, written answers are manually graded;
``nbgrader generate_assignment``, ``autograde``, ``generate_feedback`` and ``export`` work as they come.

No torch here (the grader's own process stays light): the worker is ``python -m
course_lib.checks.worker``, and headless runs are ``python -m course_lib.grading execute``.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from . import nbfiles
from .checks.verdicts import VERDICT_MIME, verdicts_in

SOLUTIONS = nbfiles.ROOT / "solutions"
NOTEBOOK_NAME = re.compile(r"^\d\d_\w+\.ipynb$")
CHECK_CALL = re.compile(r"\bchecks\.(\w+)\(\s*(\w+)\s*(?:,\s*points\s*=\s*([0-9.]+))?")
SETUP_TAGS = ("parameters", "setup")
COLUMNS = ["student", "notebook", "exercise", "status", "points", "max_points", "reason", "message"]


class GradingError(ValueError):
    """The submissions folder cannot be graded as given; the message says why."""


@dataclass(frozen=True)
class Exercise:
    name: str  # the exercise id: the checker's name
    function: str  # the student's function the check cell passes to the checker
    answer_cell: str  # cell ids in the solution (and in the student version built from it)
    check_cell: str
    points: float


@dataclass(frozen=True)
class Written:
    cell: str
    question: str
    points: float


def _src(cell: dict) -> str:
    return nbfiles._source(cell)


def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def exercises(solution: dict) -> tuple[list[Exercise], list[Written]]:
    """The checked exercises and the written answers of a solution notebook, in order. An exercise is
    an answer cell (a code cell with ``### BEGIN SOLUTION``) and the next cell that calls
    ``checks.<name>(<function>[, points=N])`` (one answer cell may define several checked
    functions); a written answer is a markdown cell with the markers,
    worth ``metadata.course.points`` (default 1)."""
    found, written, answer = [], [], None
    cells = solution.get("cells", [])
    for i, cell in enumerate(cells):
        src = _src(cell)
        if cell.get("cell_type") == "markdown" and nbfiles.BEGIN in src:
            question = _src(cells[i - 1]).strip().splitlines()[-1][:200] if i else ""
            written.append(Written(cell["id"], question, float(cell.get("metadata", {}).get("course", {})
                                                                .get("points", 1))))
        if cell.get("cell_type") != "code":
            continue
        if nbfiles.BEGIN in src:
            answer = cell["id"]
            continue
        calls = CHECK_CALL.findall(src)  # one answer cell may hold two functions, checked in one cell
        if calls and answer is not None:
            found += [Exercise(name, fn, answer, cell["id"], float(pts or 1)) for name, fn, pts in calls]
            answer = None
    return found, written


def setup_sources(solution: dict) -> list[str]:
    """The course's own setup cells (tagged ``parameters`` or ``setup``), run before any answer."""
    return [_src(c) for c in solution.get("cells", []) if c.get("cell_type") == "code"
            and set(_tags(c)) & set(SETUP_TAGS)]


def answer_source(submission: dict, ex: Exercise) -> str | None:
    """The student's answer cell for ``ex``: the cell with the solution's id, else the first code
    cell that defines the function; None when neither is there."""
    cells = [c for c in submission.get("cells", []) if c.get("cell_type") == "code"]
    for c in cells:
        if c.get("id") == ex.answer_cell:
            return _src(c)
    for c in cells:
        if re.search(rf"^\s*def {re.escape(ex.function)}\s*\(", _src(c), re.M):
            return _src(c)
    return None


def find_submissions(folder: Path, solutions: Path = SOLUTIONS) -> list[tuple[str, Path]]:
    """(student, notebook path) of every course notebook below ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GradingError(f"{folder} is not a folder of submissions (expected SUBMISSIONS/<student>/<notebook>.ipynb "
                           "or SUBMISSIONS/<student>/<assignment>/<notebook>.ipynb)")
    known = {p.name for p in Path(solutions).glob("*.ipynb")}
    found = []
    for path in sorted(folder.rglob("*.ipynb")):
        rel = path.relative_to(folder)
        if ".ipynb_checkpoints" in rel.parts or len(rel.parts) not in (2, 3) or path.name not in known:
            continue
        found.append((rel.parts[0], path))
    if not found:
        raise GradingError(f"no course notebooks in {folder}: expected <student>/<NN_topic>.ipynb (or "
                           f"<student>/<assignment>/<NN_topic>.ipynb) named like one of {sorted(known)[:3]}...")
    return found


# ---------------------------------------------------------------------------------------------
# Running a submission headless (for the feedback) and grading it in a worker (for the points)
# ---------------------------------------------------------------------------------------------

def _env(profile: str, workdir: Path) -> dict:
    env = dict(os.environ, COURSE_PROFILE=profile, COURSE_RESULTS_DIR=str(workdir / "results"),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
    env.pop("JPY_SESSION_NAME", None)
    return env


def execute(submission: Path, out: Path, *, profile: str = "smoke", cell_timeout: float = 120,
            notebook_timeout: float = 900) -> dict:
    """Run ``submission`` top to bottom in a fresh kernel (errors do not stop it) and write the
    executed copy to ``out``; returns a summary (cells that raised, whether it timed out)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="course-grade-") as tmp:
        cmd = [sys.executable, "-m", "course_lib.grading", "execute", str(submission), str(out),
               "--cell-timeout", str(cell_timeout)]
        try:
            proc = subprocess.run(cmd, env=_env(profile, Path(tmp)), cwd=tmp, capture_output=True, text=True,
                                  timeout=notebook_timeout)
            timed_out, tail = False, proc.stderr[-2000:]
        except subprocess.TimeoutExpired:
            timed_out, tail = True, f"the notebook ran longer than {notebook_timeout:g} s and was stopped"
    errors = []
    if out.exists():
        for i, cell in enumerate(json.loads(out.read_text(encoding="utf-8")).get("cells", [])):
            for o in cell.get("outputs", []) or []:
                if o.get("output_type") == "error":
                    errors.append({"cell": i, "error": f"{o.get('ename')}: {o.get('evalue')}"[:300]})
    return {"timed_out": timed_out, "errors": errors, "log": tail if timed_out or not out.exists() else ""}


def grade_notebook(submission: dict, solution: dict, *, profile: str = "smoke", exercise_timeout: float = 60,
                   worker_timeout: float = 600) -> list[dict]:
    """Trusted verdicts of every exercise of ``submission`` (see the module docstring, step 3)."""
    exs, _ = exercises(solution)
    spec = {"setup": setup_sources(solution), "exercise_timeout": exercise_timeout,
            "exercises": [dict(asdict(e), source=answer_source(submission, e)) for e in exs]}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="course-grade-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "verdicts.jsonl"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        cmd = [sys.executable, "-m", "course_lib.checks.worker", str(spec_path), str(result_path)]
        problem = ""
        try:
            proc = subprocess.run(cmd, env=_env(profile, Path(tmp)), cwd=tmp, capture_output=True, text=True,
                                  timeout=worker_timeout)
            if proc.returncode != 0:
                problem = f"the grading worker stopped (exit code {proc.returncode}): {proc.stderr[-300:]}"
        except subprocess.TimeoutExpired:
            problem = f"grading took longer than {worker_timeout:g} s (an answer that never returns?)"
        if result_path.exists():
            for line in result_path.read_text(encoding="utf-8").splitlines():
                try:
                    v = json.loads(line)
                except ValueError:
                    continue
                if isinstance(v, dict) and v.get("exercise") in {e.name for e in exs}:
                    results.setdefault(v["exercise"], v)
    out = []
    for e in exs:
        v = results.get(e.name) or {"exercise": e.name, "status": "failed", "reason": "error", "points": 0,
                                    "max_points": e.points, "message": problem or "no verdict", "hint": ""}
        out.append(v)
    return out


def grade(submissions: Path, out_csv: Path, *, feedback_dir: Path | None = None, profile: str = "smoke",
          solutions: Path = SOLUTIONS, cell_timeout: float = 120, notebook_timeout: float = 900,
          exercise_timeout: float = 60, run_notebooks: bool = True, progress: bool = True) -> list[dict]:
    """Grade every submission below ``submissions``; write the gradebook CSV and feedback files."""
    found = find_submissions(submissions, solutions)
    out_csv = Path(out_csv)
    feedback_dir = Path(feedback_dir) if feedback_dir else out_csv.parent / "feedback"
    rows: list[dict] = []
    feedback: dict[str, list[str]] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(found), desc="grading", unit="notebook")
    for student, path in found:
        solution = nbfiles.load(Path(solutions) / path.name)
        try:
            submission = nbfiles.load(path)
        except ValueError as e:
            submission, broken = {"cells": []}, str(e)
        else:
            broken = ""
        run = {"timed_out": False, "errors": [], "log": ""}
        if run_notebooks and not broken:
            run = execute(path, feedback_dir / "executed" / student / path.name, profile=profile,
                          cell_timeout=cell_timeout, notebook_timeout=notebook_timeout)
        verdicts = grade_notebook(submission, solution, profile=profile, exercise_timeout=exercise_timeout)
        for v in verdicts:
            rows.append({"student": student, "notebook": path.stem, "exercise": v["exercise"],
                         "status": v["status"], "points": v["points"], "max_points": v["max_points"],
                         "reason": v.get("reason", ""), "message": v.get("message", "")})
        _, written = exercises(solution)
        for w in written:
            rows.append({"student": student, "notebook": path.stem, "exercise": f"written:{w.cell}",
                         "status": "manual", "points": "", "max_points": w.points, "reason": "graded by hand",
                         "message": w.question})
        feedback.setdefault(student, []).append(_feedback(path.stem, verdicts, written, run, broken))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    feedback_dir.mkdir(parents=True, exist_ok=True)
    for student, parts in feedback.items():
        (feedback_dir / f"{student}.md").write_text(f"# Feedback for {student}\n\n" + "\n".join(parts),
                                                    encoding="utf-8")
    return rows


def _feedback(notebook: str, verdicts: list[dict], written: list[Written], run: dict, broken: str) -> str:
    lines = [f"## {notebook}", ""]
    if broken:
        lines += [f"The submission could not be read: {broken}", ""]
    got = sum(float(v["points"] or 0) for v in verdicts)
    total = sum(float(v["max_points"]) for v in verdicts)
    lines += [f"Checked exercises: {got:g} / {total:g} points.", "", "| exercise | result | points | details |",
              "|---|---|---|---|"]
    for v in verdicts:
        detail = v.get("message", "")
        if v["status"] != "passed" and v.get("hint"):
            detail += f" Hint: {v['hint']}"
        lines.append(f"| {v['exercise']} | {v['status']} | {v['points']:g} / {v['max_points']:g} | "
                     f"{detail.replace('|', '/')[:400]} |")
    if written:
        lines += ["", f"Written answers ({len(written)}) are graded by hand."]
    if run.get("timed_out"):
        lines += ["", f"Running the whole notebook: {run['log']}."]
    if run.get("errors"):
        lines += ["", "Cells that raised when the notebook ran top to bottom:"]
        lines += [f"- cell {e['cell']}: `{e['error']}`" for e in run["errors"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# nbgrader
# ---------------------------------------------------------------------------------------------

NBGRADER_CONFIG = '''"""nbgrader configuration written by `python -m course_lib.assignments nbgrader`."""
import os

os.environ.setdefault("COURSE_PROFILE", "{profile}")  # every kernel nbgrader starts inherits it
os.environ.setdefault("OMP_NUM_THREADS", "1")
c = get_config()  # noqa: F821
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.assignment_id = ""
c.ExecutePreprocessor.timeout = {cell_timeout}  # seconds per cell
c.Execute.timeout = {cell_timeout}
c.ClearSolutions.code_stub = {{"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
'''


def _nbgrader_meta(grade_id: str, *, solution: bool, grade: bool, locked: bool, points: float | None = None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution}
    if points is not None:
        meta["points"] = points
    return meta


def nbgrader_notebook(solution: dict) -> dict:
    """``solution`` with nbgrader's metadata on answer, check and written-answer cells. A check cell
    keeps its fallback for the student and then fails (``assert``) when the exercise was wrong, so
    nbgrader's autograder gives its points only to a right answer."""
    import copy

    nb = nbfiles.clean(copy.deepcopy(solution))
    exs, written = exercises(nb)
    by_answer = {e.answer_cell: e for e in exs}
    by_check = {e.check_cell: e for e in exs}
    by_written = {w.cell: w for w in written}
    for cell in nb["cells"]:
        cid = cell["id"]
        meta = cell.setdefault("metadata", {})
        if cid in by_answer:
            meta["nbgrader"] = _nbgrader_meta(f"answer_{by_answer[cid].name}", solution=True, grade=False, locked=False)
        elif cid in by_check:
            e = by_check[cid]
            src = _src(cell).rstrip("\n")
            first = re.search(rf"(\w+)\s*=\s*checks\.{e.name}\(", src)
            if first is None:  # a check cell without `ok = ...`: keep the verdict for the assert
                src = src.replace(f"checks.{e.name}(", f"_verdict = checks.{e.name}(", 1)
                var = "_verdict"
            else:
                var = first.group(1)
            cell["source"] = (f"{src}\nassert {var}, \"{e.name} is not right yet: see the message above \"\n")
            meta["nbgrader"] = _nbgrader_meta(f"test_{e.name}", solution=False, grade=True, locked=True,
                                              points=e.points)
        elif cid in by_written:
            meta["nbgrader"] = _nbgrader_meta(f"written_{cid}", solution=True, grade=True, locked=False,
                                              points=by_written[cid].points)
        elif cell.get("cell_type") == "code" and set(_tags(cell)) & set(SETUP_TAGS):
            meta["nbgrader"] = _nbgrader_meta(f"setup_{cid}", solution=False, grade=False, locked=True)
    return nb


def nbgrader_course(out: Path, notebooks: list[Path] | None = None, *, profile: str = "smoke",
                    cell_timeout: int = 600, solutions: Path = SOLUTIONS) -> list[Path]:
    """Write an nbgrader course folder (config + one assignment per notebook); returns the notebooks written."""
    out = Path(out)
    paths = [Path(p) for p in notebooks] if notebooks else sorted(Path(solutions).glob("*.ipynb"))
    paths = [p if p.exists() else Path(solutions) / p.name for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise GradingError(f"no such solution notebook: {', '.join(missing)} (names like 00_getting_started.ipynb)")
    bad = [p.name for p in paths if not NOTEBOOK_NAME.match(p.name)]
    if bad:
        raise GradingError(f"not a course notebook (expected NN_topic.ipynb): {', '.join(bad)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "nbgrader_config.py").write_text(NBGRADER_CONFIG.format(profile=profile, cell_timeout=int(cell_timeout)),
                                            encoding="utf-8")
    written = []
    for p in paths:
        dest = out / "source" / p.stem / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(nbfiles.dumps(nbgrader_notebook(nbfiles.load(p))), encoding="utf-8")
        written.append(dest)
    return written


# ---------------------------------------------------------------------------------------------
# Headless execution (a subprocess, so a notebook-wide time limit can stop it)
# ---------------------------------------------------------------------------------------------

def _execute_main(src: str, dst: str, cell_timeout: float) -> int:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(src, as_version=4)
    client = NotebookClient(nb, timeout=int(cell_timeout), allow_errors=True, kernel_name="python3",
                            resources={"metadata": {"path": os.getcwd()}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, dst)
    return 0


def _main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["execute"] and len(argv) in (3, 5):
        timeout = float(argv[4]) if len(argv) == 5 else 120.0
        return _execute_main(argv[1], argv[2], timeout)
    print("usage: python -m course_lib.assignments grade|nbgrader ... (this module's own entry points are "
          "internal)", file=sys.stderr)
    return 2


__all__ = ["VERDICT_MIME", "Exercise", "Written", "GradingError", "exercises", "find_submissions", "grade",
           "grade_notebook", "execute", "nbgrader_course", "nbgrader_notebook", "verdicts_in"]

if __name__ == "__main__":
    sys.exit(_main())
