"""scripts/pretrain.py under torchrun: 2 gloo CPU processes reach the same parameters after k
steps as one process with the same global batch (DDP averages the gradients of the slices), and
each rank really trains on its own half of every batch (a rank that trained on the whole global
batch would reach the same parameters too, so the test also reads what each rank was fed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "pretrain.py"
ARGS = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "8",
        "--steps", "4", "--warmup", "1", "--lr", "3e-3", "--eval-iters", "2"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", COURSE_DEVICE="cpu", COURSE_PROFILE="smoke")
    env.setdefault("COURSE_DATA_MIRROR", str(ROOT.parent / "shared" / "data"))
    return env


def _run(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=240)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, f"expected one JSON summary (from rank 0), got {proc.stdout!r}"
    return json.loads(lines[0])



def test_two_gloo_processes_match_one_process(tmp_path):
    one = _run([sys.executable, str(SCRIPT), *ARGS, "--out", str(tmp_path / "one.safetensors")])
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                str(SCRIPT), *ARGS, "--out", str(tmp_path / "two.safetensors")])
    assert one["world_size"] == 1 and two["world_size"] == 2 and two["backend"] == "gloo"
    a, b = load_file(str(tmp_path / "one.safetensors")), load_file(str(tmp_path / "two.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    assert abs(one["val_loss"] - two["val_loss"]) < 1e-4
    # and training really moved the weights away from the (seeded) initial ones
    from course_lib.device import seed_everything
    from course_lib.models.gpt import GPT, GPTConfig

    seed_everything(1337)
    init = GPT(GPTConfig(**one["config"])).state_dict()
    moved = max((a[k] - init[k]).abs().max().item() for k in a)
    assert moved > 1e-3, f"parameters barely changed in 4 steps (max change {moved})"
    assert one["steps"] == two["steps"] == 4
    # what each rank was fed: 4 steps x its slice of the global batch of 8, and different rows
    assert [r["rank"] for r in two["slices"]] == [0, 1] and [r["rank"] for r in one["slices"]] == [0]
    assert [r["rows"] for r in two["slices"]] == [16, 16] and one["slices"][0]["rows"] == 32
    assert two["slices"][0]["digest"] != two["slices"][1]["digest"]
    # and together they are the one process's batches, row for row
    assert two["slices"][0]["first_rows"] + two["slices"][1]["first_rows"] == one["slices"][0]["first_rows"]


def test_global_batch_must_split_evenly(tmp_path):
    cmd = [sys.executable, str(SCRIPT), *ARGS]
    cmd[cmd.index("--batch-size") + 1] = "7"
    # one process: any batch works; the check is for W processes, so call main with a fake world
    env = _env() | {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": "29599"}
    code = ("import sys; sys.argv=['x']; import runpy; "
            "import torch.distributed as d; d.init_process_group=lambda **k: None; "
            f"m=runpy.run_path({str(SCRIPT)!r}); m['main']({cmd[2:]!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    assert proc.returncode != 0
    assert "--batch-size 7 must be divisible by the number of processes 2" in proc.stderr
