"""Tests that need the real internet: real downloads through the course's own code paths, and a
real dependency resolution of ``pip install .``. Marked ``online``: ``make test`` deselects them
(pyproject's addopts); ``make test-online`` (``pytest -m online``, CI's weekly job) runs them, and
each one skips, saying why, where its host cannot be reached."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.online


def needs(host: str):
    """Skip unless ``host``:443 answers within a few seconds."""
    try:
        with socket.create_connection((host, 443), timeout=5):
            return
    except OSError as e:
        pytest.skip(f"offline: cannot reach {host}:443 ({type(e).__name__}: {e})")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """No cache and no mirror: what the course's code needs, it must download."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("COURSE_DATA_MIRROR", raising=False)
    monkeypatch.delenv("COURSE_OFFLINE", raising=False)
    return tmp_path / "cache"


def test_gpt2_124m_from_the_hub_matches_transformers(empty_cache):
    needs("huggingface.co")
    transformers = pytest.importorskip("transformers")
    from course_lib.models import gpt2_weights
    from course_lib.tokenizers import gpt2_tokenizer

    ours = gpt2_weights.from_pretrained_gpt2().eval()
    assert sum(p.numel() for p in ours.parameters()) == 124_439_808
    hf = transformers.GPT2LMHeadModel.from_pretrained("openai-community/gpt2", cache_dir=empty_cache / "hf-ref").eval()
    ids = torch.tensor([gpt2_tokenizer().encode("Hello, I'm a language model, and")])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-3, rtol=1e-3)
    assert list(empty_cache.rglob("model.safetensors"))  # fetched into the course's cache


def test_cifar10_downloads_verified(empty_cache):
    needs("www.cs.toronto.edu")
    from course_lib.tasks import vision

    split = vision.load_cifar10()
    assert split.x_train.shape == (50_000, 3, 32, 32) and split.x_test.shape == (10_000, 3, 32, 32)
    assert split.x_train.dtype == torch.uint8 and torch.bincount(split.y_test).tolist() == [1000] * 10
    assert (empty_cache / "cifar10" / vision.CIFAR10_FILE).exists()


def test_pip_install_in_a_fresh_venv_brings_no_test_or_lab_tool(tmp_path):
    """The real resolution of `pip install .` (a dry run: nothing is downloaded beyond metadata)."""
    needs("pypi.org")
    from test_packaging import TOOLS

    venv.create(tmp_path / "venv", with_pip=True, symlinks=os.name != "nt")
    python = tmp_path / "venv" / ("Scripts" if os.name == "nt" else "bin") / "python"
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "course_lib", src / "course_lib", ignore=shutil.ignore_patterns("__pycache__"))
    report = tmp_path / "report.json"
    out = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--dry-run", "--report", str(report),
                          str(src)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    names = {i["metadata"]["name"].lower().replace("_", "-") for i in json.loads(report.read_text())["install"]}
    assert "course-lib" in names and "torch" in names
    assert names & TOOLS == set(), f"pip install . would bring {names & TOOLS}"
    print(f"pip install . resolves {len(names)} packages on {sys.platform}")
