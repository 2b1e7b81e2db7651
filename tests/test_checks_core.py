"""The checker machinery and notebook 00's checker: accept the reference, reject typical
mistakes, report unfinished work, never raise."""
from __future__ import annotations

import torch

from course_lib import checks


def reference(x):
    # the exercise forbids torch.softmax (tests/test_checkers_guard.py shows it rejected), so the
    # correct answer here is the stable formula written out
    z = (x - x.max(dim=-1, keepdim=True).values).exp()
    return z / z.sum(dim=-1, keepdim=True)


def naive(x):  # overflows for large inputs
    return x.exp() / x.exp().sum(-1, keepdim=True)


def wrong_dim(x):  # normalises the wrong axis
    z = (x - x.max(dim=0, keepdim=True).values).exp()
    return z / z.sum(dim=0, keepdim=True)


def unnormalised(x):
    return (x - x.max(-1, keepdim=True).values).exp()


def returns_numpy(x):
    return reference(x).numpy()


def unfinished(x):
    raise NotImplementedError()


def buggy(x):
    return x.nonexistent_method()


def test_softmax_checker_accepts_reference(capsys):
    v = checks.softmax(reference)
    assert v and v.status == "passed"
    assert capsys.readouterr().out.startswith("[ok] softmax")


def test_softmax_checker_rejects_typical_mistakes(capsys):
    for wrong, needle in ((naive, "overflow"), (wrong_dim, "differs"), (unnormalised, "differs")):
        v = checks.softmax(wrong)
        assert not v and v.status == "failed" and needle in v.message, (wrong.__name__, v.message)
        assert "Hint:" in capsys.readouterr().out


def test_numpy_output_is_accepted_after_conversion_or_explained():
    v = checks.softmax(returns_numpy)
    assert v.status in ("passed", "failed")  # never raises


def test_not_implemented_and_exceptions_never_raise(capsys):
    v = checks.softmax(unfinished)
    assert not v and v.status == "not implemented"
    assert "not implemented yet" in capsys.readouterr().out
    v = checks.softmax(buggy)
    assert not v and "AttributeError" in v.message and "nonexistent_method" in v.message


def test_expect_close_reports_shape_and_difference():
    @checks.checker("demo")
    def demo(value):
        checks.expect_close(value, torch.zeros(2, 3), "the output")

    assert "shape (3, 2), expected (2, 3)" in demo(torch.zeros(3, 2)).message
    assert "max abs difference 1" in demo(torch.ones(2, 3)).message
    assert demo(torch.zeros(2, 3)).passed
