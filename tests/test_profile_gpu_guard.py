"""The gpu profile without CUDA is a clear error where a run starts (profile.use, training an
artifact), unless COURSE_ALLOW_GPU_PROFILE_ON_CPU=1 says the caller means it (issue 12)."""
from __future__ import annotations

import pytest
import torch

from course_lib import artifacts, profile


@pytest.fixture()
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(profile.ALLOW_GPU_ON_CPU, raising=False)


def test_the_gpu_profile_without_cuda_is_refused(no_cuda, monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    with pytest.raises(ValueError, match=r"gpu profile needs CUDA.*PROFILE='cpu'.*COURSE_ALLOW_GPU_PROFILE_ON_CPU=1"):
        profile.use("gpu")
    assert profile.name() == "cpu"  # the refused choice did not become the active profile
    monkeypatch.setenv("COURSE_PROFILE", "gpu")
    with pytest.raises(ValueError, match="gpu profile needs CUDA"):
        profile.use(None)  # a notebook's PROFILE = None under COURSE_PROFILE=gpu
    assert profile.use("cpu") == "cpu" and profile.use("smoke") == "smoke"
    assert profile.pick(smoke=1, cpu=2, gpu=3, profile="gpu") == 3  # reading the gpu sizes is fine


def test_the_override_runs_the_gpu_profile_on_a_cpu(no_cuda, monkeypatch):
    monkeypatch.setenv(profile.ALLOW_GPU_ON_CPU, "1")
    assert profile.use("gpu") == "gpu"
    monkeypatch.setenv(profile.ALLOW_GPU_ON_CPU, "yes")  # only "1" means it
    with pytest.raises(ValueError, match="gpu profile needs CUDA"):
        profile.use("gpu")


def test_training_a_gpu_artifact_without_cuda_is_refused(no_cuda, monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_ARTIFACT_DIR", str(tmp_path))
    built = []
    recipe = artifacts.Recipe("guarded", "1", lambda p: {"d": 2}, lambda c: built.append(1) or torch.nn.Linear(2, 2),
                              lambda m, c: {})
    with pytest.raises(ValueError, match="gpu profile needs CUDA"):
        artifacts.get(recipe, profile="gpu")
    assert built == []  # refused before anything was built or trained
    model, meta = artifacts.get(recipe, profile="cpu")
    assert meta["profile"] == "cpu"
