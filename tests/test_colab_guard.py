"""The install guard that starts every parameters cell, run for real in a fresh virtual
environment, with a local git repository (``git+file://...``) standing in for the course's
public address: where course_lib is missing it installs the course from that address (into the
running interpreter, importable at once) and keeps the data cache on a mounted Drive; where
course_lib imports it does nothing (it does not even try the address)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from course_lib import assignments as asg

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True, timeout=60)
    return Path(out.stdout.strip())


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A new venv without course_lib. Its dependencies (torch, ...) are made visible from this
    environment through a .pth file, so pip finds them installed and fetches only the course."""
    if os.name == "nt":
        pytest.skip("the fresh venv borrows this one's packages through symlinks, which Windows allows "
                    "only to administrators")
    tmp = tmp_path_factory.mktemp("fresh")
    venv.create(tmp / "venv", with_pip=True, symlinks=os.name != "nt")
    python = tmp / "venv" / ("Scripts" if os.name == "nt" else "bin") / "python"
    deps = tmp / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "course_lib" in entry.name or entry.name.startswith(("pip", "_distutils_hack", "distutils-precedence")):
            continue
        (deps / entry.name).symlink_to(entry)
    (_site_packages(python) / "course_deps.pth").write_text(str(deps) + "\n")
    probe = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('course_lib'), "
                            "u.find_spec('torch') is not None)"], cwd=tmp, capture_output=True, text=True, timeout=120)
    assert probe.stdout.split() == ["None", "True"], probe.stdout + probe.stderr
    return python


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> str:
    """A git repository with the course's package on branch main, addressed as a file:// URL."""
    repo = tmp_path_factory.mktemp("repo") / "llm-course"
    repo.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "course_lib", repo / "course_lib", ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.email=ci@example.org", "-c", "user.name=ci"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "course"]):
        subprocess.run(git + args, cwd=repo, check=True, capture_output=True, timeout=60)
    return repo.as_uri()


def _run_guard(python: Path, guard: str, cwd: Path, after: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSE_DATA_DIR", "PYTHONPATH"))}
    return subprocess.run([str(python), "-c", guard + "\n" + after], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_guard_installs_the_course_where_it_is_missing(fresh, repository, tmp_path):
    drive = tmp_path / "MyDrive"  # stands in for /content/drive/MyDrive: Drive is mounted
    drive.mkdir()
    source = f"git+{repository}@main"
    guard = asg.install_guard(source, drive=str(drive))
    after = ("import course_lib; from course_lib import data, profile\n"  # importable in the same process
             "print('IMPORTED', course_lib.__file__)\nprint('CACHE', data.cache_dir())")
    out = _run_guard(fresh, guard, tmp_path, after)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("IMPORTED", "CACHE")))
    assert Path(lines["IMPORTED"]).is_relative_to(_site_packages(fresh))  # installed into the venv itself
    assert Path(lines["CACHE"]) == drive / "llm-course"
    assert f"installed the course from {source}\n" in out.stdout

    # the second time (a restarted runtime), course_lib imports: no install, not even a look at the
    # address; the data cache still goes to the mounted Drive
    again = _run_guard(fresh, asg.install_guard("git+file:///nonexistent/llm-course@main", drive=str(drive)),
                       tmp_path, "import os; print(os.environ['COURSE_DATA_DIR'])")
    assert again.returncode == 0 and again.stdout == f"{drive / 'llm-course'}\n", again.stdout + again.stderr


def test_guard_without_drive_keeps_the_default_cache(fresh, repository, tmp_path):
    # runs after the install above (same venv), so this is the "nothing to do" path with no Drive
    out = _run_guard(fresh, asg.install_guard(f"git+{repository}@main", drive=str(tmp_path / "no-drive")), tmp_path,
                     "import os; print(os.environ.get('COURSE_DATA_DIR'))")
    assert out.returncode == 0 and out.stdout == "None\n", out.stdout + out.stderr


def test_guard_does_nothing_in_a_checkout(tmp_path):
    """In this environment course_lib imports (an editable install of the checkout) and there is no
    Colab Drive: an address that does not exist is never tried, and nothing is printed or set."""
    guard = asg.install_guard("git+file:///nonexistent/llm-course@main", drive=str(tmp_path / "no-drive"))
    out = _run_guard(Path(sys.executable), guard, tmp_path, "import os; print(os.environ.get('COURSE_DATA_DIR'))")
    assert out.returncode == 0 and out.stdout == "None\n", out.stdout + out.stderr


def test_guard_fails_loudly_when_the_address_is_wrong(tmp_path):
    venv.create(tmp_path / "v", with_pip=True, symlinks=os.name != "nt")  # course_lib really missing
    python = tmp_path / "v" / ("Scripts" if os.name == "nt" else "bin") / "python"
    out = _run_guard(python, asg.install_guard("git+file:///nonexistent/llm-course@main"), tmp_path)
    assert out.returncode != 0 and "CalledProcessError" in out.stderr  # the cell stops, with pip's message above
