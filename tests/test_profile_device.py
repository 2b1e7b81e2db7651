from __future__ import annotations

import pytest
import torch

from course_lib import profile
from course_lib.device import autocast_policy, get_device, seed_everything


def test_pick_follows_the_environment(monkeypatch):
    for name, expected in (("smoke", 1), ("cpu", 2), ("gpu", 3), ("GPU", 3)):
        monkeypatch.setenv("COURSE_PROFILE", name)
        assert profile.pick(smoke=1, cpu=2, gpu=3) == expected
    monkeypatch.setenv("COURSE_PROFILE", "gpu")
    assert profile.pick(smoke=1, cpu=2) == 2  # gpu falls back to cpu when not given


def test_default_profile(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    assert profile.name() == ("gpu" if torch.cuda.is_available() else "cpu")


def test_unknown_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "laptop")
    with pytest.raises(ValueError, match=r"'laptop'.*smoke, cpu, gpu"):
        profile.name()
    with pytest.raises(ValueError, match="unknown profile"):
        profile.pick(1, 2, 3, profile="fast")


def test_device_override(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    monkeypatch.setenv("COURSE_DEVICE", "banana")
    with pytest.raises(ValueError, match="banana"):
        get_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("COURSE_DEVICE", "cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            get_device()


def test_autocast_policy_on_cpu_is_fp32():
    pol = autocast_policy(torch.device("cpu"))
    assert pol.dtype is None and not pol.use_grad_scaler
    with pol.context():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_seed_everything_is_reproducible():
    seed_everything(3)
    a = torch.randn(4)
    seed_everything(3)
    assert torch.equal(a, torch.randn(4))
