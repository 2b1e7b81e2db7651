"""Training throughput of the GPT through ``course_lib.train.fit`` vs a bare PyTorch loop.

Both run the same model (same initial weights), the same batches, the same AdamW parameter
groups, learning-rate schedule and gradient clipping, in the same process, alternating
(bare, fit, bare, fit, ...) so machine noise hits both alike. They do the same arithmetic, so
their final weights must agree; the JSON reports that too. fit's overhead target: <= 5%.

    COURSE_DATA_MIRROR=../shared/data python benchmarks/gpt_throughput.py [--steps 200 --repeats 3]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from course_lib import device as _device
from course_lib.models.gpt import GPT, GPTConfig
from course_lib.tasks.text import CharCorpus, lm_loss
from course_lib.train import OptimConfig, fit, lr_at, make_optimizer


def bare_loop(model, batches, steps, lr, warmup, dev) -> None:
    """What fit does per step, and nothing else."""
    opt = make_optimizer(model, lr, 0.1, (0.9, 0.99), dev)
    model.train()
    for step in range(steps):
        cur = lr_at(step, lr=lr, steps=steps, warmup=warmup, min_lr_ratio=0.1)
        for g in opt.param_groups:
            g["lr"] = cur
        x, y = (t.to(dev) for t in batches[step % len(batches)])
        loss = lm_loss(model, (x, y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)


def run(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, steps=200, repeats=3,
        device: str | None = None, threads: int | None = None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device) if device else _device.get_device()
    corpus = CharCorpus.load()
    get = corpus.batches("train", batch_size, block_size, seed=0)
    batches = [get(i) for i in range(min(steps, 256))]
    _device.seed_everything(0)
    init = GPT(GPTConfig(corpus.vocab_size, block_size, n_layer, n_head, n_embd))
    tokens = steps * batch_size * block_size
    lr, warmup = 1e-3, min(100, steps // 10)

    def timed(fn):
        model = copy.deepcopy(init).to(dev)
        _device.synchronize(dev)
        t0 = time.perf_counter()
        fn(model)
        _device.synchronize(dev)
        return time.perf_counter() - t0, model

    def with_fit(model):
        optim = OptimConfig(lr=lr, warmup=warmup, min_lr_ratio=0.1, betas=(0.9, 0.99), weight_decay=0.1, grad_clip=1.0)
        fit(model, lm_loss, lambda i: batches[i % len(batches)], steps=steps, optim=optim, device=dev, progress=False)

    timed(lambda m: bare_loop(m, batches, min(steps, 20), lr, warmup, dev))  # warm-up
    t_bare, t_fit = [], []
    for _ in range(repeats):
        s, m_bare = timed(lambda m: bare_loop(m, batches, steps, lr, warmup, dev))
        t_bare.append(s)
        s, m_fit = timed(with_fit)
        t_fit.append(s)
    diff = max((a - b).abs().max().item() for a, b in zip(m_bare.state_dict().values(),
                                                           m_fit.state_dict().values(), strict=True))
    bare_tps, fit_tps = tokens / statistics.median(t_bare), tokens / statistics.median(t_fit)
    return {"benchmark": "gpt_throughput", "device": str(dev), "hardware": _device.describe(dev),
            "threads": torch.get_num_threads(),
            "config": dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                           batch_size=batch_size, steps=steps, repeats=repeats),
            "bare_tokens_per_s": round(bare_tps, 1), "fit_tokens_per_s": round(fit_tps, 1),
            "fit_overhead_pct": round(100 * (bare_tps / fit_tps - 1), 2),
            "seconds_bare": [round(t, 3) for t in t_bare], "seconds_fit": [round(t, 3) for t in t_fit],
            "max_abs_weight_difference": diff, "target_overhead_pct": 5.0}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    print(json.dumps(run(a.n_layer, a.n_head, a.n_embd, a.block_size, a.batch_size, a.steps, a.repeats,
                         a.device, a.threads), indent=2))
