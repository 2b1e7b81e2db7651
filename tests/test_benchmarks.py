"""The benchmark scripts still run (tiny sizes, CPU): their numbers are measured elsewhere, but a
GPU session must not find a script broken by a library change."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_gpt_gpu_runs_tiny_on_cpu(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "gpu.json"
    res = load("gpt_gpu").main(["quality", "mfu", "--tiny", "--device", "cpu", "--no-compile", "--eval-iters", "2",
                                "--out", str(out)])
    assert json.loads(out.read_text()) == res
    q, m = res
    assert q["part"] == "quality" and q["steps_done"] == q["config"]["steps"] == 30
    assert 0 < q["val_loss"] < 5 and q["tokens_per_s"] > 0
    assert m["part"] == "mfu" and m["tokens_per_s"] > 0 and m["mfu"] is None  # no bf16 peak known for a CPU
    assert m["params"] > 0 and m["flops_per_token"] > 6 * m["params"] * 0.9


def test_gpt_gpu_rejects_unknown_parts():
    with pytest.raises(SystemExit):
        load("gpt_gpu").main(["throughput"])
