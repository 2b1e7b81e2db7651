"""``assignments grade`` and ``assignments nbgrader`` on real submissions, run for real.

The submissions are notebook 00 (one checked exercise, ``softmax``, and the written answers):
right, wrong, unfinished, a fake ``[ok]`` print, torch patched in another cell, an endless loop
and ``sys.exit`` in the answer, and one that redefines ``checks``. The grader runs each notebook
headless and grades the answers in its own worker, so only a right answer earns the point.
"""
from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib import assignments, grading

ROOT = Path(__file__).resolve().parent.parent
NB = "00_getting_started.ipynb"

RIGHT = '''def softmax(x: torch.Tensor) -> torch.Tensor:
    """A correct answer written differently from the solution."""
    e = torch.exp(x - x.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)
'''
WRONG = '''def softmax(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x)  # no max subtraction: overflows on large inputs
    return e / e.sum(dim=-1, keepdim=True)
'''
LOOP = '''def softmax(x: torch.Tensor) -> torch.Tensor:
    while True:
        pass
'''
EXIT = '''import sys
sys.exit("bye")
'''
FORBIDDEN = '''def softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=-1)
'''


def _student(answer: str | None = None, extra: list[tuple[int, str]] = ()) -> dict:
    sol = assignments.load(ROOT / "solutions" / NB)
    nb = assignments.student_version(sol, NB)
    (ex,), _ = grading.exercises(sol)
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if cell["id"] == ex.answer_cell and answer is not None:
            cell["source"] = answer
    for after, src in extra:  # extra code cells inserted after cell index `after`
        nb["cells"].insert(after + 1, {"cell_type": "code", "execution_count": None, "id": f"extra-{after}",
                                       "metadata": {}, "outputs": [], "source": src})
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    sol = assignments.load(ROOT / "solutions" / NB)
    (ex,), _ = grading.exercises(sol)
    check_index = next(i for i, c in enumerate(sol["cells"]) if c["id"] == ex.check_cell)
    subs = tmp_path_factory.mktemp("subs")
    cases = {
        "right": _student(RIGHT),
        "wrong": _student(WRONG),
        "unfinished": _student(None),
        "fake_print": _student(WRONG, [(check_index, 'print("[ok] softmax: correct")')]),
        "patched_torch": _student(WRONG, [(1, "import torch\ntorch.allclose = lambda *a, **k: True\n"
                                              "torch.exp = lambda t: t")]),
        "redefined_checks": _student(WRONG, [(2, "from course_lib import checks\n"
                                                 "checks.softmax = lambda f, **k: True")]),
        "loop": _student(LOOP),
        "exits": _student(EXIT),
        "forbidden": _student(FORBIDDEN),
    }
    for student, nb in cases.items():
        d = subs / student / "00_getting_started"  # nbgrader's layout for some ...
        if student in ("right", "wrong"):
            d = subs / student  # ... the plain one for others
        d.mkdir(parents=True)
        (d / NB).write_text(assignments.dumps(nb), encoding="utf-8")
    out = tmp_path_factory.mktemp("out")
    rows = grading.grade(subs, out / "gradebook.csv", progress=False, cell_timeout=60, notebook_timeout=240,
                         exercise_timeout=5)
    return rows, out


def _points(rows, student):
    return {r["exercise"]: (r["status"], r["points"], r["reason"]) for r in rows if r["student"] == student}


def test_gradebook_gives_the_point_only_to_the_right_answer(graded):
    rows, out = graded
    with open(out / "gradebook.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == grading.COLUMNS
    assert len(table) == len(rows)
    softmax = {r["student"]: r for r in table if r["exercise"] == "softmax"}
    assert set(softmax) == {"right", "wrong", "unfinished", "fake_print", "patched_torch", "redefined_checks",
                            "loop", "exits", "forbidden"}
    assert softmax["right"]["status"] == "passed" and float(softmax["right"]["points"]) == 1
    for student in set(softmax) - {"right"}:
        assert softmax[student]["status"] != "passed", (student, softmax[student])
        assert float(softmax[student]["points"]) == 0, student
    assert softmax["unfinished"]["status"] == "not implemented"
    assert softmax["loop"]["reason"] == "timeout"
    assert softmax["exits"]["reason"] == "exit"
    assert softmax["forbidden"]["reason"] == "rule"
    assert all(float(r["max_points"]) == 1 for r in softmax.values())
    written = [r for r in table if r["student"] == "right" and r["status"] == "manual"]
    assert len(written) == 1 and written[0]["exercise"] == "written:written-answer"  # for the instructor


def test_each_student_gets_feedback_with_verdicts_and_hints(graded):
    _, out = graded
    right = (out / "feedback" / "right.md").read_text()
    wrong = (out / "feedback" / "wrong.md").read_text()
    assert "softmax | passed | 1 / 1" in right
    assert "softmax | failed | 0 / 1" in wrong and "Hint:" in wrong
    loop = (out / "feedback" / "loop.md").read_text()
    assert "longer than" in loop
    assert (out / "feedback" / "executed" / "right" / NB).exists()  # the headless run is kept


def test_the_headless_run_saw_the_fake_verdicts_that_earned_nothing(graded):
    _, out = graded
    executed = json.loads((out / "feedback" / "executed" / "redefined_checks" / NB).read_text())
    printed = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", [])
                      if o.get("output_type") == "stream")
    assert "softmax" in printed or executed["cells"]  # the kernel ran the student's notebook
    assert not any(v["passed"] for v in grading.verdicts_in(executed) if v["exercise"] == "softmax")


def test_every_notebook_asks_a_question_answered_in_words():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        sol = assignments.load(path)
        _, written = grading.exercises(sol)
        assert written, f"{path.name} asks no written question"
        answer = next(c for c in sol["cells"] if c["id"] == written[0].cell)
        assert "A model answer." in answer["source"] and len(answer["source"]) > 200
        student = assignments.load(ROOT / "notebooks" / path.name)
        assert next(c for c in student["cells"] if c["id"] == written[0].cell)["source"] == "YOUR ANSWER HERE"


def test_a_folder_without_notebooks_is_a_clear_error(tmp_path):
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "notes.ipynb").write_text("{}")
    with pytest.raises(grading.GradingError, match="no course notebooks"):
        grading.grade(tmp_path, tmp_path / "g.csv", progress=False)
    with pytest.raises(grading.GradingError, match="not a folder"):
        grading.grade(tmp_path / "missing", tmp_path / "g.csv", progress=False)


def test_exercises_and_written_answers_are_read_from_the_solution():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        sol = assignments.load(path)
        exs, _ = grading.exercises(sol)
        calls = sum(len(grading.CHECK_CALL.findall(assignments._source(c))) for c in sol["cells"]
                    if c["cell_type"] == "code")
        assert exs and len(exs) == calls, path.name  # every check cell follows its answer cell
        ids = {c["id"] for c in sol["cells"]}
        assert all(e.answer_cell in ids and e.check_cell in ids for e in exs)
        assert grading.setup_sources(sol), f"{path.name} has no cell tagged parameters/setup"


# --- nbgrader: the exported course, graded by nbgrader itself --------------------------------

nbgrader_missing = shutil.which("nbgrader") is None and not (Path(sys.executable).parent / "nbgrader").exists()


def _nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    bindir = str(Path(sys.executable).parent)  # nbgrader runs alembic from the same environment
    exe = str(Path(bindir) / "nbgrader") if (Path(bindir) / "nbgrader").exists() else shutil.which("nbgrader")
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run([exe, *args], cwd=course, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.skipif(nbgrader_missing, reason="nbgrader is not installed (pip install -e '.[test]')")
def test_nbgrader_round_trip_scores_right_wrong_and_unfinished(tmp_path):
    course = tmp_path / "course"
    written = grading.nbgrader_course(course, [ROOT / "solutions" / NB])
    assert written == [course / "source" / "00_getting_started" / NB]
    assert (course / "nbgrader_config.py").exists()
    src = json.loads(written[0].read_text())
    kinds = [c["metadata"].get("nbgrader", {}) for c in src["cells"]]
    assert any(k.get("solution") and not k.get("grade") for k in kinds)  # autograded answer
    assert any(k.get("grade") and k.get("locked") and k.get("points") == 1 for k in kinds)  # autograder test
    r = _nbgrader(course, "generate_assignment", "00_getting_started", "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    release = json.loads((course / "release" / "00_getting_started" / NB).read_text())
    (ex,), _ = grading.exercises(assignments.load(ROOT / "solutions" / NB))
    for student, answer in (("ada", RIGHT), ("bob", WRONG), ("cy", None)):
        nb = copy.deepcopy(release)
        for cell in nb["cells"]:
            if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == f"answer_{ex.name}" and answer:
                cell["source"] = answer
        d = course / "submitted" / student / "00_getting_started"
        d.mkdir(parents=True)
        (d / NB).write_text(json.dumps(nb), encoding="utf-8")
    r = _nbgrader(course, "autograde", "00_getting_started", "--force")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = _nbgrader(course, "generate_feedback", "00_getting_started", "--force")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    r = _nbgrader(course, "export", "--to", str(tmp_path / "grades.csv"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    with open(tmp_path / "grades.csv", newline="") as f:
        scores = {row["student_id"]: float(row["raw_score"]) for row in csv.DictReader(f)}
    assert scores["ada"] == 1.0 and scores["bob"] == 0.0 and scores["cy"] == 0.0, scores
