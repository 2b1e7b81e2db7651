"""Student versions from worked solutions.

``solutions/NN_topic.ipynb`` is the single source of truth; ``notebooks/`` is generated:

* code between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` becomes
  ``raise NotImplementedError()`` at the marker's indent (nbgrader's convention);
* in markdown cells the region becomes ``YOUR ANSWER HERE``;
* regions between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` are removed;
* outputs, execution counts and execution metadata are cleared.

``build`` also writes, from ``[project.urls] Repository`` of ``pyproject.toml`` (the one place
naming the course's address), every "Open in Colab" badge and the :func:`install_guard` that
starts each ``parameters`` cell; ``check`` fails when one is out of date.

CLI (in a checkout of the course)::

    python -m course_lib.assignments build   # write notebooks/ from solutions/
    python -m course_lib.assignments check   # non-zero exit if notebooks/ is stale or has outputs
    python -m course_lib.assignments clean [NB ...]   # clear outputs of solutions (pre-commit runs it)
    python -m course_lib.assignments from-py SRC.py DEST.ipynb   # author in percent format (jupytext)
    python -m course_lib.assignments to-py SRC.ipynb DEST.py
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

from .nbfiles import (  # noqa: F401  (also part of this module's interface: assignments.load, .dumps, ...)
    ANSWER,
    BEGIN,
    BEGIN_HIDDEN,
    END,
    END_HIDDEN,
    ROOT,
    _clear,
    _source,
    clean,
    dumps,
    load,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

BRANCH = "main"
COLAB_DRIVE = "/content/drive/MyDrive"  # where Colab mounts Google Drive
GUARD_FIRST_LINE = "# Colab or a bare kernel: install the course first (where course_lib imports, this does nothing)"
_BADGE = re.compile(r"^\[!\[Open in Colab\]\([^)]*\)\]\([^)]*\)[ \t]*$", re.M)


class MarkerError(ValueError):
    """Malformed solution markers, naming the notebook and cell."""


class CheckoutError(RuntimeError):
    """``build`` or ``check`` where there is no course to build: an installed copy, not a checkout."""


# a line that looks like a marker to a reader but is not one to this tool (nor to nbgrader):
# `## BEGIN SOLUTION`, `###BEGIN SOLUTION`, `### Begin Solution`, `# BEGIN SOLUTION`, ...
_NEAR_MISS = re.compile(r"^\s*#+\s*(begin|end)\s*(solution|hidden\s*tests)\b", re.I)


def _marker_kind(stripped: str) -> str | None:
    for marker in (BEGIN, END, BEGIN_HIDDEN, END_HIDDEN):
        if stripped.startswith(marker):
            return marker
    return None


def _markers_in_strings(source: str, where: str) -> None:
    """A marker inside a string literal would rewrite the string: refuse it, naming the line."""
    import io
    import tokenize

    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return  # not Python (a %magic, a half-written cell): the line checks still apply
    for tok in tokens:
        if tok.type == tokenize.STRING and any(_NEAR_MISS.match(line) for line in tok.string.splitlines()):
            raise MarkerError(f"{where}, line {tok.start[0]}: a solution marker inside a string literal; "
                              "markers must be comment lines of their own")


def _strip_cell(lines: list[str], cell_type: str, where: str) -> list[str]:
    out: list[str] = []
    region: str | None = None  # "solution" | "hidden"
    region_line = 0
    if cell_type == "code":
        _markers_in_strings("\n".join(lines), where)
    for i, line in enumerate(lines, 1):
        stripped = line.strip()
        marker = _marker_kind(stripped)
        if marker is None and _NEAR_MISS.match(line):
            raise MarkerError(f"{where}, line {i}: {stripped!r} looks like a solution marker but is not one; "
                              f"write exactly {BEGIN!r} / {END!r} (or the HIDDEN TESTS pair), or reword the line")
        if marker in (BEGIN, BEGIN_HIDDEN):
            kind = "solution" if marker == BEGIN else "hidden"
            if region is not None:
                raise MarkerError(f"{where}, line {i}: {stripped!r} inside an open {region} region "
                                  f"(opened at line {region_line}); regions cannot nest")
            region, region_line = kind, i
            if kind == "solution":
                indent = line[: len(line) - len(line.lstrip())]
                out.append(f"{indent}raise NotImplementedError()" if cell_type == "code" else ANSWER)
            continue
        if marker in (END, END_HIDDEN):
            kind = "solution" if marker == END else "hidden"
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
    """The student version of a solution notebook (a new dict). A cell that held a solution also
    loses its attachments (an image pasted into a model answer would give it away)."""
    nb = copy.deepcopy(nb)
    for idx, cell in enumerate(nb.get("cells", [])):
        where = f"{name}, cell {idx}"
        source = _source(cell)
        lines = source.split("\n")
        stripped = "\n".join(_strip_cell(lines, cell.get("cell_type", "code"), where))
        if stripped != source:
            cell.pop("attachments", None)
        cell["source"] = stripped
        _clear(cell)
    return nb


COURSE_NOTEBOOK = re.compile(r"^\d\d_[A-Za-z0-9_]+\.ipynb$")


def _pairs(solutions: Path, notebooks: Path):
    """(solution, student notebook) of every course notebook: ``NN_topic.ipynb`` only; anything
    else in ``solutions/`` (a scratch copy, an ``Untitled.ipynb``) is left out, with a message."""
    for src in sorted(solutions.glob("*.ipynb")):
        if not COURSE_NOTEBOOK.match(src.name):
            print(f"ignored {src}: not a course notebook (course notebooks are named NN_topic.ipynb)",
                  file=sys.stderr)
            continue
        yield src, notebooks / src.name


# -- the public address: badges and the install guard -------------------------------------------

def repository(root: Path = ROOT) -> str:
    """The course's public repository, ``[project.urls] Repository`` of ``root/pyproject.toml``."""
    path = Path(root) / "pyproject.toml"
    if not path.is_file():
        raise CheckoutError(f"no pyproject.toml in {root}: the address is read from a checkout of the course")
    urls = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {}).get("urls", {})
    url = urls.get("Repository", "").rstrip("/")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise CheckoutError(f"{path}: [project.urls] Repository = {url!r}; expected https://github.com/OWNER/NAME "
                            "(Colab opens notebooks from GitHub)")
    return url.removesuffix(".git")


def colab_badge(repo: str, path: str) -> str:
    """The markdown "Open in Colab" badge of ``path`` (e.g. ``notebooks/01_x.ipynb``) in ``repo``."""
    where = repo.removeprefix("https://github.com/")
    return ("[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{where}/blob/{BRANCH}/{path})")


def install_guard(source: str, drive: str = COLAB_DRIVE) -> str:
    """The first lines of every ``parameters`` cell: where ``course_lib`` does not import (Colab, a
    bare kernel), pip-install the course from ``source`` into the kernel's Python; where Drive is
    mounted at ``drive`` (Colab, also after a restart), keep the data cache and trained models there.
    In a set-up checkout they do nothing. No ``NAME = ...`` line: papermill would list it as a parameter."""
    return "\n".join([
        GUARD_FIRST_LINE,
        "import importlib.util, os, subprocess, sys",
        'if importlib.util.find_spec("course_lib") is None:',
        '    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",',
        f"                    {json.dumps(source)}], check=True)",
        "    importlib.invalidate_caches()",
        f'    print("installed the course from {source}")',
        f"if os.path.isdir({json.dumps(drive)}):  # Colab, Drive mounted: data and trained models outlive the session",
        f'    os.environ.setdefault("COURSE_DATA_DIR", {json.dumps(drive + "/llm-course")})',
    ])


def guard_source(repo: str) -> str:
    """What the guard installs: the repository's default branch, through git."""
    return f"git+{repo}@{BRANCH}"


def _with_badge(text: str, badge: str) -> str:
    new, found = _BADGE.subn(lambda _: badge, text, count=1)
    return new if found else "\n".join(text.split("\n")[:1] + ["", badge] + text.split("\n")[1:])  # after the title


def _with_guard(text: str, guard: str) -> str:
    if text.startswith(GUARD_FIRST_LINE + "\n"):  # replace the old guard, up to its blank line
        text = text.partition("\n\n")[2]
    return guard + "\n\n" + text


def sync_public_address(nb: dict, repo: str, path: str) -> dict:
    """A copy of ``nb`` with the badge of ``path`` and the install guard, both from ``repo``."""
    nb = copy.deepcopy(nb)
    cells = nb.get("cells", [])
    md = next((c for c in cells if c.get("cell_type") == "markdown"), None)
    if md is not None:
        md["source"] = _with_badge(_source(md), colab_badge(repo, path))
    params = next((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if params is not None:
        params["source"] = _with_guard(_source(params), install_guard(guard_source(repo)))
    return nb


def _require_checkout(solutions: Path) -> None:
    if not Path(solutions).is_dir():
        raise CheckoutError(f"no solutions folder at {solutions}: `build` and `check` work on a checkout of the "
                            "course (git clone it), or pass --solutions and --notebooks; an installed "
                            "course_lib has no notebooks to build")


def _repo_beside(solutions: Path) -> str | None:
    """The repository of the pyproject.toml beside ``solutions/``; None without one (badges left alone)."""
    root = Path(solutions).resolve().parent
    return repository(root) if (root / "pyproject.toml").is_file() else None


def _expected(src: Path, notebooks: Path, repo: str | None) -> tuple[str, str]:
    """(the solution's text with badge and guard in sync, the student version's text)."""
    sol = load(src)
    if repo:
        sol = sync_public_address(sol, repo, f"{src.parent.name}/{src.name}")
    student = student_version(sol, src.name)
    if repo:
        student = sync_public_address(student, repo, f"{notebooks.name}/{src.name}")
    return dumps(sol), dumps(student)


def build(solutions: Path = ROOT / "solutions", notebooks: Path = ROOT / "notebooks") -> list[Path]:
    """Write the student version of every solution notebook (and bring each solution's badge and
    install guard in line with pyproject.toml); returns the student notebooks' paths."""
    _require_checkout(solutions)
    repo = _repo_beside(solutions)
    notebooks.mkdir(parents=True, exist_ok=True)
    written = []
    for src, dst in _pairs(solutions, notebooks):
        sol_text, text = _expected(src, notebooks, repo)
        if src.read_text(encoding="utf-8") != sol_text:  # the badge, the guard, or not yet in Jupyter's format
            src.write_text(sol_text, encoding="utf-8")
        if not dst.exists() or dst.read_text(encoding="utf-8") != text:
            dst.write_text(text, encoding="utf-8")
        written.append(dst)
    return written


def outputs_in(nb: dict) -> int:
    return sum(len(c.get("outputs", [])) + (c.get("execution_count") is not None)
               for c in nb.get("cells", []) if c.get("cell_type") == "code")


def check(solutions: Path = ROOT / "solutions", notebooks: Path = ROOT / "notebooks") -> list[str]:
    """Problems found (empty when ``notebooks/`` equals a fresh build, badges and guards follow
    pyproject.toml and nothing has outputs). Raises :class:`CheckoutError` outside a checkout."""
    _require_checkout(solutions)
    problems, expected_names, repo = [], set(), _repo_beside(solutions)
    for src, dst in _pairs(solutions, notebooks):
        expected_names.add(dst.name)
        try:
            sol = load(src)
            if outputs_in(sol):
                problems.append(f"{src}: has outputs or execution counts; clear them before committing")
            sol_text, text = _expected(src, notebooks, repo)
        except ValueError as e:
            problems.append(str(e))
            continue
        if repo and dumps(sol) != sol_text:
            problems.append(f"{src}: its Colab badge or install guard does not follow pyproject.toml's "
                            "[project.urls] Repository; run `python -m course_lib.assignments build`")
        elif src.read_text(encoding="utf-8") != sol_text:
            problems.append(f"{src}: not written the way Jupyter writes notebooks (a JupyterLab save would "
                            "change it); run `python -m course_lib.assignments build`")
        if not dst.exists():
            problems.append(f"{dst}: missing; run `python -m course_lib.assignments build`")
        elif dst.read_text(encoding="utf-8") != text:
            problems.append(f"{dst}: differs from a fresh build of {src}; run `python -m course_lib.assignments build`"
                            " (never edit notebooks/ by hand)")
    for extra in sorted(notebooks.glob("*.ipynb")):
        if extra.name not in expected_names:
            problems.append(f"{extra}: has no source in {solutions}/")
    return problems


# -- authoring in percent format, through jupytext ------------------------------------------------

def _jupytext():
    try:
        import jupytext
    except ImportError:
        raise SystemExit("from-py and to-py need jupytext: pip install -e '.[dev]'") from None
    return jupytext


def from_py(text: str) -> dict:
    """A notebook from percent-format Python (``# %%``, ``# %% [markdown]``, ``# %% tags=[...]``), by jupytext."""
    nb = json.loads(_jupytext().writes(_jupytext().reads(text, fmt="py:percent"), fmt="ipynb"))
    nb.get("metadata", {}).pop("jupytext", None)
    nb["metadata"].setdefault("kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"})
    for i, cell in enumerate(nb["cells"]):
        cell["id"] = f"cell-{i:03d}"
        cell["source"] = _source(cell)
    return nb


def to_py(nb: dict) -> str:
    """Percent-format Python of a notebook, written by jupytext (no header)."""
    jt = _jupytext()
    node = jt.reads(json.dumps(nb), fmt="ipynb")
    node.metadata.setdefault("jupytext", {})["notebook_metadata_filter"] = "-all"
    return jt.writes(node, fmt="py:percent")


def parser() -> argparse.ArgumentParser:
    """The command line (docs/instructors.md's commands are tested against it)."""
    p = argparse.ArgumentParser(prog="python -m course_lib.assignments")
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd in ("build", "check"):
        s = sub.add_parser(cmd)
        s.add_argument("--solutions", type=Path, default=ROOT / "solutions")
        s.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    s = sub.add_parser("clean", help="clear outputs and execution counts of solution notebooks in place")
    s.add_argument("paths", nargs="*", type=Path)
    s = sub.add_parser("from-py"); s.add_argument("src", type=Path); s.add_argument("dst", type=Path)
    s = sub.add_parser("to-py"); s.add_argument("src", type=Path); s.add_argument("dst", type=Path)
    s = sub.add_parser("grade", help="grade a folder of submissions into a gradebook CSV and feedback files")
    s.add_argument("submissions", type=Path, help="SUBMISSIONS/<student>/[<assignment>/]<NN_topic>.ipynb")
    s.add_argument("--out", type=Path, required=True, help="the gradebook CSV to write")
    s.add_argument("--feedback", type=Path, default=None, help="feedback folder (default: beside --out)")
    s.add_argument("--profile", default="smoke", choices=("smoke", "cpu", "gpu"))
    s.add_argument("--solutions", type=Path, default=ROOT / "solutions")
    s.add_argument("--cell-timeout", type=float, default=120.0, help="seconds per cell of the headless run")
    s.add_argument("--notebook-timeout", type=float, default=900.0, help="seconds per notebook of the headless run")
    s.add_argument("--exercise-timeout", type=float, default=60.0, help="seconds per answer cell and per check")
    s.add_argument("--no-run", action="store_true", help="grade the answers without running whole notebooks")
    s = sub.add_parser("nbgrader", help="write an nbgrader course folder, one assignment per notebook")
    s.add_argument("notebooks", nargs="*", type=Path, help="solution notebooks (default: all)")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--profile", default="smoke", choices=("smoke", "cpu", "gpu"))
    s.add_argument("--cell-timeout", type=int, default=600)
    return p


def _main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.cmd in ("grade", "nbgrader"):  # the graders' tools: nbclient, nbformat and the checks' reader
        from . import grading

        try:
            if args.cmd == "grade":
                rows = grading.grade(args.submissions, args.out, feedback_dir=args.feedback, profile=args.profile,
                                     solutions=args.solutions, cell_timeout=args.cell_timeout,
                                     notebook_timeout=args.notebook_timeout,
                                     exercise_timeout=args.exercise_timeout, run_notebooks=not args.no_run)
                feedback = args.feedback or args.out.parent / "feedback"
                print(f"wrote {args.out} ({len(rows)} rows) and feedback in {feedback}")
            else:
                for path in grading.nbgrader_course(args.out, args.notebooks or None, profile=args.profile,
                                                    cell_timeout=args.cell_timeout):
                    print(f"wrote {path}")
                print(f"wrote {args.out / 'nbgrader_config.py'}; next: cd {args.out} && nbgrader generate_assignment "
                      "<notebook stem>")
        except grading.GradingError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
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
        if args.cmd == "clean":
            for path in args.paths or sorted((ROOT / "solutions").glob("*.ipynb")):
                nb = load(path)
                if outputs_in(nb) or any("execution" in c.get("metadata", {}) for c in nb.get("cells", [])):
                    path.write_text(dumps(clean(nb)), encoding="utf-8")
                    print(f"cleared outputs of {path}")
            return 0
        if args.cmd == "from-py":
            args.dst.write_text(dumps(from_py(args.src.read_text(encoding="utf-8"))), encoding="utf-8")
            return 0
        if args.cmd == "to-py":
            args.dst.write_text(to_py(load(args.src)), encoding="utf-8")
            return 0
    except (MarkerError, CheckoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main())
