"""Quality and speed of the char-level recurrent language model of notebook 01; prints JSON.

Trains ``RNNLanguageModel`` on Tiny Shakespeare with ``course_lib.train.fit`` (default: the
notebook's cpu-profile GRU recipe, 300 steps), then reports the validation loss (nats/char),
training wall and CPU time, throughput, and the forward time per sequence at a few lengths.

    COURSE_DATA_MIRROR=../shared/data .venv/bin/python benchmarks/rnn_lm_quality.py --cell gru
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from course_lib.device import describe, get_device, seed_everything, synchronize
from course_lib.measure import count_parameters
from course_lib.models.rnn import RNNLanguageModel
from course_lib.tasks.text import CharCorpus, estimate_loss, lm_loss
from course_lib.train import OptimConfig, fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cell", default="gru", choices=["rnn", "gru", "lstm"])
    ap.add_argument("--d-embed", type=int, default=64)
    ap.add_argument("--d-hidden", type=int, default=256)
    ap.add_argument("--n-layers", type=int, default=1)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="optional wall-clock cap (the schedule still spans --steps)")
    ap.add_argument("--eval-iters", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    device = get_device()
    seed_everything(args.seed)
    corpus = CharCorpus.load("tiny_shakespeare")
    model = RNNLanguageModel(corpus.vocab_size, args.d_embed, args.d_hidden, args.n_layers, cell=args.cell)
    B, T = args.batch_size, args.block_size
    cpu0 = time.process_time()
    hist = fit(model, lm_loss, corpus.batches("train", B, T, seed=args.seed), steps=args.steps,
               optim=OptimConfig(lr=args.lr, weight_decay=0.0, warmup=20, grad_clip=1.0), max_seconds=args.max_seconds,
               device=device, tokens_per_step=B * T, progress=False)
    cpu_seconds = time.process_time() - cpu0
    losses = estimate_loss(model, corpus, B, T, iters=args.eval_iters)

    model.eval()
    forward_ms = {}
    with torch.no_grad():
        for n in (128, 512, 2048):
            x = torch.randint(corpus.vocab_size, (16, n), device=device)
            model(x)
            synchronize(device)
            t0 = time.perf_counter()
            model(x)
            synchronize(device)
            forward_ms[n] = round((time.perf_counter() - t0) * 1e3, 2)

    print(json.dumps({
        "benchmark": "rnn_lm_quality", "hardware": describe(device), "threads": torch.get_num_threads(),
        "config": vars(args), "parameters": count_parameters(model),
        "steps_done": hist.steps_done, "train_seconds": round(hist.seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "chars_per_s": round(hist.tokens_per_s or 0.0), **{k: round(v, 4) for k, v in losses.items()},
        "forward_ms_batch16": forward_ms,
    }, indent=2))


if __name__ == "__main__":
    main()
