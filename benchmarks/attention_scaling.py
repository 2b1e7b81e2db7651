"""Forward time vs sequence length: RNN layer, fused attention (SDPA) and naive attention, plus the
bytes each attention keeps for backward. Prints JSON (one record per length).

    .venv/bin/python benchmarks/attention_scaling.py --lengths 64 256 1024 2048 --d 64 --heads 4
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import measure
from course_lib.device import describe, get_device
from course_lib.models import attention as att
from course_lib.models import transformer as tr


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    if args.d % args.heads:
        raise ValueError(f"--heads={args.heads} must divide --d={args.d}")
    dev = get_device()
    torch.manual_seed(0)
    d, h = args.d, args.heads
    rnn = nn.RNN(d, d, batch_first=True).to(dev).eval()
    mha = tr.MultiHeadAttention(d, h).to(dev).eval()

    def naive(x):
        q, k, v = (tr.split_heads(t, h) for t in mha.qkv(x).split(d, dim=-1))
        return mha.proj(tr.merge_heads(att.scaled_dot_product_attention(q, k, v)))

    out = []
    for n in args.lengths:
        x = torch.randn(args.batch, n, d, device=dev)
        with torch.no_grad():
            rec = {
                "device": describe(dev), "threads": torch.get_num_threads(), "n": n, "d": d, "heads": h,
                "batch": args.batch,
                "rnn_ms": 1e3 * measure.median_seconds(lambda: rnn(x), args.repeats),
                "sdpa_ms": 1e3 * measure.median_seconds(lambda: mha(x), args.repeats),
                "naive_ms": 1e3 * measure.median_seconds(lambda: naive(x), args.repeats),
            }
        q, k, v = (torch.randn(args.batch, h, n, d // h, device=dev, requires_grad=True) for _ in range(3))
        rec["sdpa_saved_mib"] = measure.saved_activation_bytes(F.scaled_dot_product_attention, q, k, v) / 2**20
        rec["naive_saved_mib"] = measure.saved_activation_bytes(att.scaled_dot_product_attention, q, k, v) / 2**20
        out.append({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()})
        print(json.dumps(out[-1]), flush=True)
    return out


if __name__ == "__main__":
    main()
