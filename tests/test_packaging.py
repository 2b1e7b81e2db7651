"""Packaging: what ``pip install .`` brings (runtime only what the code imports; no test or lab
tool), environment.yml in step with pyproject.toml, and an installed copy (a wheel, as on Colab)
that writes its results outside the package and refuses ``assignments check`` clearly."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CONDA_NAMES = {"torch": "pytorch"}  # conda-forge's name for the same package
# import name -> distribution name, where they differ
DIST_OF = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "pyyaml"}
# imported (inside functions), but not needed by a student's notebooks: IPython only inside a
# Jupyter kernel, which brings it; the others only by instructor and author commands (assignments
# from-py/to-py, grading), which run in an environment with the test or dev extra
OPTIONAL_IMPORTS = {"ipython", "jupytext", "nbclient", "nbformat"}
# what a student's `pip install .` must not bring
TOOLS = {"pytest", "pytest-xdist", "nbval", "jupyterlab", "notebook", "ipywidgets", "ipykernel", "papermill",
         "jupytext", "pre-commit", "ruff", "transformers", "datasets", "nbconvert", "nbclient", "latex2mathml",
         "coverage"}


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _runtime(specs) -> set[str]:
    return {_name(s) for s in specs if "python_version" not in s}


def test_environment_yml_matches_pyproject():
    """environment.yml = runtime + lab + test + dev (the opt-in `hf` extra stays out)."""
    wanted = _runtime(PROJECT["dependencies"])
    for extra in ("lab", "test", "dev"):
        wanted |= {_name(s) for s in PROJECT["optional-dependencies"][extra] if not s.startswith("course_lib")}
    wanted = {CONDA_NAMES.get(n, n) for n in wanted}
    conda = set()
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("\ndependencies:", 1)[1].splitlines():
        m = re.match(r"^  - ([A-Za-z0-9_.\-]+)", line)
        if m and m.group(1) not in ("python", "pip"):
            conda.add(_name(m.group(1)))
    assert conda == wanted, f"only in environment.yml: {conda - wanted}; only in pyproject: {wanted - conda}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
    assert "COURSE_PROFILE=smoke" in ci and "COURSE_DATA_MIRROR" in ci


def _third_party_imports(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {DIST_OF.get(m, m).lower().replace("_", "-") for m in found
            if m not in sys.stdlib_module_names and m not in ("course_lib", "tomli")}


def test_runtime_dependencies_are_exactly_what_the_library_and_notebooks_import():
    imported = set()
    for path in (ROOT / "course_lib").rglob("*.py"):
        imported |= _third_party_imports(path.read_text(encoding="utf-8"))
    for path in (ROOT / "solutions").glob("*.ipynb"):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] == "code":
                src = "".join(cell["source"])
                imported |= _third_party_imports("\n".join(ln for ln in src.split("\n")
                                                           if not ln.lstrip().startswith(("%", "!"))))
    extras = {_name(s) for group in PROJECT["optional-dependencies"].values() for s in group}
    assert OPTIONAL_IMPORTS - {"ipython"} <= extras
    imported -= OPTIONAL_IMPORTS
    assert imported == _runtime(PROJECT["dependencies"]), (
        f"imported but not a runtime dependency: {imported - _runtime(PROJECT['dependencies'])}; "
        f"a runtime dependency nothing imports: {_runtime(PROJECT['dependencies']) - imported}")
    assert "tomli>=1.1; python_version < '3.11'" in PROJECT["dependencies"]  # tomllib's backport, for Python 3.10


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The course's wheel, built from a copy of the sources (nothing written into the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "course_lib", src / "course_lib", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (whl,) = (tmp / "dist").glob("course_lib-*.whl")
    return whl


def test_wheel_requires_no_test_or_lab_tool(wheel):
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Requires-Dist:")]
    plain = {_name(r) for r in requires if "extra ==" not in r}
    assert plain & TOOLS == set(), f"pip install . would install {plain & TOOLS}"
    assert plain == _runtime(PROJECT["dependencies"]) | {"tomli"}
    extras = {ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Provides-Extra:")}
    assert extras == {"lab", "test", "dev", "hf"}
    lab = {_name(r) for r in requires if 'extra == "lab"' in r}
    assert lab == {"jupyterlab", "ipywidgets"}
    assert f"Project-URL: Repository, {PROJECT['urls']['Repository']}" in meta


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a folder of its own (its dependencies come from this environment)."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return site


def _run_installed(site: Path, cwd: Path, code: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COURSE_RESULTS")}
    clean.update(PYTHONPATH=str(site), COURSE_PROFILE="smoke", **env)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=clean, capture_output=True, text=True,
                          timeout=300)


def test_installed_copy_records_results_outside_the_package(installed, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    code = ("import course_lib, pathlib; from course_lib import results; "
            "print(pathlib.Path(course_lib.__file__).resolve().parent); print(results.record('00_demo', x=1))")
    out = _run_installed(installed, work, code)
    assert out.returncode == 0, out.stderr
    package, written = (Path(line) for line in out.stdout.split())
    assert package == (installed / "course_lib").resolve()  # the installed copy, not the checkout
    assert written == work.resolve() / "build" / "results" / "00_demo__smoke.json"
    assert json.loads(written.read_text())["metrics"] == {"x": 1}
    shipped = {p.relative_to(installed).as_posix() for p in (installed / "course_lib").rglob("*.json")}
    assert shipped == {"course_lib/expected.json"}  # nothing recorded inside the installed package
    assert not (installed / "build").exists()  # nor beside it (site-packages/build/results was the bug)
    # COURSE_RESULTS_DIR wins
    out = _run_installed(installed, work, code, COURSE_RESULTS_DIR=str(tmp_path / "mine"))
    assert Path(out.stdout.split()[1]) == (tmp_path / "mine").resolve() / "00_demo__smoke.json"


def test_installed_copy_ships_the_expected_bands(installed, tmp_path):
    """A learner on Colab has no checkout: the bands each notebook's last cell prints travel in the wheel."""
    code = ("from course_lib import expected; d = expected.load(); "
            "print(expected.FILE.resolve()); print(sorted(d['notebooks']) == sorted(expected.load(%r)['notebooks']))"
            % str(ROOT / "course_lib" / "expected.json"))
    out = _run_installed(installed, tmp_path, code)
    assert out.returncode == 0, out.stderr
    where, same = out.stdout.split()
    assert Path(where) == (installed / "course_lib" / "expected.json").resolve() and same == "True"


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root can write into a read-only folder: this check needs an ordinary user")
def test_installed_copy_in_an_unwritable_folder_records_under_the_data_cache(installed, tmp_path):
    work = tmp_path / "readonly"
    work.mkdir()
    work.chmod(0o555)
    try:
        out = _run_installed(installed, work, "from course_lib import results; print(results.record('00_demo', x=1))",
                             COURSE_DATA_DIR=str(tmp_path / "cache"))
    finally:
        work.chmod(0o755)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == tmp_path / "cache" / "results" / "00_demo__smoke.json"


def test_installed_copy_refuses_assignments_check_clearly(installed, tmp_path):
    for cmd in ("check", "build"):
        out = _run_installed(installed, tmp_path, f"import sys; from course_lib.assignments import _main; "
                                                  f"sys.exit(_main(['{cmd}']))")
        assert out.returncode == 2, (out.stdout, out.stderr)
        assert "no solutions folder at" in out.stderr and "checkout of the course" in out.stderr
        assert "ok:" not in out.stdout


def test_ci_tests_every_os_with_the_oldest_and_newest_python():
    yaml = pytest.importorskip("yaml")
    ci = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    versions = [c.rsplit(":: ", 1)[1] for c in PROJECT["classifiers"] if re.fullmatch(r".*:: 3\.\d+", c)]
    versions.sort(key=lambda v: tuple(map(int, v.split("."))))
    assert PROJECT["requires-python"] == f">={versions[0]}"
    matrix = ci["jobs"]["test"]["strategy"]["matrix"]
    assert matrix["python"] == [versions[0], versions[-1]]
    assert matrix["os"] == ["ubuntu-latest", "macos-latest", "windows-latest"]
    triggers = ci[True] if True in ci else ci["on"]  # YAML 1.1 reads the key `on` as true
    assert "schedule" in triggers and "pytest -m online" in (ROOT / "Makefile").read_text()
    assert "make test-online" in ci["jobs"]["online"]["steps"][-1]["run"]
    assert ci["jobs"]["online"]["if"].startswith("github.event_name == 'schedule'")
