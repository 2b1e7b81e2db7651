"""The device self-test of notebook 00 (course_lib.selftest): it passes where the device computes
what the CPU computes, and says plainly when it does not (shown with a real disagreement: the same
computation in bfloat16)."""
from __future__ import annotations

import math

import pytest
import torch

from course_lib import selftest


def test_cpu_agrees_with_its_float64_reference():
    report = selftest.run("cpu")
    assert report.ok and not report.failed
    assert [c.name for c in report.checks] == ["matmul", "matmul of a transposed view", "linear layer, batch of 12",
                                               "in-place addcdiv_ on a transposed view", "softmax of large scores",
                                               "5 AdamW steps: losses", "5 AdamW steps: final weights",
                                               "5 AdamW steps: weight update"]
    assert all(c.error < 1e-5 for c in report.checks)
    text = str(report)
    assert text.startswith("device self-test on cpu") and "OK: the device is the CPU itself" in text


def test_a_disagreeing_device_is_named_plainly():
    # bfloat16 keeps 8 bits of mantissa: against float32 at a strict tolerance it really disagrees
    report = selftest.run("cpu", dtype=torch.bfloat16, tolerance=1e-3)
    assert not report.ok
    assert report.device == "cpu (bfloat16)"
    assert {c.name for c in report.failed} >= {"matmul", "in-place addcdiv_ on a transposed view",
                                               "softmax of large scores", "5 AdamW steps: weight update"}
    text = str(report)
    assert "WARNING: cpu (bfloat16) DISAGREES with the CPU" in text and "COURSE_DEVICE=cpu" in text
    assert text.count("FAIL") == len(report.failed)


def test_relative_error_and_non_finite_results():
    ref = torch.tensor([3.0, 4.0])
    assert selftest.relative_error(torch.tensor([3.0, 4.0]), ref) == 0.0
    assert selftest.relative_error(torch.tensor([3.0, 4.5]), ref) == pytest.approx(0.1)
    nan = selftest.relative_error(torch.tensor([float("inf"), 4.0]), ref)
    assert math.isnan(nan) and not selftest.Check("x", nan, 1.0).ok  # nan never passes
    with pytest.raises(ValueError, match="shapes differ"):
        selftest.relative_error(torch.ones(3), ref)
    with pytest.raises(ValueError, match="steps"):
        selftest.run("cpu", steps=0)


def test_tf32_setting_is_restored():
    torch.set_float32_matmul_precision("high")
    try:
        selftest.run("cpu", steps=1)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision("highest")


ACCELERATORS = [d for d, there in (("cuda", torch.cuda.is_available()),
                                   ("mps", hasattr(torch.backends, "mps") and torch.backends.mps.is_available()))
                if there]


@pytest.mark.skipif(not ACCELERATORS, reason="no CUDA or MPS device on this machine")
@pytest.mark.parametrize("device", ACCELERATORS)
def test_accelerator_agrees_with_the_cpu(device):
    report = selftest.run(device)
    assert report.ok, str(report)
