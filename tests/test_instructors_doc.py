"""docs/instructors.md, tested as written: every `python -m course_lib.assignments ...` command on
the page parses with the real command line, and the hand-out command leaves the solutions out."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from course_lib import assignments

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "instructors.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(?:bash)?\n(.*?)```", DOC, flags=re.S)
COMMANDS = [line.strip() for block in BLOCKS for line in block.splitlines()
            if line.strip().startswith("python -m course_lib.assignments")]


def test_the_page_shows_the_grade_and_nbgrader_commands():
    verbs = {shlex.split(c)[3] for c in COMMANDS}
    assert {"grade", "nbgrader"} <= verbs


@pytest.mark.parametrize("command", COMMANDS)
def test_every_documented_command_parses(command):
    args = shlex.split(command)[3:]
    parsed = assignments.parser().parse_args(args)  # SystemExit (a test failure) on an unknown option
    assert parsed.cmd == args[0]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_the_hand_out_command_leaves_the_solutions_out(tmp_path):
    line = next(line.strip() for b in BLOCKS for line in b.splitlines() if line.strip().startswith("git archive"))
    archive_cmd = shlex.split(line.split("|")[0])
    out = subprocess.run(archive_cmd, cwd=ROOT, capture_output=True, check=True).stdout
    path = tmp_path / "handout.tar"
    path.write_bytes(out)
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert any(n.startswith("notebooks/") for n in names) and any(n.startswith("course_lib/") for n in names)
    assert not any(n.startswith("solutions/") for n in names)
