"""Notebook parameters for papermill: every notebook's parameters cell holds plain values
(PROFILE, SEED, CFG_OVERRIDES) that its setup cell uses; ``papermill -p PROFILE smoke`` really
sets the profile and a size, and the run records the profile (and the override) it really used."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib import assignments as asg
from course_lib import profile, results

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "solutions").glob("*.ipynb")) + sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_use_makes_a_profile_the_runs_own(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    assert profile.use(None) == "cpu" and profile.use("") == "cpu"  # None keeps the active one
    assert profile.use("SMOKE") == "smoke"
    assert profile.name() == "smoke" and os.environ["COURSE_PROFILE"] == "smoke"  # child processes inherit it
    with pytest.raises(ValueError, match=r"PROFILE='laptop' is not a known profile; expected one of smoke, cpu, gpu"):
        profile.use("laptop")


def test_pick_with_overrides(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    cfg = dict(steps=100, lr=0.1, train={"rnn": dict(steps=5, lr=1.0), "gru": dict(steps=7)})
    got = profile.pick(smoke={}, cpu=cfg, overrides={"steps": 3, "train": {"rnn": {"steps": 50}}})
    assert got == dict(steps=3, lr=0.1, train={"rnn": dict(steps=50, lr=1.0), "gru": dict(steps=7)})
    assert cfg["train"]["rnn"]["steps"] == 5  # the notebook's own dict is untouched
    assert profile.overrides() == {"steps": 3, "train": {"rnn": {"steps": 50}}}
    profile.pick(smoke=1, cpu=2)  # a library call (a recipe) leaves the notebook's record alone
    assert profile.overrides() == {"steps": 3, "train": {"rnn": {"steps": 50}}}
    assert profile.pick(smoke={}, cpu=cfg, overrides='{"lr": 0.5}')["lr"] == 0.5  # papermill -p passes text
    assert profile.pick(smoke={}, cpu=cfg, overrides={}) == cfg and profile.overrides() == {}
    with pytest.raises(ValueError, match=r"override 'stpes' names no setting; the settings here are steps, lr"):
        profile.pick(smoke={}, cpu=cfg, overrides={"stpes": 1})
    with pytest.raises(ValueError, match=r"override 'train.lstm' names no setting"):
        profile.pick(smoke={}, cpu=cfg, overrides={"train": {"lstm": {}}})
    with pytest.raises(ValueError, match="JSON"):
        profile.pick(smoke={}, cpu=cfg, overrides="{steps: 1")
    profile.pick(smoke={}, cpu={}, overrides={})


def test_record_says_which_settings_were_overridden(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    profile.pick(smoke={}, cpu=dict(steps=100), overrides={"steps": 5})
    try:
        entry = json.loads(results.record("01_demo", loss=1.0).read_text())
    finally:
        profile.pick(smoke={}, cpu={}, overrides={})
    assert entry["profile"] == "cpu" and entry["overrides"] == {"steps": 5}
    assert '| 01_demo | cpu (overrides: {"steps": 5}) | loss=1 |' in results.table(tmp_path)
    assert "overrides" not in json.loads(results.record("02_demo", loss=1.0).read_text())


def test_results_default_to_the_checkouts_build_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("COURSE_RESULTS_DIR", raising=False)
    assert results.in_checkout() and results.results_dir() == ROOT / "build" / "results"
    assert not results.in_checkout(tmp_path)  # what an installed copy sees (tests/test_packaging.py runs one)
    monkeypatch.setenv("COURSE_RESULTS_DIR", "~/mine")
    assert results.results_dir() == Path("~/mine").expanduser().resolve()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_parameters_cell_holds_plain_values_that_the_setup_cell_uses(path):
    import papermill

    params = papermill.inspect_notebook(str(path))
    assert list(params) == ["PROFILE", "SEED", "CFG_OVERRIDES"]
    assert params["PROFILE"]["default"] == "None" and params["CFG_OVERRIDES"]["default"] == "{}"
    assert params["SEED"]["default"].isdigit()
    cells = asg.load(path)["cells"]
    i = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    setup = asg._source(cells[i + 1])
    assert "setup" in cells[i + 1]["metadata"].get("tags", [])
    for needle in ("PROFILE = profile.use(PROFILE)", "seed_everything(SEED)",
                   "profile=PROFILE, overrides=CFG_OVERRIDES"):
        assert needle in setup, f"{path.name}: the setup cell lacks {needle!r}"
    assert "profile.name()" not in "".join(asg._source(c) for c in cells)  # the notebook says PROFILE


def test_papermill_sets_the_profile_and_a_size(tmp_path):
    env = dict(os.environ, COURSE_PROFILE="cpu", COURSE_RESULTS_DIR=str(tmp_path / "results"))
    src = ROOT / "solutions" / "00_getting_started.ipynb"
    out = subprocess.run([sys.executable, "-m", "papermill", "-k", "python3", "-p", "PROFILE", "smoke",
                          "-y", "CFG_OVERRIDES: {repeats: 2}", "--cwd", str(src.parent), str(src),
                          str(tmp_path / "out.ipynb")], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    nb = json.loads((tmp_path / "out.ipynb").read_text())
    injected = next(c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
    assert 'PROFILE = "smoke"' in "".join(injected["source"])
    setup = next(c for c in nb["cells"] if "setup" in c["metadata"].get("tags", []))
    printed = "".join(o.get("text", "") if isinstance(o.get("text"), str) else "".join(o.get("text", []))
                      for o in setup["outputs"])
    assert "profile=smoke" in printed and "'matmul_size': 256, 'repeats': 2" in printed
    recorded = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert recorded == ["00_getting_started__smoke.json"]  # not __cpu, though COURSE_PROFILE said cpu
    entry = json.loads((tmp_path / "results" / recorded[0]).read_text())
    assert entry["profile"] == "smoke" and entry["overrides"] == {"repeats": 2}
    assert entry["metrics"]["device_selftest_ok"] is True
