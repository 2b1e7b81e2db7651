from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from torch import nn

from course_lib import artifacts, results
from course_lib.files import atomic_write


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "out.json"
    assert atomic_write(target, lambda tmp: open(tmp, "w").write("old")) == target  # creates the folder
    assert target.read_text() == "old"

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"  # the target is untouched
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]  # and no temporary file is left
    atomic_write(target, lambda tmp: open(tmp, "w").write("new"), suffix=".part")
    assert target.read_text() == "new" and [p.name for p in target.parent.iterdir()] == ["out.json"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_follows_the_umask(tmp_path, umask, mode):
    # a class cache prepared by an instructor must be readable by students: not mkstemp's 0600
    old = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "f.bin", lambda tmp: open(tmp, "wb").write(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_record_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    path = results.record("01_demo", val_loss=1.234567891, minutes=2)
    entry = json.loads(path.read_text())
    assert path.name == "01_demo__cpu.json"
    assert entry["profile"] == "cpu" and entry["metrics"] == {"val_loss": 1.234568, "minutes": 2}
    assert entry["hardware"] and entry["date"].endswith("UTC")
    assert [p.name for p in tmp_path.iterdir()] == ["01_demo__cpu.json"]  # written atomically, no temp left
    table = results.table(tmp_path)
    assert "| 01_demo | cpu | val_loss=1.235, minutes=2 |" in table
    with pytest.raises(ValueError, match="metric 'x'"):
        results.record("01_demo", x=[1, 2])
    with pytest.raises(ValueError, match="at least one"):
        results.record("01_demo")


class Tied(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.emb = nn.Embedding(5, d)
        self.head = nn.Linear(d, 5, bias=False)
        self.head.weight = self.emb.weight  # shared tensor: safetensors must cope


def test_artifact_trains_once_then_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_ARTIFACT_DIR", str(tmp_path))
    calls = []

    def train(model, cfg):
        calls.append(cfg)
        with torch.no_grad():
            model.emb.weight.fill_(0.5)
        return {"val_loss": 0.1}

    artifacts.register(artifacts.Recipe("tied_demo", "1", lambda p: {"d": 4 if p == "smoke" else 8},
                                        lambda cfg: Tied(cfg["d"]), train))
    m1, meta1 = artifacts.get("tied_demo", profile="smoke")
    m2, meta2 = artifacts.get("tied_demo", profile="smoke")
    assert len(calls) == 1 and meta2["val_loss"] == 0.1 and meta2["config"] == {"d": 4}
    assert torch.equal(m2.emb.weight, torch.full((5, 4), 0.5))
    assert m2.head.weight.data_ptr() == m2.emb.weight.data_ptr()
    artifacts.get("tied_demo", profile="cpu")  # another config: trained again
    assert len(calls) == 2
    with pytest.raises(KeyError, match="unknown artifact"):
        artifacts.get("nope")
