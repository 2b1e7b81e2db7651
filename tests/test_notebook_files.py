"""assignments build / check refuse what would publish a solution, and notebooks are written
exactly as Jupyter writes them (tested through a real Jupyter server's contents API)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from course_lib import assignments

ROOT = Path(__file__).resolve().parent.parent


def _nb(*cells: tuple[str, str], attachments: dict | None = None) -> dict:
    out = []
    for i, (kind, src) in enumerate(cells):
        cell = {"cell_type": kind, "id": f"c{i}", "metadata": {}, "source": src}
        if kind == "code":
            cell.update(outputs=[], execution_count=None)
        if attachments and i in attachments:
            cell["attachments"] = attachments[i]
        out.append(cell)
    return {"cells": out, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


@pytest.mark.parametrize("line", ["## BEGIN SOLUTION", "###BEGIN SOLUTION", "### Begin Solution", "# BEGIN SOLUTION",
                                  "#### END SOLUTION", "## BEGIN HIDDEN TESTS", "    # begin solution"])
def test_near_miss_markers_are_refused_naming_cell_and_line(line):
    nb = _nb(("code", "x = 1"), ("code", f"def f():\n{line}\n    return 1\n### END SOLUTION"))
    with pytest.raises(assignments.MarkerError, match=r"demo.ipynb, cell 1, line 2: .*looks like a solution marker"):
        assignments.student_version(nb, "demo.ipynb")


def test_a_marker_inside_a_string_literal_is_refused():
    src = 'TEMPLATE = """\n### BEGIN SOLUTION\nanswer here\n### END SOLUTION\n"""\nprint(TEMPLATE)'
    with pytest.raises(assignments.MarkerError, match=r"cell 0, line 1: a solution marker inside a string literal"):
        assignments.student_version(_nb(("code", src)), "demo.ipynb")


def test_right_markers_still_work_and_the_answer_is_gone():
    nb = _nb(("code", "def f():\n    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION"),
             ("markdown", "Why?\n\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION"))
    out = assignments.student_version(nb, "demo.ipynb")
    assert out["cells"][0]["source"] == "def f():\n    raise NotImplementedError()"
    assert out["cells"][1]["source"] == "Why?\n\nYOUR ANSWER HERE"


def test_attachments_of_solution_cells_are_stripped():
    image = {"plot.png": {"image/png": "iVBORw0KGgo="}}
    nb = _nb(("markdown", "![](attachment:plot.png)\n### BEGIN SOLUTION\nsee the plot\n### END SOLUTION"),
             ("markdown", "A figure of the lecture ![](attachment:plot.png)"), attachments={0: image, 1: image})
    out = assignments.student_version(nb, "demo.ipynb")
    assert "attachments" not in out["cells"][0]
    assert out["cells"][1]["attachments"] == image  # a cell without a solution keeps its figure


def test_only_course_notebooks_are_published(tmp_path, capsys):
    sol, nbs = tmp_path / "solutions", tmp_path / "notebooks"
    sol.mkdir()
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    good = _nb(("code", "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"))
    for name in ("01_demo.ipynb", "Untitled.ipynb", "01_demo-Copy1.ipynb"):
        (sol / name).write_text(assignments.dumps(json.loads(json.dumps(good))))
    written = assignments.build(sol, nbs)
    assert [p.name for p in written] == ["01_demo.ipynb"]
    assert sorted(p.name for p in nbs.iterdir()) == ["01_demo.ipynb"]
    err = capsys.readouterr().err
    assert "ignored" in err and "Untitled.ipynb" in err and "01_demo-Copy1.ipynb" in err
    assert assignments.check(sol, nbs) == []


def test_files_are_in_jupyters_own_format():
    import nbformat

    for path in sorted((ROOT / "solutions").glob("*.ipynb")) + sorted((ROOT / "notebooks").glob("*.ipynb")):
        text = path.read_text(encoding="utf-8")
        assert text == nbformat.writes(nbformat.reads(text, as_version=4)) + "\n", path.name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("jupyter", path=str(Path(sys.executable).parent)) is None,
                    reason="jupyter_server is not installed (pip install -e '.[dev]')")
def test_a_jupyter_server_save_leaves_the_files_unchanged(tmp_path):
    names = ["00_getting_started.ipynb", "07_instruction_tuning.ipynb"]
    for folder in ("solutions", "notebooks"):
        (tmp_path / folder).mkdir()
        for n in names:
            shutil.copy(ROOT / folder / n, tmp_path / folder / n)
    port, token = _free_port(), "course-test-token"
    exe = str(Path(sys.executable).parent / "jupyter")
    server = subprocess.Popen([exe, "server", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
                               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
                               "--ServerApp.open_browser=False", "--allow-root"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / ".runtime")))
    base = f"http://127.0.0.1:{port}/api/contents"
    headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}

    def call(method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(f"{base}/{path}", method=method, headers=headers,
                                     data=None if body is None else json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")

    try:
        for _ in range(200):
            try:
                call("GET", "")
                break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail(f"jupyter server did not start: {server.stderr.read1(2000) if server.stderr else ''}")
        for folder in ("solutions", "notebooks"):
            for n in names:
                before = (tmp_path / folder / n).read_bytes()
                model = call("GET", f"{folder}/{n}?content=1")
                call("PUT", f"{folder}/{n}", {"type": "notebook", "format": "json", "content": model["content"]})
                assert (tmp_path / folder / n).read_bytes() == before, f"a JupyterLab save changed {folder}/{n}"
    finally:
        server.terminate()
        server.wait(timeout=30)
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    problems = [p for p in assignments.check(tmp_path / "solutions", tmp_path / "notebooks") if "differs" in p
                or "not written" in p]
    assert problems == []
