"""Resume under faults (issue 12): settings recorded and compared, history carried, temp files of
killed writes removed, damaged checkpoints named, a full disk named, and random SIGKILLs during
checkpoint writes resumed to the uninterrupted run's weights and history. Bounded: a few seconds."""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from course_lib import checkpoint as ckmod
from course_lib.checkpoint import load_checkpoint
from course_lib.device import seed_everything
from course_lib.models.gpt import GPT, GPTConfig
from course_lib.train import OptimConfig, fit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def make_model() -> nn.Module:
    seed_everything(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Dropout(0.1), nn.GELU(), nn.Linear(32, 1))


def data(i: int):
    g = torch.Generator().manual_seed(i)
    x = torch.randn(16, 8, generator=g)
    return x, x.sum(1, keepdim=True)


def mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def eval_fn(model, step):
    return {"val": float(mse(model, data(10_000)))}


KW = dict(steps=30, optim=OptimConfig(lr=1e-2, warmup=5), device="cpu", progress=False, accum_steps=2,
          eval_fn=eval_fn, eval_every=4, log_every=10)


def same_history(a, b) -> None:
    for k in ("step", "loss", "lr", "grad_norm", "eval_step", "eval"):
        assert getattr(a, k) == getattr(b, k), k


def same_weights(a: nn.Module, b: nn.Module) -> None:
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k


# --- settings ------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, words", [
    (dict(optim=OptimConfig(lr=2e-2, warmup=5)), ["optim.lr", "0.01", "0.02"]),
    (dict(optim=OptimConfig(lr=1e-2, warmup=5, weight_decay=0.0)), ["optim.weight_decay"]),
    (dict(optim=OptimConfig(lr=1e-2, warmup=5, betas=(0.8, 0.9))), ["optim.betas"]),
    (dict(optim=OptimConfig(lr=1e-2, warmup=3)), ["optim.warmup"]),
    (dict(steps=40), ["steps: 30 -> 40"]),
    (dict(accum_steps=1), ["accum_steps: 2 -> 1"]),
])
def test_a_resume_with_other_settings_is_refused_naming_each(tmp_path, change, words):
    ck = tmp_path / "ck.pt"
    fit(make_model(), mse, data, checkpoint_path=ck, stop_at=10, **KW)
    before = load_checkpoint(ck)
    with pytest.raises(ValueError, match="other settings") as e:
        fit(make_model(), mse, data, checkpoint_path=ck, **{**KW, **change})
    for w in words + [str(ck), "changed-settings", "resume=False"]:
        assert w in str(e.value)
    assert load_checkpoint(ck)["step"] == before["step"] == 10


def test_a_changed_n_head_with_the_same_shapes_is_refused(tmp_path):
    ck = tmp_path / "ck.pt"
    cfg = dict(vocab_size=11, block_size=8, n_layer=1, n_embd=16)
    loss = lambda m, b: m(b).float().logsumexp(-1).mean()
    batches = lambda i: torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(i))
    kw = dict(steps=4, device="cpu", progress=False, checkpoint_path=ck)
    fit(GPT(GPTConfig(n_head=2, **cfg)), loss, batches, stop_at=2, **kw)
    with pytest.raises(ValueError, match=r"model_config\.n_head: 2 -> 4"):
        fit(GPT(GPTConfig(n_head=4, **cfg)), loss, batches, **kw)


def test_opting_in_to_changed_settings_warns_and_applies_them(tmp_path):
    ck = tmp_path / "ck.pt"
    fit(make_model(), mse, data, checkpoint_path=ck, stop_at=10, **KW)
    new = OptimConfig(lr=1e-2, warmup=5, weight_decay=0.0, betas=(0.8, 0.9))
    with pytest.warns(UserWarning, match=r"changed settings: .*optim.betas.*optim.weight_decay"):
        fit(make_model(), mse, data, checkpoint_path=ck, resume="changed-settings", **{**KW, "optim": new})
    groups = load_checkpoint(ck)["optimizer"]["param_groups"]
    assert {g["weight_decay"] for g in groups} == {0.0} and {tuple(g["betas"]) for g in groups} == {(0.8, 0.9)}
    assert load_checkpoint(ck)["settings"]["optim"]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="resume must be"):
        fit(make_model(), mse, data, checkpoint_path=ck, resume="yes", **KW)


# --- history and temp files ----------------------------------------------------------------------

class Crash(Exception):
    pass


def test_history_logged_before_a_periodic_checkpoint_survives_a_crash(tmp_path):
    """log_every=10 > checkpoint_every=7: before the fix steps 1-7 were not in the checkpoint."""
    full = make_model()
    h_full = fit(full, mse, data, **KW)
    ck = tmp_path / "ck.pt"

    def crashing(i):
        if i == 2 * 9:  # micro-batch of step 10, after the checkpoint at step 7
            raise Crash
        return data(i)

    with pytest.raises(Crash):
        fit(make_model(), mse, crashing, checkpoint_path=ck, checkpoint_every=7, **KW)
    assert load_checkpoint(ck)["step"] == 7
    resumed = make_model()
    h = fit(resumed, mse, data, checkpoint_path=ck, checkpoint_every=7, **KW)
    same_history(h_full, h)
    same_weights(full, resumed)


def test_temp_files_of_killed_writes_are_removed(tmp_path):
    ck = tmp_path / "ck.pt"
    fit(make_model(), mse, data, checkpoint_path=ck, stop_at=4, **KW)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = tmp_path / ".ck.pt.abc123.tmp"  # written before temp names carried a pid
    killed = tmp_path / f".ck.pt.xyz.{dead.pid}.tmp"
    live = tmp_path / f".ck.pt.qrs.{os.getppid()}.tmp"  # a write in flight in a living process
    other = tmp_path / ".other.pt.abc.tmp"
    for p in (old, killed, live, other):
        p.write_bytes(b"partial")
    fit(make_model(), mse, data, checkpoint_path=ck, stop_at=8, **KW)
    assert not old.exists() and not killed.exists()
    assert live.exists() and other.exists()


# --- damaged checkpoints -------------------------------------------------------------------------

def _truncated(p: Path) -> None:
    fit(make_model(), mse, data, checkpoint_path=p, stop_at=2, **KW)
    p.write_bytes(p.read_bytes()[:300])


@pytest.mark.parametrize("damage, words", [
    (_truncated, ["cannot be read"]),
    (lambda p: p.write_bytes(os.urandom(2000)), ["cannot be read"]),
    (lambda p: p.write_bytes(b""), ["cannot be read"]),
    (lambda p: p.write_text("caf\xe9 \u00ff not a checkpoint", encoding="latin-1"), ["cannot be read"]),
    (lambda p: torch.save({"weights": torch.zeros(2)}, p), ["not a training checkpoint", "'model'", "'rng'"]),
    (lambda p: torch.save([1, 2, 3], p), ["not a training checkpoint"]),
    (lambda p: torch.save({k: v for k, v in _good(p).items() if k != "rng"}, p), ["missing ['rng']"]),
    (lambda p: torch.save({**_good(p), "rng": {"torch": 3}}, p), ["does not fit this run"]),
    (lambda p: torch.save({**_good(p), "optimizer": {"state": {}, "param_groups": []}}, p),
     ["does not fit this run"]),
    (lambda p: torch.save({**_good(p), "history": {"bogus": [1]}}, p), ["history", "bogus"]),
])
def test_a_damaged_checkpoint_names_the_file_and_what_to_do(tmp_path, damage, words):
    ck = tmp_path / "ck.pt"
    damage(ck)
    with pytest.raises(ValueError) as e:
        fit(make_model(), mse, data, checkpoint_path=ck, **KW)
    for w in words + [str(ck), "delete", "resume=False"]:
        assert w in str(e.value)
    fit(make_model(), mse, data, checkpoint_path=ck, resume=False, stop_at=2, **KW)  # the way out works
    assert load_checkpoint(ck)["step"] == 2


def test_a_checkpoint_path_that_is_a_folder_names_it(tmp_path):
    ck = tmp_path / "ck.pt"
    ck.mkdir()
    with pytest.raises(OSError) as e:
        fit(make_model(), mse, data, checkpoint_path=ck, **KW)
    assert str(ck) in str(e.value) and "resume=False" in str(e.value) and e.value.errno is not None


def _good(p: Path) -> dict:
    fit(make_model(), mse, data, checkpoint_path=p, stop_at=2, **KW)
    return load_checkpoint(p)


# --- a full disk ---------------------------------------------------------------------------------

def test_a_full_disk_names_the_file_and_the_errno(tmp_path, monkeypatch):
    """Simulated: the checkpoint's file refuses bytes past 1 kB with ENOSPC (runs everywhere)."""
    ck = tmp_path / "ck.pt"
    fit(make_model(), mse, data, checkpoint_path=ck, stop_at=2, **KW)
    before = ck.read_bytes()
    real_open = open

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 1000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(ckmod, "open", lambda *a, **k: Full(real_open(*a, **k)), raising=False)
    with pytest.raises(OSError) as e:
        fit(make_model(), mse, data, checkpoint_path=ck, stop_at=6, **KW)
    assert e.value.errno == errno.ENOSPC
    assert str(ck) in str(e.value) and "ENOSPC" in str(e.value) and "enforce fail" not in str(e.value)
    assert ck.read_bytes() == before  # the old checkpoint is untouched
    assert not list(tmp_path.glob(".ck.pt.*"))  # and no temp file is left


FULL_DISK = textwrap.dedent("""
    import errno, json, sys
    import torch
    from torch import nn
    from course_lib.train import fit
    model = nn.Linear(256, 256)
    try:
        fit(model, lambda m, b: m(b).pow(2).mean(), lambda i: torch.randn(4, 256), steps=1, device="cpu",
            progress=False, checkpoint_path=sys.argv[1] + "/ck.pt")
        print(json.dumps({"raised": None}))
    except OSError as e:
        import os
        print(json.dumps({"raised": "OSError", "errno": e.errno, "msg": str(e), "left": os.listdir(sys.argv[1])}))
""")


def test_a_full_tmpfs_names_the_file_and_the_errno(tmp_path):
    """Real: a 128 kB tmpfs in a private mount namespace (unshare -rm); skipped where it cannot be mounted."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here to mount a private tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = tmp_path / "full.py"
    script.write_text(FULL_DISK)
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=128k tmpfs {mnt}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (container without the privilege): {probe.stderr.strip()}")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["unshare", "-rm", "sh", "-c",
                        f"mount -t tmpfs -o size=128k tmpfs {mnt} && exec {sys.executable} {script} {mnt}"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["raised"] == "OSError" and out["errno"] == errno.ENOSPC, out
    assert f"{mnt}/ck.pt" in out["msg"] and "ENOSPC" in out["msg"] and "enforce fail" not in out["msg"]
    assert out["left"] == [], out  # no temp file on the full disk


# --- random SIGKILLs during checkpoint writes ----------------------------------------------------

CHILD = textwrap.dedent("""
    import sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[2])
    import test_faults_resume as t
    print("ready", flush=True)
    t.fit(t.make_model(), t.mse, t.data, checkpoint_path=sys.argv[1], checkpoint_every=1, **t.KILL_KW)
    print("done", flush=True)
""")
KILL_KW = {**KW, "steps": 120, "eval_every": 7}


@pytest.fixture(scope="module")
def uninterrupted():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = make_model()
        return model, fit(model, mse, data, **KILL_KW)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_run_killed_during_checkpoint_writes_resumes_to_the_uninterrupted_run(tmp_path, seed, uninterrupted):
    full, h_full = uninterrupted
    ck = tmp_path / "ck.pt"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, str(script), str(ck), str(HERE)], stdout=subprocess.PIPE, text=True,
                             env=env)
    try:
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while not ck.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(random.Random(seed).uniform(0.0, 0.15))  # seeded kill time, most of it spent in writes
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    killed_at = load_checkpoint(ck)["step"] if ck.exists() else 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = make_model()
        h = fit(resumed, mse, data, checkpoint_path=ck, checkpoint_every=1, **KILL_KW)
    finally:
        torch.set_num_threads(threads)
    assert killed_at < KILL_KW["steps"] or child.returncode == 0
    same_weights(full, resumed)
    same_history(h_full, h)
    assert not list(tmp_path.glob(".ck.pt.*.tmp"))  # what the killed write left is gone
