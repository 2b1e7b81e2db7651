"""The grading worker: checks a student's answer cells in a process their notebook never ran in.

Run by :func:`course_lib.grading.grade_notebook` as ``python -m course_lib.checks.worker SPEC RESULT``.
SPEC (JSON) holds the course's own setup cells and, per exercise, the checker's name, the
student's function name, the answer cell's source and the points. The worker imports
``course_lib.checks`` and captures every checker *before* any student code runs, executes the
setup cells (trusted: from ``solutions/``), then each answer cell in a fresh copy of that
namespace under a time limit, calls the captured checker on the function, and appends one JSON
line per exercise to RESULT. ``SystemExit``, a time-out or an error in one answer fails that
exercise and the worker goes on with the next. See :mod:`course_lib.grading` for what this does
and does not defend against.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _limit(seconds: float):
    """A context manager that raises TimeoutError after ``seconds`` where SIGALRM exists (Linux,
    macOS); elsewhere the worker's own time limit, in the parent, ends a hang."""
    import contextlib
    import signal

    if not hasattr(signal, "SIGALRM"):
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def cm():
        def on_alarm(signum, frame):
            raise TimeoutError(f"took longer than {seconds:g} s")

        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)

    return cm()


def _worker_main(spec_path: str, result_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    # each call of the student's function inside a check gets the exercise's time limit (the checks
    # read it when imported); the outer limit below is only a last resort around the whole check
    os.environ["COURSE_CHECK_TIME_LIMIT"] = str(float(spec["exercise_timeout"]))
    from course_lib import checks  # before any student code: the checkers and references are captured here

    captured = dict(checks.CHECKERS)
    out = open(result_path, "a", encoding="utf-8")  # noqa: SIM115  (kept open: one line per exercise)

    def report(**v) -> None:
        out.write(json.dumps(v) + "\n")
        out.flush()

    namespace: dict = {"__name__": "__course_grading__"}
    for src in spec["setup"]:
        exec(compile(src, "<course setup cell>", "exec"), namespace)  # the course's own cells, trusted
    for ex in spec["exercises"]:
        name, points = ex["name"], ex["points"]
        base = {"exercise": name, "max_points": points, "points": 0, "status": "failed", "hint": ""}
        if ex["source"] is None:
            report(**base, reason="not implemented", message=f"no answer cell defining {ex['function']}()")
            continue
        local = dict(namespace)
        t0 = time.perf_counter()
        try:
            with _limit(ex_timeout := float(spec["exercise_timeout"])):
                exec(compile(ex["source"], f"<answer: {name}>", "exec"), local)
        except KeyboardInterrupt:
            raise
        except SystemExit:
            report(**base, reason="exit", message="the answer cell called sys.exit()")
            continue
        except TimeoutError:
            report(**base, reason="timeout", message=f"the answer cell took longer than {ex_timeout:g} s to run")
            continue
        except BaseException as e:  # noqa: BLE001  (a student's error is a verdict, never a crash)
            report(**base, reason="error", message=f"the answer cell raised {type(e).__name__}: {e}"[:500])
            continue
        fn = local.get(ex["function"])
        if not callable(fn):
            report(**base, reason="not implemented", message=f"the answer cell defines no function {ex['function']}()")
            continue
        try:
            with _limit(ex_timeout * 10 + 30):
                v = captured[name](fn, points=points)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001
            report(**base, reason="timeout" if isinstance(e, TimeoutError) else "error",
                   message=f"checking stopped: {type(e).__name__}: {e}"[:500])
            continue
        d = v.to_dict()
        report(exercise=name, status=d["status"], reason=d.get("reason", ""), points=d["points"],
               max_points=d["max_points"], message=d["message"], hint=d.get("hint", ""),
               seconds=round(time.perf_counter() - t0, 3))
    out.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python -m course_lib.checks.worker SPEC.json RESULT.jsonl", file=sys.stderr)
        sys.exit(2)
    sys.exit(_worker_main(sys.argv[1], sys.argv[2]))
