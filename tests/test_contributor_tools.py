"""Contributor tools, run for real: jupytext reads and writes the course's percent format (it
replaced a hand-written bridge), and the pre-commit hooks (ruff, clearing outputs, assignments
check) pass on a clean tree and stop a commit that breaks one of them."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib import assignments as asg

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def _cells(nb: dict) -> list[tuple]:
    return [(c["cell_type"], asg._source(c), c.get("metadata", {}).get("tags", [])) for c in nb["cells"]]


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_jupytext_round_trips_every_solution(path):
    nb = asg.load(path)
    text = asg.to_py(nb)
    assert text.startswith("# %% [markdown]")  # no jupytext header: the percent file is just the cells
    assert '# %% tags=["parameters"]' in text
    assert _cells(asg.from_py(text)) == _cells(nb)


def test_from_py_and_to_py_commands(tmp_path):
    src = ROOT / "solutions" / "00_getting_started.ipynb"
    run = lambda *a: subprocess.run([sys.executable, "-m", "course_lib.assignments", *a], capture_output=True,
                                    text=True, timeout=120)
    assert run("to-py", str(src), str(tmp_path / "draft.py")).returncode == 0
    assert run("from-py", str(tmp_path / "draft.py"), str(tmp_path / "back.ipynb")).returncode == 0
    back = json.loads((tmp_path / "back.ipynb").read_text())
    assert _cells(back) == _cells(asg.load(src))
    assert (tmp_path / "back.ipynb").read_text() == asg.dumps(back)  # the course's own JSON layout
    assert "jupytext" not in back["metadata"] and back["metadata"]["kernelspec"]["name"] == "python3"


def _modules_of_assignments() -> list[str]:
    """course_lib/__init__.py, assignments.py and the course_lib modules it imports, transitively."""
    import ast

    todo, seen = ["assignments.py"], {"__init__.py"}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse((ROOT / "course_lib" / name).read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                todo.append(node.module.split(".")[0] + ".py")
    return sorted(seen)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=ci@example.org", "-c", "user.name=ci", *args], cwd=repo, check=True,
                   capture_output=True, timeout=60)


def _pre_commit(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pre_commit", "run", "--all-files"], cwd=repo, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_pre_commit_hooks_pass_clean_and_stop_a_bad_commit(tmp_path):
    repo = tmp_path / "repo"
    (repo / "course_lib").mkdir(parents=True)
    for name in _modules_of_assignments():  # all that the notebook hooks import
        shutil.copy(ROOT / "course_lib" / name, repo / "course_lib" / name)
    for name in (".pre-commit-config.yaml", "pyproject.toml"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("solutions", "notebooks"):
        (repo / folder).mkdir()
        shutil.copy(ROOT / folder / "00_getting_started.ipynb", repo / folder)
    (repo / "tests").mkdir()
    (repo / "tests" / "test_ok.py").write_text('"""Fine."""\n\n\ndef test_ok():\n    assert 1 + 1 == 2\n')
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "clean tree")
    clean = _pre_commit(repo)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.count("Passed") == 3

    # a solution committed with outputs: the hook clears them (the commit stops, the file is fixed)
    sol = repo / "solutions" / "00_getting_started.ipynb"
    nb = json.loads(sol.read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["execution_count"] = 7
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "hello\n"}]
    sol.write_text(asg.dumps(nb))
    # a lint error, and a student notebook edited by hand
    (repo / "tests" / "test_ok.py").write_text("import os\n")
    stu = repo / "notebooks" / "00_getting_started.ipynb"
    student = json.loads(stu.read_text())
    student["cells"][-1]["source"] += "\n\nEdited by hand."
    stu.write_text(asg.dumps(student))
    _git(repo, "add", "-A")
    bad = _pre_commit(repo)
    assert bad.returncode != 0
    assert "F401" in bad.stdout  # ruff: `os` imported but unused
    assert "cleared outputs of solutions/00_getting_started.ipynb" in bad.stdout
    assert "differs from a fresh build" in bad.stdout
    assert asg.outputs_in(json.loads(sol.read_text())) == 0  # the hook fixed the solution in place
