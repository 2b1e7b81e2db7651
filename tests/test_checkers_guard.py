"""The machinery every checker shares: the per-call time limit (SIGALRM and thread paths),
SystemExit and KeyboardInterrupt, mutation reported as such, patched torch / course_lib detected,
the torch.softmax rule, outputs, points, and the structured verdicts, read back from a notebook
executed in a real IPython kernel."""
from __future__ import annotations

import functools
import json
import signal
import sys
import threading
import time

import nbformat
import pytest
import torch
from nbclient import NotebookClient

import course_lib.models.attention as att
from course_lib import checks
from course_lib.checks import _clock, _patches, verdicts


def good_softmax(x):
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def endless(x):
    while True:
        pass


@pytest.fixture
def short_limit(monkeypatch):
    monkeypatch.setattr(_clock, "TIME_LIMIT", 0.3)


# --- time limit ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["signal", "thread"])
def test_an_endless_loop_is_stopped_with_a_clear_verdict(method, monkeypatch, short_limit):
    monkeypatch.setattr(_clock, "METHOD", method)
    t0 = time.perf_counter()
    v = checks.softmax(endless)
    assert time.perf_counter() - t0 < 3
    assert not v and v.status == "failed" and v.reason == "timeout"
    assert "took longer than 0.3 s" in v.message
    time.sleep(0.1)
    assert not any(t.name == "course-check" and t.is_alive() for t in threading.enumerate())  # it really stopped


def test_the_thread_path_passes_correct_code_with_the_callers_grad_mode(monkeypatch):
    monkeypatch.setattr(_clock, "METHOD", "thread")
    assert checks.softmax(good_softmax)  # its gradient probe needs grad mode in the worker thread
    def block_forward(block, x, causal=False):  # called under torch.no_grad() by the checker, then with grad
        x = x + block.attn(block.ln1(x), causal=causal)
        return x + block.mlp(block.ln2(x))

    assert checks.block_forward(block_forward)
    with torch.no_grad():
        seen = _clock.call_with_limit(torch.is_grad_enabled, limit=2)
    assert seen is False


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="SIGALRM only")
def test_an_outer_timer_and_handler_are_given_back():
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 50.0)
        assert checks.softmax(good_softmax)
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 40 < left < 50
        assert signal.getsignal(signal.SIGALRM) is not _clock._TimeLimit
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert not fired


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="SIGALRM only")
def test_a_shorter_outer_deadline_is_kept(short_limit, monkeypatch):
    monkeypatch.setattr(_clock, "TIME_LIMIT", 5.0)
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *a: fired.append(time.perf_counter()))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.4)
        t0 = time.perf_counter()
        v = checks.softmax(endless)
        time.sleep(0.05)
        assert v.reason == "timeout" and time.perf_counter() - t0 < 2 and fired  # the grader's alarm still came
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- exits --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["signal", "thread"])
def test_sys_exit_fails_the_check_and_keyboard_interrupt_still_stops(method, monkeypatch):
    monkeypatch.setattr(_clock, "METHOD", method)
    v = checks.softmax(lambda x: sys.exit(3))
    assert not v and v.reason == "exit" and "sys.exit(3)" in v.message
    v = checks.attention_weights(lambda Q, K, mask=None: (_ for _ in ()).throw(SystemExit()))
    assert not v and v.reason == "exit"

    def interrupted(x):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checks.softmax(interrupted)


# --- mutation -----------------------------------------------------------------------------------

def test_a_correct_function_that_changes_its_input_gets_an_accurate_message():
    def shifts_in_place(x):  # the right values, but x is modified
        x -= x.max(dim=-1, keepdim=True).values
        e = x.exp()
        return e / e.sum(dim=-1, keepdim=True)

    v = checks.softmax(shifts_in_place)
    assert not v and v.reason == "mutation"
    assert "changed its input `x` in place" in v.message and "values changed" in v.message
    v = checks.softmax(lambda x: (good_softmax(x), x.zero_())[0])  # zeroes its input after the call
    assert not v and v.reason == "mutation"


def test_expected_answers_come_from_pristine_inputs():
    seen = {}

    @checks.checker("demo_pristine")
    def demo(student):
        x = torch.ones(4)
        out = student(x)
        seen["x"] = x.clone()
        checks.expect_close(out, torch.ones(4) * 2, "the output")

    v = demo(lambda x: x.mul_(2))
    assert not v and v.reason == "mutation" and "`x`" in v.message
    assert torch.equal(seen.get("x", torch.ones(4)), torch.ones(4))  # the checker's own tensor never changed


# --- patched torch and references ---------------------------------------------------------------

def test_patching_torch_fails_the_check_naming_what_was_replaced(monkeypatch):
    def wrong_weights(Q, K, mask=None):
        return torch.softmax(Q @ K.transpose(-2, -1), dim=-1)  # unscaled

    monkeypatch.setattr(torch, "softmax", lambda S, dim=-1: torch.ones_like(S) / S.shape[dim])
    v = checks.attention_weights(wrong_weights)
    assert not v and v.reason == "patched" and "torch.softmax" in v.message


def test_overwriting_the_course_reference_fails_the_check(monkeypatch):
    def wrong_weights(Q, K, mask=None):
        return torch.softmax(Q @ K.transpose(-2, -1), dim=-1)

    monkeypatch.setattr(att, "attention_weights", wrong_weights)  # the checker compares with this module
    v = checks.attention_weights(wrong_weights)
    assert not v and v.reason == "patched" and "course_lib.models.attention.attention_weights" in v.message


def test_a_tensor_method_shadowed_or_a_patch_made_inside_the_call_is_seen(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "softmax", lambda self, dim=-1: self, raising=False)
    v = checks.weighted_average(att.weighted_average)
    assert not v and v.reason == "patched" and "torch.Tensor.softmax" in v.message
    monkeypatch.undo()

    monkeypatch.setattr(torch, "exp", torch.exp)  # restored after the test

    def sneaky(x):
        torch.exp = lambda t: t
        return good_softmax(x)

    v = checks.softmax(sneaky)
    assert not v and v.reason == "patched" and "torch.exp" in v.message


def test_torchs_own_wrappers_are_not_patches_and_forged_wrappers_are():
    import torch._dynamo  # noqa: F401  (wraps torch.manual_seed)
    from torch._dynamo.mutation_guard import install_generation_tagging_init

    install_generation_tagging_init()  # what torch.compile does to nn.Module.__init__ and __setstate__
    assert _patches.patched() == []
    assert checks.softmax(good_softmax)
    original = torch.nn.functional.gelu

    @functools.wraps(original)
    def forged(*a, **k):
        return original(*a, **k)

    torch.nn.functional.gelu = forged
    try:
        assert _patches.patched() == ["torch.nn.functional.gelu"]
        torch.nn.functional.gelu = torch.nn.functional.silu  # torch's own code, but not a wrapper of gelu
        assert _patches.patched() == ["torch.nn.functional.gelu"]
    finally:
        torch.nn.functional.gelu = original
    assert _patches.patched() == []


# --- rules, outputs, points ---------------------------------------------------------------------

def test_the_softmax_rule_is_enforced_and_its_tripwires_removed():
    v = checks.softmax(lambda x: torch.nn.Softmax(dim=-1)(x))
    assert not v and v.reason == "rule" and "torch.softmax" in v.message
    assert "softmax" not in vars(torch.Tensor) and _patches.patched() == []
    v = checks.softmax(lambda x: torch.softmax(x, dim=0))  # wrong too: the wrong value is reported first
    assert not v and v.reason == "wrong" and "differs" in v.message and "torch.softmax" in v.message


def test_outputs_must_be_plain_tensors_and_arguments_functions():
    class Always(torch.Tensor):
        pass

    v = checks.softmax(lambda x: good_softmax(x).as_subclass(Always))
    assert not v and "subclass of torch.Tensor" in v.message
    v = checks.softmax(good_softmax(torch.zeros(3)))
    assert not v and "pass your function itself" in v.message


def test_student_errors_point_at_the_students_line():
    def buggy(x):
        y = x.max(dim=-1).values
        return torch.exp(x - y)[None] @ torch.zeros(7, 7)  # a shape error

    v = checks.softmax(buggy)
    assert not v and v.reason == "error" and "RuntimeError" in v.message and "torch.zeros(7, 7)" in v.message


def test_a_check_leaves_the_global_random_state_alone():
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    checks.lora_forward(lambda x, base, A, B, alpha: base(x) + (alpha / A.shape[0]) * (x @ A.T) @ B.T)
    checks.block_forward(lambda block, x, causal=False: block(x))  # builds blocks with torch.manual_seed
    checks.sample_with_temperature(lambda lg, t=1.0, g=None: torch.multinomial(torch.softmax(lg, -1), 1)[:, 0])
    assert torch.equal(torch.rand(3), want)


def test_points_and_verdict_fields():
    v = checks.softmax(good_softmax, points=3)
    assert (v.points, v.max_points, v.reason, v.status) == (3, 3, "correct", "passed") and v.seconds > 0
    v = checks.softmax(lambda x: x, points=3)
    assert (v.points, v.max_points) == (0, 3) and v.hint
    assert set(v.to_dict()) >= {"name", "passed", "status", "reason", "points", "max_points", "message", "hint"}


# --- structured verdicts ------------------------------------------------------------------------

def test_a_plain_process_prints_the_line_and_displays_nothing(capsys):
    assert not verdicts.in_ipython()
    checks.softmax(good_softmax)
    out = capsys.readouterr().out
    assert out.startswith("[ok] softmax: correct") and verdicts.VERDICT_MIME not in out


def _cell(source, outputs):
    return {"cell_type": "code", "source": source, "outputs": outputs, "metadata": {}, "execution_count": 1}


def _payload(**kw):
    base = verdicts.payload(exercise="softmax", checker="course_lib.checks.basics.softmax", status="passed",
                            reason="correct", points=1, max_points=1, message="correct", hint="", seconds=0.1)
    return {**base, **kw}


def test_verdicts_in_reads_only_structured_outputs_of_check_cells(tmp_path):
    shown = {"output_type": "display_data", "data": {verdicts.VERDICT_MIME: _payload(), "text/plain": "[ok]"},
             "metadata": {}}
    nb = {"cells": [
        _cell("ok = checks.softmax(softmax)", [shown]),
        _cell("print('[ok] softmax: correct')", [{"output_type": "stream", "name": "stdout",
                                                  "text": "[ok] softmax: correct\n"}]),
        _cell("display(fake)", [shown]),  # a forged verdict in an answer cell
        _cell("ok = checks.softmax(softmax)", [{"output_type": "display_data", "metadata": {},
                                                "data": {verdicts.VERDICT_MIME: json.dumps(_payload(passed=False))}}]),
        _cell("ok = checks.pad_batch(pad_batch)", [{"output_type": "display_data", "metadata": {},
                                                    "data": {verdicts.VERDICT_MIME: json.dumps(
                                                        _payload(exercise="pad_batch", status="failed",
                                                                 passed=False, points=0))}}]),
        {"cell_type": "markdown", "source": "text", "metadata": {}},
    ]}
    found = verdicts.verdicts_in(nb)
    assert [(v["cell"], v["exercise"], v["status"]) for v in found] == [(0, "softmax", "passed"),
                                                                         (4, "pad_batch", "failed")]
    assert len(verdicts.verdicts_in(nb, require_check_call=False)) == 3  # the forged one; the invalid one never
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    assert verdicts.verdicts_in(str(path)) == found


def test_verdicts_are_display_data_in_a_real_kernel(tmp_path):
    cells = [
        "from course_lib import checks\nfrom course_lib.checks import _clock\nimport torch\n"
        "def softmax(x):\n    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)\n"
        "    return e / e.sum(dim=-1, keepdim=True)\n"
        "def endless(x):\n    while True:\n        pass",
        "ok = checks.softmax(softmax)",
        "print('[ok] softmax: correct')",
        "ok = checks.softmax(lambda x: x.exp() / x.exp().sum(-1, keepdim=True), points=2)",
        "_clock.TIME_LIMIT = 0.5\nok = checks.softmax(endless)",
        "ok = checks.softmax(lambda x: exit())",
        "print('the kernel is still here', ok.reason)",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    found = checks.verdicts_in(nb)
    assert [(v["cell"], v["status"], v["reason"], v["points"], v["max_points"]) for v in found] == [
        (1, "passed", "correct", 1, 1), (3, "failed", "wrong", 0, 2), (4, "failed", "timeout", 0, 1),
        (5, "failed", "exit", 0, 1)]
    out = nb.cells[1].outputs
    assert [o["output_type"] for o in out] == ["display_data"]  # no printed line besides the bundle
    assert out[0]["data"]["text/plain"].startswith("[ok] softmax")
    assert "took longer than 0.5 s" in found[2]["message"]
    assert nb.cells[6].outputs[0]["text"].strip() == "the kernel is still here exit"
    nbformat.write(nb, tmp_path / "executed.ipynb")  # as saved to disk and read back by a grader
    assert checks.verdicts_in(str(tmp_path / "executed.ipynb")) == found
