"""Notebook 06's GPU targets, measured through ``course_lib.train.fit``. Two parts, JSON out:

``quality``: nanoGPT's shakespeare_char configuration (6 layers, 6 heads, 384 dims, context 256,
batch 64, dropout 0.2, 5000 iterations, lr 1e-3 -> 1e-4 cosine, beta2 0.99, no biases) with bf16
autocast and ``torch.compile``, stopped by a wall-clock budget (default 300 s, the target's 5
minutes). Target: validation loss <= 1.47 (200-batch estimate).

``mfu``: a GPT-2 124M-shaped model (12 layers, 12 heads, 768 dims, context 1024, vocabulary padded
to 50,304) trained on GPT-2 tokens of Tiny Shakespeare (338k) with bf16 autocast, fused AdamW, flash
attention (``F.scaled_dot_product_attention``) and ``torch.compile``. The first ``--skip`` steps
(compilation) are left out of tokens/s (``fit(timing_skip=...)``). MFU = 6N + 12 L T d FLOPs per
token (:func:`course_lib.models.gpt.flops_per_token`) times tokens/s over the GPU's dense peak in
the precision the run trains in (``course_lib.measure.PEAK_BF16_FLOPS``, bf16 from compute
capability 8.0 on; ``PEAK_FP16_FLOPS`` for fp16 on older GPUs). Target: >= 40 %.

    COURSE_DATA_MIRROR=../shared/data python benchmarks/gpt_gpu.py quality mfu --out build/gpu.json

Both run on CPU too with small sizes (``--tiny``), which is how the test suite keeps this script
working on machines without a GPU; such numbers mean nothing for the targets.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from course_lib import device as _device
from course_lib.measure import count_parameters, peak_flops_for
from course_lib.models.gpt import GPT, GPTConfig, flops_per_token
from course_lib.tasks.text import CharCorpus, estimate_loss, lm_loss, random_windows
from course_lib.train import OptimConfig, fit
from course_lib.tuning import recipes

GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, dropout=0.0, bias=True,
                 batch_size=16, accum=4, steps=60, skip=15)
TINY = dict(quality=dict(model=dict(n_layer=2, n_head=2, n_embd=32, block_size=32), batch_size=8, steps=30,
                         optim=dict(warmup=5)),
            mfu=dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=512, batch_size=4, accum=2,
                     steps=6, skip=2))


def quality(dev: torch.device, budget_s: float, compile: bool, tiny: bool, eval_iters: int = 200) -> dict:
    """The gpu profile's char_gpt run (nanoGPT's shakespeare_char configuration, from
    ``course_lib.tuning.recipes``) under a wall-clock budget."""
    cfg = copy.deepcopy(recipes.char_gpt_config("gpu"))
    if tiny:
        for key, value in TINY["quality"].items():
            cfg[key] = dict(cfg[key], **value) if isinstance(value, dict) else value
    cfg["compile"] = compile
    corpus = CharCorpus.load()
    model = recipes.build_char_gpt(cfg, corpus.vocab_size)
    t0 = time.perf_counter()
    hist = recipes.pretrain_char_gpt(model, cfg, corpus, device=dev, progress=False, max_seconds=budget_s,
                                     log_every=100, timing_skip=20)  # steady-state tokens/s; wall time below
    wall = time.perf_counter() - t0
    model.eval()
    with _device.autocast_policy(dev).context():
        losses = estimate_loss(model, corpus, cfg["batch_size"], cfg["model"]["block_size"], iters=eval_iters)
    return {"part": "quality", "config": cfg, "params": count_parameters(model), "steps_done": hist.steps_done,
            "train_seconds_incl_compile": round(wall, 1), "tokens_per_s": round(hist.tokens_per_s or 0.0),
            "mfu": None if hist.mfu is None else round(hist.mfu, 4),
            "val_loss": round(losses["val_loss"], 4), "train_loss": round(losses["train_loss"], 4),
            "eval_iters": eval_iters, "target": {"val_loss": 1.47, "seconds": 300}}


def gpt2_tokens(max_chars: int) -> torch.Tensor:
    """GPT-2 ids of (the start of) Tiny Shakespeare, with the registry's r50k ranks (offline)."""
    from course_lib.tokenizers import gpt2_tokenizer

    return torch.tensor(gpt2_tokenizer().encode(CharCorpus.load().text[:max_chars]), dtype=torch.long)


def mfu(dev: torch.device, compile: bool, tiny: bool) -> dict:
    cfg = dict(GPT2_124M, **(TINY["mfu"] if tiny else {}))
    mcfg = GPTConfig(vocab_size=cfg["vocab_size"], block_size=cfg["block_size"], n_layer=cfg["n_layer"],
                     n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=cfg["dropout"], bias=cfg["bias"])
    ids = gpt2_tokens(20_000 if tiny else None) % cfg["vocab_size"]  # tiny: ids folded into its vocab
    _device.seed_everything(0)
    model = GPT(mcfg)
    pinned = dev.type == "cuda"

    def batch(i: int):
        g = torch.Generator().manual_seed(i)
        x, y = random_windows(ids, cfg["batch_size"], cfg["block_size"], g)
        return (x.pin_memory(), y.pin_memory()) if pinned else (x, y)

    fpt = flops_per_token(mcfg)
    optim = OptimConfig(lr=6e-4, warmup=min(10, cfg["steps"] // 3), betas=(0.9, 0.95), weight_decay=0.1, grad_clip=1.0)
    hist = fit(model, lm_loss, batch, steps=cfg["steps"], optim=optim, accum_steps=cfg["accum"], device=dev,
               compile=compile, progress=False, log_every=cfg["steps"],
               tokens_per_step=cfg["batch_size"] * cfg["block_size"], flops_per_token=fpt,
               timing_skip=cfg["skip"])
    peak = peak_flops_for(dev, _device.autocast_policy(dev).dtype)
    mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    return {"part": "mfu", "config": cfg, "params": count_parameters(model), "flops_per_token": fpt,
            "tokens_per_s": round(hist.tokens_per_s or 0.0), "peak_flops": peak,
            "precision": str(_device.autocast_policy(dev)),
            "mfu": None if hist.mfu is None else round(hist.mfu, 4), "final_loss": round(hist.loss[-1], 4),
            "max_memory_gib": None if mem is None else round(mem, 2), "compile": compile,
            "target": {"mfu": 0.40}}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("parts", nargs="+", choices=["quality", "mfu"])
    ap.add_argument("--device", default=None, help="default: course_lib.device.get_device()")
    ap.add_argument("--budget", type=float, default=300.0, help="quality: training budget in seconds")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="small sizes, to check the script runs (CPU, tests)")
    ap.add_argument("--eval-iters", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON list here")
    a = ap.parse_args(argv)
    dev = torch.device(a.device) if a.device else _device.get_device()
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = []
    for part in a.parts:
        res = (quality(dev, a.budget, not a.no_compile, a.tiny, a.eval_iters) if part == "quality"
               else mfu(dev, not a.no_compile, a.tiny))
        res.update(device=str(dev), hardware=_device.describe(dev), torch=torch.__version__, tiny=a.tiny,
                   date=time.strftime("%Y-%m-%d"))
        print(json.dumps(res, indent=2), flush=True)
        out.append(res)
        if a.out:  # after each part, so a run cut short keeps what it measured
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
