"""Student versions: markers, hidden tests, outputs, malformed markers, the check command."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from course_lib import assignments as asg


def nb(*cells):
    return {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def code(src, outputs=None, count=None):
    return {"cell_type": "code", "source": src, "metadata": {}, "outputs": outputs or [], "execution_count": count}


def md(src):
    return {"cell_type": "markdown", "source": src, "metadata": {}}


SOLUTION = code(
    "def f(x):\n"
    "    \"\"\"Doc.\"\"\"\n"
    "    ### BEGIN SOLUTION\n"
    "    y = x + 1\n"
    "    return y\n"
    "    ### END SOLUTION\n"
    "\n"
    "print(f(1))",
    outputs=[{"output_type": "stream", "name": "stdout", "text": "2\n"}], count=3)


def test_solution_region_becomes_not_implemented_at_same_indent():
    out = asg.student_version(nb(SOLUTION))
    src = out["cells"][0]["source"]
    assert src == 'def f(x):\n    """Doc."""\n    raise NotImplementedError()\n\nprint(f(1))'
    assert out["cells"][0]["outputs"] == [] and out["cells"][0]["execution_count"] is None


def test_markdown_answer_and_hidden_tests():
    cells = [md("Why?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION"),
             code("check(f)\n### BEGIN HIDDEN TESTS\nassert f(2) == 3\n### END HIDDEN TESTS\nprint('done')")]
    out = asg.student_version(nb(*cells))
    assert out["cells"][0]["source"] == "Why?\nYOUR ANSWER HERE"
    assert out["cells"][1]["source"] == "check(f)\nprint('done')"


def test_source_as_list_and_original_untouched():
    original = nb(code(["x = 1\n", "### BEGIN SOLUTION\n", "x = 2\n", "### END SOLUTION\n"]))
    snapshot = json.dumps(original)
    out = asg.student_version(original)
    assert out["cells"][0]["source"] == "x = 1\nraise NotImplementedError()\n"
    assert json.dumps(original) == snapshot


@pytest.mark.parametrize("src, needle", [
    ("### BEGIN SOLUTION\nx = 1", "never closed"),
    ("x = 1\n### END SOLUTION", "without a matching"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n### END SOLUTION", "cannot nest"),
    ("### BEGIN HIDDEN TESTS\nx\n### END SOLUTION", "without a matching"),
])
def test_malformed_markers_name_notebook_and_cell(src, needle):
    with pytest.raises(asg.MarkerError) as err:
        asg.student_version(nb(md("intro"), code(src)), "07_demo.ipynb")
    assert needle in str(err.value) and "07_demo.ipynb, cell 1" in str(err.value)


def write(path, notebook):
    path.write_text(asg.dumps(notebook), encoding="utf-8")


def test_build_and_check(tmp_path):
    sol, stu = tmp_path / "solutions", tmp_path / "notebooks"
    sol.mkdir()
    write(sol / "01_x.ipynb", asg.clean(nb(SOLUTION)))
    assert asg.check(sol, stu) == [f"{stu / '01_x.ipynb'}: missing; run `python -m course_lib.assignments build`"]
    asg.build(sol, stu)
    assert asg.check(sol, stu) == []
    assert "NotImplementedError" in (stu / "01_x.ipynb").read_text()
    # a hand edit of the student version is caught
    edited = json.loads((stu / "01_x.ipynb").read_text())
    edited["cells"][0]["source"] += "\n# sneaky"
    write(stu / "01_x.ipynb", edited)
    assert any("differs from a fresh build" in p for p in asg.check(sol, stu))
    asg.build(sol, stu)
    # outputs committed in a solution are caught
    write(sol / "01_x.ipynb", nb(SOLUTION))
    assert any("has outputs" in p for p in asg.check(sol, stu))
    # an orphan student notebook is caught
    write(sol / "01_x.ipynb", asg.clean(nb(SOLUTION)))
    write(stu / "99_orphan.ipynb", nb())
    assert any("99_orphan" in p and "no source" in p for p in asg.check(sol, stu))


def test_cli_check_exit_codes(tmp_path):
    sol, stu = tmp_path / "solutions", tmp_path / "notebooks"
    sol.mkdir()
    write(sol / "01_x.ipynb", asg.clean(nb(SOLUTION)))
    run = lambda *a: subprocess.run([sys.executable, "-m", "course_lib.assignments", *a,
                                     "--solutions", str(sol), "--notebooks", str(stu)],
                                    capture_output=True, text=True, timeout=60)
    bad = run("check")
    assert bad.returncode == 1 and "01_x.ipynb" in bad.stderr
    assert run("build").returncode == 0
    assert run("check").returncode == 0
    write(sol / "02_bad.ipynb", nb(code("### BEGIN SOLUTION\nx = 1")))
    broken = run("build")
    assert broken.returncode == 2 and "02_bad.ipynb, cell 0" in broken.stderr


def test_percent_format_round_trip():
    text = ('# %% [markdown]\n# # Title\n#\n# Some *prose*.\n\n# %% tags=["parameters"]\nimport torch\nCFG = 1\n\n'
            '# %%\ndef f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n')
    notebook = asg.from_py(text)
    assert [c["cell_type"] for c in notebook["cells"]] == ["markdown", "code", "code"]
    assert notebook["cells"][0]["source"] == "# Title\n\nSome *prose*."
    assert notebook["cells"][1]["metadata"]["tags"] == ["parameters"]
    assert asg.from_py(asg.to_py(notebook))["cells"] == notebook["cells"]


def test_repository_notebooks_are_built_and_clean():
    """The committed notebooks/ equals a fresh build of solutions/, and nothing holds outputs."""
    assert asg.check() == []


# -- the public address: badges and the install guard come from pyproject.toml --------------------

def _course(tmp_path, url):
    (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "x"\n\n[project.urls]\nRepository = "{url}"\n')
    sol = tmp_path / "solutions"
    sol.mkdir(exist_ok=True)
    params = {"cell_type": "code", "source": "PROFILE = None\nSEED = 0", "metadata": {"tags": ["parameters"]},
              "outputs": [], "execution_count": None}
    write(sol / "01_x.ipynb", nb(md("# 01 · X\n\nIntro."), params, SOLUTION | {"outputs": [], "execution_count": None}))
    return sol, tmp_path / "notebooks"


def test_badges_and_install_guard_follow_pyproject(tmp_path):
    sol, stu = _course(tmp_path, "https://github.com/someone/fork")
    assert any("badge or install guard" in p for p in asg.check(sol, stu))
    asg.build(sol, stu)
    assert asg.check(sol, stu) == []
    for folder in (sol, stu):
        cells = asg.load(folder / "01_x.ipynb")["cells"]  # sources joined: Jupyter stores lists of lines
        assert cells[0]["source"] == ("# 01 · X\n\n" + asg.colab_badge("https://github.com/someone/fork",
                                                                      f"{folder.name}/01_x.ipynb") + "\n\nIntro.")
        assert f"github/someone/fork/blob/main/{folder.name}/01_x.ipynb" in cells[0]["source"]
        guard = asg.install_guard("git+https://github.com/someone/fork@main")
        assert cells[1]["source"] == guard + "\n\nPROFILE = None\nSEED = 0"
    first = (sol / "01_x.ipynb").read_text()
    asg.build(sol, stu)
    assert (sol / "01_x.ipynb").read_text() == first  # idempotent: the old guard is replaced, not stacked
    # the fork moves: one line in pyproject.toml, and check says what to do
    (tmp_path / "pyproject.toml").write_text('[project.urls]\nRepository = "https://github.com/other/place"\n')
    problems = asg.check(sol, stu)
    assert any("01_x.ipynb: its Colab badge or install guard" in p for p in problems)
    assert any("differs from a fresh build" in p for p in problems)
    asg.build(sol, stu)
    assert asg.check(sol, stu) == [] and "github/other/place/blob" in (stu / "01_x.ipynb").read_text()


def test_a_repository_colab_cannot_open_is_refused(tmp_path):
    sol, stu = _course(tmp_path, "https://gitlab.com/someone/fork")
    for command in (asg.build, asg.check):
        with pytest.raises(asg.CheckoutError, match="expected https://github.com/OWNER/NAME"):
            command(sol, stu)
    assert asg._main(["check", "--solutions", str(sol), "--notebooks", str(stu)]) == 2


def test_repository_address_is_named_once():
    """pyproject.toml names the address; every committed notebook carries what build makes of it."""
    repo = asg.repository()
    assert repo == "https://github.com/llm-course/llm-course"
    for folder in ("solutions", "notebooks"):
        for path in sorted((asg.ROOT / folder).glob("*.ipynb")):
            cells = asg.load(path)["cells"]
            assert asg.colab_badge(repo, f"{folder}/{path.name}") in cells[0]["source"]
            params = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
            assert params["source"].startswith(asg.install_guard(asg.guard_source(repo)) + "\n\n")


def test_check_outside_a_checkout_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "solutions"
    for cmd in ("check", "build"):
        assert asg._main([cmd, "--solutions", str(missing), "--notebooks", str(tmp_path / "notebooks")]) == 2
        err = capsys.readouterr()
        assert f"no solutions folder at {missing}" in err.err and "checkout of the course" in err.err
        assert "ok:" not in err.out
    assert not (tmp_path / "notebooks").exists()  # nothing created


def test_clean_clears_outputs_in_place(tmp_path):
    path = tmp_path / "01_x.ipynb"
    write(path, nb(SOLUTION))
    assert asg._main(["clean", str(path)]) == 0
    assert asg.outputs_in(json.loads(path.read_text())) == 0
    before = path.read_text()
    assert asg._main(["clean", str(path)]) == 0 and path.read_text() == before
