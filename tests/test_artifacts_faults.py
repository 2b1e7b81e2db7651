"""The artifact cache under faults: damaged files are trained again with a warning naming them,
concurrent callers train once, a read-only cache is refused with what to do, and the course's
char_gpt reproduces bit for bit in two fresh processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from course_lib import artifacts
from course_lib.data import sha256_of

ROOT = Path(__file__).resolve().parent.parent


class Tied(torch.nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.emb = torch.nn.Embedding(5, d)
        self.head = torch.nn.Linear(d, 5, bias=False)
        self.head.weight = self.emb.weight  # tied: stored once by safetensors


TRAINED: list[str] = []


def _recipe(name: str) -> artifacts.Recipe:
    def build(cfg):
        torch.manual_seed(0)
        return Tied(cfg["d"])

    def train(model, cfg):
        TRAINED.append(name)
        with torch.no_grad():
            model.emb.weight.add_(1.0)
        return {"trained": True}

    return artifacts.Recipe(name, "1", lambda p: {"d": 4}, build, train)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_ARTIFACT_DIR", str(tmp_path))
    TRAINED.clear()
    return tmp_path


def _files(cache: Path, name: str) -> tuple[Path, Path]:
    (weights,) = cache.glob(f"{name}-smoke-*.safetensors")
    return weights, weights.with_suffix(".json")


def test_sidecar_records_the_weights_sha256_and_a_clean_cache_loads(cache):
    r = _recipe("clean")
    m1, meta = artifacts.get(r, profile="smoke")
    weights, sidecar = _files(cache, "clean")
    assert json.loads(sidecar.read_text())["sha256"] == sha256_of(weights) == meta["sha256"]
    m2, meta2 = artifacts.get(r, profile="smoke")
    assert TRAINED == ["clean"] and meta2 == meta
    assert torch.equal(m1.emb.weight, m2.emb.weight) and m2.head.weight is m2.emb.weight


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _nan_with_matching_hash(path: Path) -> None:
    state = load_file(str(path))
    state = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
    save_file(state, str(path))
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["sha256"] = sha256_of(path)  # the hash matches: only the finiteness check can catch it
    sidecar.write_text(json.dumps(meta))


def _random_values(path: Path) -> None:
    state = {k: torch.randn_like(v) for k, v in load_file(str(path)).items()}
    save_file(state, str(path))


@pytest.mark.parametrize("damage, words", [
    (_flip_byte, "sha256"),
    (_truncate, "sha256"),
    (_random_values, "sha256"),
    (_nan_with_matching_hash, "NaN"),
    (lambda p: p.with_suffix(".json").write_text("{not json"), "unreadable"),
    (lambda p: p.with_suffix(".json").unlink(), "missing"),
    (lambda p: p.unlink(), "missing"),
    (lambda p: p.with_suffix(".json").write_text(json.dumps({"recipe": "other", "key": "x"})), "another artifact"),
])
def test_a_damaged_artifact_is_trained_again_with_a_warning_naming_it(cache, damage, words):
    r = _recipe("dmg")
    good, _ = artifacts.get(r, profile="smoke")
    weights, _ = _files(cache, "dmg")
    damage(weights)
    with pytest.warns(RuntimeWarning, match=words) as record:
        again, meta = artifacts.get(r, profile="smoke")
    assert str(weights) in str(record[0].message)
    assert TRAINED == ["dmg", "dmg"]
    assert torch.equal(again.emb.weight, good.emb.weight)
    assert meta["sha256"] == sha256_of(weights)  # the rebuilt copy is whole again
    artifacts.get(r, profile="smoke")  # and loads without training a third time
    assert TRAINED == ["dmg", "dmg"]


def test_weights_of_another_shape_are_trained_again(cache):
    r = _recipe("shape")
    artifacts.get(r, profile="smoke")
    weights, sidecar = _files(cache, "shape")
    save_file({"emb.weight": torch.zeros(5, 7)}, str(weights))
    meta = json.loads(sidecar.read_text())
    meta["sha256"] = sha256_of(weights)
    sidecar.write_text(json.dumps(meta))
    with pytest.warns(RuntimeWarning, match="do not load"):
        artifacts.get(r, profile="smoke")


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root writes into read-only folders; run as a normal user to see the refusal")
def test_a_read_only_cache_is_refused_with_what_to_do(cache):
    cache.chmod(0o555)
    try:
        with pytest.raises(artifacts.ArtifactError, match="COURSE_ARTIFACT_DIR"):
            artifacts.get(_recipe("ro"), profile="smoke")
    finally:
        cache.chmod(0o755)


def test_an_unwritable_cache_is_refused_with_what_to_do(cache, monkeypatch):
    # the same refusal as a read-only folder, forced so that it also shows when tests run as root
    def no_space(path, write, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifacts, "atomic_write", no_space)
    with pytest.raises(artifacts.ArtifactError, match=r"cannot write the artifact cache .*COURSE_ARTIFACT_DIR"):
        artifacts.get(_recipe("full"), profile="smoke")


CHILD = textwrap.dedent("""
    import json, sys, time
    import torch
    from course_lib import artifacts

    log = sys.argv[1]

    def build(cfg):
        torch.manual_seed(0)
        return torch.nn.Linear(3, 2)

    def train(model, cfg):
        with open(log, "a") as f:
            f.write("trained\\n")
        time.sleep(1.0)  # long enough for the other process to arrive while this one trains
        return {}

    r = artifacts.Recipe("shared", "1", lambda p: {}, build, train)
    model, meta = artifacts.get(r, profile="smoke")
    print(json.dumps({"sha256": meta["sha256"], "w": model.weight.sum().item()}))
""")


def _run(code: str, *args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)


def test_concurrent_callers_train_once_and_load_the_same_files(tmp_path):
    env = dict(os.environ, COURSE_ARTIFACT_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    log = tmp_path / "log.txt"
    procs = [_run(CHILD, str(log), env=env) for _ in range(3)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert log.read_text().count("trained") == 1
    assert len({o["sha256"] for o in outs}) == 1 and len({o["w"] for o in outs}) == 1


REPRO = textwrap.dedent("""
    import sys
    from course_lib import artifacts
    from course_lib.data import sha256_of
    from course_lib.tuning import recipes

    model, meta = artifacts.get(recipes.CHAR_GPT, profile="smoke")
    print(meta["sha256"])
""")


def test_char_gpt_reproduces_bit_for_bit_in_two_fresh_processes(tmp_path):
    digests = []
    for i in range(2):
        env = dict(os.environ, COURSE_ARTIFACT_DIR=str(tmp_path / f"cache{i}"), OMP_NUM_THREADS="1",
                   COURSE_PROFILE="smoke")
        p = _run(REPRO, env=env)
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        digests.append(out.strip().splitlines()[-1])
    assert digests[0] == digests[1] and len(digests[0]) == 64
