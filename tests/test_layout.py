"""The library's layout, read from its import graph: services, tasks, models (in lecture order),
tuning, checks and assignments each import only what sits below them; no cycles; no module
much over 400 lines; every checker exported; notebooks call only checkers that exist.

The rules are checked by :func:`violations` on a graph built with ``ast`` (every import
statement, at module level or inside a function); the same function is also run on small made-up
graphs that break each rule, so a rule that could never fail would show.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "course_lib"

SERVICES = {"profile", "device", "data", "files", "train", "checkpoint", "results", "plot", "artifacts", "measure",
            "tokenizers", "selftest", "validate", "expected"}
# models in lecture order: each may import only models earlier in this list
MODEL_ORDER = ["rnn", "seq2seq", "attention", "transformer", "vit", "gpt", "gpt2_weights", "lm", "lora", "captioner",
               "llava"]
MAX_LINES = 420  # "about 400"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function?, line) for every import in ``path``; relative imports
    resolved; ``from pkg import name`` yields ``pkg.name`` when that is a module of the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, in_function, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for a in child.names:
                    sub = f"{target}.{a.name}"
                    is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").exists() or \
                        (ROOT / Path(*sub.split(".")) / "__init__.py").exists()
                    out.append((sub if is_module else target, in_function, child.lineno))
            visit(child, nested)

    visit(tree, False)
    return out


def build_graph() -> dict[str, list[tuple[str, bool, int]]]:
    return {module_name(p): imports_of(p) for p in sorted(PKG.rglob("*.py"))}


def layer(mod: str) -> tuple[str, str]:
    """(kind, leaf) of a course_lib module: service, task, model, tuning, checks, assignments, package."""
    parts = mod.split(".")
    if parts[0] != "course_lib":
        return "external", mod
    if len(parts) == 1:
        return "package", ""
    top = parts[1]
    leaf = parts[2] if len(parts) > 2 else ""
    if top in SERVICES:
        return "service", top
    return {"tasks": "task", "models": "model", "tuning": "tuning", "checks": "checks",
            "assignments": "assignments", "grading": "tooling", "nbfiles": "tooling"}.get(top, "unknown"), leaf


# which kinds each kind may import (besides itself, with the extra rules below)
ALLOWED = {
    "package": set(),
    "service": {"package", "service"},
    "task": {"package", "service", "task"},
    "model": {"package", "service", "task", "model"},
    "tuning": {"package", "service", "task", "model", "tuning"},
    "checks": {"package", "service", "task", "model", "tuning", "checks"},
    # the instructor's tools: assignments (build/check, no torch) hands grade/nbgrader to grading,
    # which reads verdicts through checks; neither imports torch itself
    "assignments": {"package", "tooling"},
    "tooling": {"package", "assignments", "checks"},
}


def violations(graph: dict[str, list[tuple[str, bool, int]]]) -> list[str]:
    found = []
    for mod, imports in graph.items():
        kind, leaf = layer(mod)
        if kind == "unknown":
            found.append(f"{mod}: not in any layer (put it in a service, tasks/, models/, tuning/ or checks/)")
            continue
        for target, in_function, line in imports:
            where = f"{mod}:{line}" + (" (inside a function)" if in_function else "")
            top = target.split(".")[0]
            if top == "benchmarks":
                found.append(f"{where} imports benchmarks")
            if kind in ("assignments", "tooling") and top == "torch":
                found.append(f"{where} imports torch: {kind} must run without it")
            if top != "course_lib" or target == mod:
                continue
            tkind, tleaf = layer(target)
            if tkind not in ALLOWED.get(kind, set()) | {kind}:
                found.append(f"{where}: a {kind} imports {target} (a {tkind})")
            if kind == "model" and tkind == "model" and tleaf and leaf and tleaf in MODEL_ORDER and \
                    leaf in MODEL_ORDER and MODEL_ORDER.index(tleaf) >= MODEL_ORDER.index(leaf):
                found.append(f"{where}: models/{leaf} imports models/{tleaf}, which comes later in the lecture")
            if kind == "model" and tkind == "task":
                found.append(f"{where}: models/{leaf} imports a task ({target}); pass the data in instead")
    found += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return found


def cycles(graph: dict[str, list[tuple[str, bool, int]]]) -> list[list[str]]:
    edges = {m: sorted({t for t, _, _ in imps if t in graph and t != m and not m.startswith(t + ".")
                        and t != m.rpartition(".")[0]})
             for m, imps in graph.items()}
    found, state = [], {}

    def dfs(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in edges.get(node, []):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt, stack + [nxt])
        state[node] = "done"

    for m in sorted(edges):
        if m not in state:
            dfs(m, [m])
    return found


# --- the rules hold for course_lib ----------------------------------------------------------

def test_course_lib_follows_the_import_rules():
    graph = build_graph()
    assert {"course_lib.tasks.text", "course_lib.models.lm", "course_lib.tuning.ppo", "course_lib.checkpoint"} <= \
        set(graph), "the graph should cover the whole package"
    assert violations(graph) == []


def test_every_model_module_has_a_place_in_the_lecture_order():
    models = {p.stem for p in (PKG / "models").glob("*.py") if p.stem != "__init__"}
    assert models == set(MODEL_ORDER)


def test_no_module_is_much_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_function_level_imports_of_course_lib_stay_in_their_layer():
    # a lazy import may defer a cost (e.g. data from tokenizers), never hide an upward dependency:
    # every one is in the graph checked above, and here we list them so a new one is a decision
    lazy = sorted(f"{m} -> {t}" for m, imps in build_graph().items() for t, f, _ in imps
                  if f and t.startswith("course_lib"))
    for edge in lazy:
        src, dst = edge.split(" -> ")
        assert layer(dst)[0] in ALLOWED[layer(src)[0]] | {layer(src)[0]}, edge


# --- the rules can fail: each made-up graph breaks one ----------------------------------------

@pytest.mark.parametrize("graph, expected", [
    ({"course_lib.train": [("course_lib.models.gpt", False, 3)], "course_lib.models.gpt": []},
     "a service imports course_lib.models.gpt"),
    ({"course_lib.artifacts": [("course_lib.tuning.recipes", True, 9)], "course_lib.tuning.recipes": []},
     "(inside a function): a service imports course_lib.tuning.recipes"),
    ({"course_lib.tasks.shapes": [("course_lib.models.captioner", False, 1)], "course_lib.models.captioner": []},
     "a task imports course_lib.models.captioner"),
    ({"course_lib.models.attention": [("course_lib.models.transformer", False, 1)],
      "course_lib.models.transformer": []}, "comes later in the lecture"),
    ({"course_lib.models.gpt": [("course_lib.tuning.sft", True, 2)], "course_lib.tuning.sft": []},
     "a model imports course_lib.tuning.sft"),
    ({"course_lib.models.llava": [("course_lib.tasks.instructions", False, 2)],
      "course_lib.tasks.instructions": []}, "imports a task"),
    ({"course_lib.tuning.ppo": [("course_lib.checks.rlhf", False, 2)], "course_lib.checks.rlhf": []},
     "a tuning imports course_lib.checks.rlhf"),
    ({"course_lib.assignments": [("torch", True, 5)]}, "imports torch"),
    ({"course_lib.grading": [("torch", False, 5)]}, "tooling must run without it"),
    ({"course_lib.grading": [("course_lib.tuning.ppo", False, 5)], "course_lib.tuning.ppo": []},
     "a tooling imports course_lib.tuning.ppo"),
    ({"course_lib.assignments": [("course_lib.train", False, 5)], "course_lib.train": []},
     "a assignments imports course_lib.train"),
    ({"course_lib.models.rnn": [("benchmarks.gpt_gpu", False, 1)]}, "imports benchmarks"),
    ({"course_lib.data": [("course_lib.results", False, 1)], "course_lib.results": [("course_lib.data", False, 1)]},
     "import cycle"),
    ({"course_lib.helpers": []}, "not in any layer"),
])
def test_each_rule_catches_its_violation(graph, expected):
    found = violations(graph)
    assert any(expected in v for v in found), found


def test_relative_imports_are_resolved(tmp_path):
    graph = build_graph()
    assert ("course_lib.models.attention", False) in {(t, f) for t, f, _ in graph["course_lib.models.transformer"]}
    assert any(t == "course_lib.tasks.instructions" for t, _, _ in graph["course_lib.tuning.sft"])


# --- checkers: exported without a list, and every one the notebooks call exists --------------

def test_every_checker_is_exported_and_every_notebook_check_exists():
    from course_lib import checks

    defined = set()
    for p in (PKG / "checks").glob("*.py"):
        for node in ast.parse(p.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and any(
                    isinstance(d, ast.Call) and getattr(d.func, "id", "") == "checker" for d in node.decorator_list):
                defined.add(node.name)
    assert defined == set(checks.CHECKERS)
    assert all(getattr(checks, name) is fn for name, fn in checks.CHECKERS.items())
    called = set()
    for nb in (ROOT / "solutions").glob("*.ipynb"):
        for cell in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] == "code":
                called |= set(re.findall(r"\bchecks\.(\w+)\(", "".join(cell["source"])))
    assert called <= set(checks.CHECKERS), called - set(checks.CHECKERS)
    # top_p_filter is tested against the reference but no notebook asks for it yet (06 shows top-p
    # with the course's version after the top-k exercise); any other unused checker is an error
    assert set(checks.CHECKERS) - called == {"top_p_filter"}, "checkers no notebook uses"
