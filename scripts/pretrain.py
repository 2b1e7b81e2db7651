"""Pretrain the course's GPT on Tiny Shakespeare (characters), on one process or many.

The same file runs alone or under ``torchrun`` with DistributedDataParallel (DDP):

    python scripts/pretrain.py --steps 2000                          # one process
    torchrun --standalone --nproc_per_node 2 scripts/pretrain.py     # 2 processes (gloo on CPU)
    torchrun --standalone --nproc_per_node 8 scripts/pretrain.py --n-layer 6 --n-head 6 \
        --n-embd 384 --block-size 256 --batch-size 512 --dropout 0.2  # 8 GPUs (nccl)

``--batch-size`` is the GLOBAL batch: each of the W processes takes its own 1/W slice of the
same deterministic batch, computes gradients on it, and DDP averages the gradients across
processes during ``backward``. The averaged gradient equals the single-process gradient of the
whole batch, so W processes follow the same trajectory as one (tests/test_ddp.py checks this).
Training itself is ``course_lib.train.fit``, unchanged. Rank 0 prints a JSON summary and writes
``--out`` (final weights, safetensors) if given. The summary's ``slices`` say what each rank was
fed (rows, a digest of them, a digest per row of the first batch), gathered from every rank: a
rank that trained on the whole global batch would reach the same weights, and only this shows it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from course_lib import profile  # noqa: E402
from course_lib.device import get_device, seed_everything  # noqa: E402
from course_lib.models.gpt import GPT, GPTConfig, flops_per_token  # noqa: E402
from course_lib.tasks.text import CharCorpus, estimate_loss, lm_loss  # noqa: E402
from course_lib.train import OptimConfig, fit  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=12, help="global batch (sequences per step, all ranks)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--eval-every", type=int, default=0, help="0: only at the end")
    ap.add_argument("--eval-iters", type=int, default=20)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--checkpoint", type=str, default=None, help="resumable checkpoint path (one per rank)")
    ap.add_argument("--out", type=str, default=None, help="write the final weights here (rank 0)")
    return ap.parse_args(argv)


def setup() -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, get_device()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend=backend)
    return rank, world, device


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    rank, world, device = setup()
    try:
        if args.batch_size % world:
            raise ValueError(f"--batch-size {args.batch_size} must be divisible by the number of processes {world}")
        local_bs = args.batch_size // world
        seed_everything(args.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)
        corpus = CharCorpus.load()
        cfg = GPTConfig(vocab_size=corpus.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                        n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout)
        model = GPT(cfg).to(device)
        global_batches = corpus.batches("train", args.batch_size, args.block_size, seed=args.seed)

        fed = {"rows": 0, "digest": hashlib.sha256(), "first_rows": []}

        def my_slice(i: int):  # this rank's rows of global batch i
            x, y = global_batches(i)
            x, y = x[rank * local_bs:(rank + 1) * local_bs], y[rank * local_bs:(rank + 1) * local_bs]
            fed["rows"] += len(x)
            fed["digest"].update(x.numpy().tobytes())
            if i == 0:
                fed["first_rows"] = [hashlib.sha256(row.numpy().tobytes()).hexdigest()[:16] for row in x]
            return x, y

        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        else:
            train_model = model

        def eval_fn(_, step):  # the unwrapped model: no collectives, every rank computes the same numbers
            return estimate_loss(model, corpus, 12, args.block_size, iters=args.eval_iters)

        checkpoint = None
        if args.checkpoint:
            checkpoint = args.checkpoint if world == 1 else f"{args.checkpoint}.rank{rank}"
        optim = OptimConfig(lr=args.lr, warmup=args.warmup, min_lr_ratio=args.min_lr_ratio,
                            weight_decay=args.weight_decay, betas=(0.9, 0.99))
        hist = fit(train_model, lm_loss, my_slice, steps=args.steps, optim=optim,
                   eval_fn=eval_fn, eval_every=args.eval_every or args.steps, device=device,
                   compile=args.compile, progress=rank == 0 and not profile.is_smoke(),
                   checkpoint_path=checkpoint, tokens_per_step=local_bs * args.block_size,
                   flops_per_token=flops_per_token(cfg))
        mine = {"rank": rank, "rows": fed["rows"], "digest": fed["digest"].hexdigest(), "first_rows": fed["first_rows"]}
        slices = [mine]
        if world > 1:
            slices = [None] * world
            dist.all_gather_object(slices, mine)
        summary = {"world_size": world, "slices": slices, "backend": dist.get_backend() if world > 1 else None,
                   "device": str(device), "config": cfg.to_dict(), "steps": hist.steps_done,
                   "seconds": round(hist.seconds, 2),
                   "tokens_per_s_all_ranks": round((hist.tokens_per_s or 0.0) * world, 1),
                   "mfu": hist.mfu, **{k: round(v, 4) for k, v in hist.last_eval.items()}}
        if rank == 0:
            if args.out:
                from safetensors.torch import save_model

                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                save_model(model, args.out)
            print(json.dumps(summary))
        return summary
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
