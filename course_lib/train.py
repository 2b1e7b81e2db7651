"""``fit``: the one training loop every notebook uses.

The caller supplies the model, a loss function ``loss_fn(model, batch) -> scalar loss`` and the
data; ``fit`` supplies the rest: AdamW (fused on CUDA; weight decay only on matrices), linear
warmup + cosine learning rate, gradient accumulation and clipping, autocast per the device
policy (``course_lib.device.autocast_policy``), optional ``torch.compile``, periodic evaluation,
a tqdm progress bar (quiet under the smoke profile), a history for plots, tokens/s and, on CUDA
with ``flops_per_token``, model FLOPs utilisation (MFU), and atomic checkpoints that resume
exactly: a run stopped at step k and resumed ends with the same parameters as a run that was
never interrupted (same seed, deterministic data).

Data is either a callable ``data(i) -> batch`` (``i`` counts micro-batches from 0, so the
batch sequence is a pure function of the step and resuming is exact), or an iterable that is
cycled (on resume its first ``k * accum_steps`` batches are skipped).
"""
from __future__ import annotations

import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import profile as _profile
from .device import autocast_policy, get_device, synchronize

# Dense bf16 tensor-core peaks (FLOP/s) of common GPUs, for MFU. Pass ``peak_flops`` to override.
PEAK_BF16_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "A10": 125e12, "L40": 181e12, "L4": 121e12,
    "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12,
}


def peak_flops_for(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


def lr_at(step: int, *, lr: float, steps: int, warmup: int = 0, min_lr_ratio: float = 0.1) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if steps <= warmup:
        return lr
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    min_lr = lr * min_lr_ratio
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1,
                   betas: tuple[float, float] = (0.9, 0.95), device: torch.device | None = None,
                   no_decay: tuple[str, ...] = ()) -> torch.optim.AdamW:
    """AdamW with decay on matrices (dim >= 2) only; fused on CUDA. Parameters whose name
    contains one of ``no_decay`` (e.g. ``("pos_embed", "cls_token")`` for a ViT) are not decayed."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    skip = lambda n, p: p.dim() < 2 or any(s in n for s in no_decay)
    decay = [p for n, p in named if not skip(n, p)]
    no_decay = [p for n, p in named if skip(n, p)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device is not None and device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors inside tuples/lists/dicts to ``device`` (non-blocking on CUDA)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


@dataclass(frozen=True)
class OptimConfig:
    """How ``fit`` optimises: AdamW's peak ``lr``, ``betas`` and ``weight_decay`` (on matrices only;
    parameters whose name contains one of ``no_decay`` are never decayed), a linear ``warmup`` over
    that many steps, then cosine decay to ``min_lr_ratio * lr``; gradients clipped to norm
    ``grad_clip`` (None: no clipping). One object that notebooks and recipes pass around, so a
    configuration is written once."""

    lr: float = 1e-3
    warmup: int = 0
    min_lr_ratio: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0
    no_decay: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.warmup, int) and self.warmup >= 0):
            raise ValueError(f"warmup must be an integer >= 0 steps, got {self.warmup!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        object.__setattr__(self, "betas", tuple(self.betas))
        object.__setattr__(self, "no_decay", tuple(self.no_decay))

    def lr_at(self, step: int, steps: int) -> float:
        return lr_at(step, lr=self.lr, steps=steps, warmup=self.warmup, min_lr_ratio=self.min_lr_ratio)


@dataclass
class History:
    """What ``fit`` measured, ready for plots: per logged step, and per evaluation."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval: list[dict[str, float]] = field(default_factory=list)
    tokens_per_s: float | None = None
    mfu: float | None = None
    seconds: float = 0.0  # wall clock of the run, evaluation included
    eval_seconds: float = 0.0  # of which evaluation (excluded from tokens/s)
    steps_done: int = 0
    interrupted: bool = False

    def evals(self, key: str) -> list[float]:
        """One evaluation metric over time, e.g. ``history.evals("val_loss")``."""
        return [e[key] for e in self.eval]

    @property
    def last_eval(self) -> dict[str, float]:
        return self.eval[-1] if self.eval else {}

    def to_dict(self) -> dict:
        return asdict(self)


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_rest": [int(pos), int(has_gauss), float(cached)],
        "python": [py[0], list(py[1]), py[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss, cached = state["numpy_rest"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    v, keys, gauss = state["python"]
    random.setstate((v, tuple(keys), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, obj: dict) -> None:
    """``torch.save`` to a temporary file beside ``path``, then an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by ``fit`` without unpickling code (``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _check_state_shapes(model: nn.Module, state: dict, where: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"{where} does not fit this model: missing keys {missing[:5]}, unexpected keys {extra[:5]}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(
                f"{where}: parameter {k!r} has shape {tuple(state[k].shape)}, this model expects {tuple(v.shape)}"
            )


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    data: Callable[[int], Any] | Iterable[Any],
    *,
    steps: int,
    optim: OptimConfig | None = None,
    accum_steps: int = 1,
    eval_fn: Callable[[nn.Module, int], dict[str, float]] | None = None,
    eval_every: int | None = None,
    log_every: int = 10,
    device: torch.device | str | None = None,
    amp: bool = True,
    compile: bool = False,
    progress: bool | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    stop_at: int | None = None,
    max_seconds: float | None = None,
    tokens_per_step: int | None = None,  # tokens in one micro-batch, for tokens/s
    flops_per_token: float | None = None,
    peak_flops: float | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    timing_skip: int = 0,
) -> History:
    """Train ``model`` for ``steps`` optimizer steps and return its :class:`History`.

    ``loss_fn(model, batch)`` returns the scalar loss of one micro-batch (e.g. next-token
    cross-entropy); ``optim`` (an :class:`OptimConfig`) holds the optimiser's settings.
    ``eval_fn(model, step)`` returns metrics, every ``eval_every`` steps and at the end. ``stop_at`` ends the run early at that step, as if interrupted (the schedule
    still spans ``steps``); ``max_seconds`` ends it after a wall-clock budget. With
    ``checkpoint_path`` a checkpoint is written every ``checkpoint_every`` steps and at the end,
    and an existing one is resumed from when ``resume`` is true. ``timing_skip`` leaves the first
    steps of this call out of tokens/s and MFU (compilation and allocator warm-up), so a benchmark
    reports the steady state.
    """
    if steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
    if timing_skip < 0:
        raise ValueError(f"timing_skip must be >= 0 steps, got {timing_skip}")
    dev = torch.device(device) if device is not None else get_device()
    model.to(dev)
    policy = autocast_policy(dev, enabled=amp)
    optim = optim if optim is not None else OptimConfig()
    if not isinstance(optim, OptimConfig):
        raise TypeError(f"optim must be an OptimConfig, got {type(optim).__name__}")
    opt = optimizer or make_optimizer(model, optim.lr, optim.weight_decay, optim.betas, dev, optim.no_decay)
    scaler = torch.amp.GradScaler("cuda") if policy.use_grad_scaler else None
    run_model = torch.compile(model) if compile else model
    if progress is None:
        progress = not _profile.is_smoke()
    if eval_every is None:
        eval_every = max(1, steps // 10)

    history = History()
    start = 0
    if checkpoint_path is not None and resume and Path(checkpoint_path).exists():
        ck = load_checkpoint(checkpoint_path)
        _check_state_shapes(model, ck["model"], f"checkpoint {checkpoint_path}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if scaler is not None and "scaler" in ck:
            scaler.load_state_dict(ck["scaler"])
        _set_rng_state(ck["rng"])
        start = int(ck["step"])
        for k, v in ck["history"].items():
            setattr(history, k, v)

    def save(step: int) -> None:
        if checkpoint_path is None:
            return
        obj = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
               "rng": _rng_state(), "history": {k: v for k, v in history.to_dict().items()
                                                if k in ("step", "loss", "lr", "grad_norm", "eval_step", "eval")}}
        if scaler is not None:
            obj["scaler"] = scaler.state_dict()
        save_checkpoint(checkpoint_path, obj)

    if callable(data):
        batch_fn = data
        def next_batch(i: int) -> Any:
            return batch_fn(i)
    else:
        iterable = data
        iterator = iter(iterable)
        def next_batch(i: int) -> Any:
            nonlocal iterator
            try:
                return next(iterator)
            except StopIteration:
                iterator = iter(iterable)
                try:
                    return next(iterator)
                except StopIteration:
                    raise ValueError("the training data iterable is empty") from None
        for i in range(start * accum_steps):  # replay the stream to where the checkpoint was
            next_batch(i)

    def evaluate(step: int) -> None:
        if eval_fn is None:
            return
        t_eval = time.perf_counter()
        model.eval()
        with torch.no_grad(), policy.context():
            metrics = {k: float(v) for k, v in eval_fn(run_model, step).items()}
        model.train()
        history.eval_seconds += time.perf_counter() - t_eval
        history.eval_step.append(step)
        history.eval.append(metrics)

    end = steps if stop_at is None else min(steps, stop_at)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=end, initial=start, desc="train", dynamic_ncols=True)
    pending_loss: list[torch.Tensor] = []
    pending_gn: list[torch.Tensor] = []
    pending_steps: list[int] = []
    pending_lr: list[float] = []

    def flush() -> None:
        if pending_loss:
            history.loss.extend(torch.stack(pending_loss).float().tolist())
            history.grad_norm.extend(torch.stack(pending_gn).float().tolist())
            history.step.extend(pending_steps)
            history.lr.extend(pending_lr)
            pending_loss.clear(); pending_gn.clear(); pending_steps.clear(); pending_lr.clear()

    model.train()
    synchronize(dev)
    t0 = time.perf_counter()
    timed_steps = 0
    t_timing, eval_at_timing = t0, 0.0  # where the tokens/s clock starts (after timing_skip steps)
    step = start
    try:
        for step in range(start, end):
            cur_lr = optim.lr_at(step, steps)
            for g in opt.param_groups:
                g["lr"] = cur_lr
            total = torch.zeros((), device=dev)
            for micro in range(accum_steps):
                batch = to_device(next_batch(step * accum_steps + micro), dev)
                with policy.context():
                    loss = loss_fn(run_model, batch)
                if loss.dim() != 0:
                    raise ValueError(f"loss_fn must return a scalar tensor, got shape {tuple(loss.shape)}")
                scaled = loss / accum_steps
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                total += scaled.detach()
            if scaler is not None:
                scaler.unscale_(opt)
            if optim.grad_clip is not None:
                gn = torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
            else:
                gn = torch.zeros((), device=dev)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            timed_steps += 1
            if timed_steps == timing_skip:
                synchronize(dev)
                t_timing, eval_at_timing = time.perf_counter(), history.eval_seconds
            pending_loss.append(total); pending_gn.append(gn.detach())
            pending_steps.append(step + 1); pending_lr.append(cur_lr)
            done = step + 1
            if done % log_every == 0 or done == end:
                flush()
                if bar is not None:
                    bar.set_postfix(loss=f"{history.loss[-1]:.4f}", lr=f"{cur_lr:.2e}")
                if not math.isfinite(history.loss[-1]):
                    raise FloatingPointError(f"loss became {history.loss[-1]} at step {done}; lower the learning rate")
            if bar is not None:
                bar.update(1)
            if done % eval_every == 0 or done == end:
                evaluate(done)
            if checkpoint_every and done % checkpoint_every == 0 and done != end:
                save(done)
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                end = done
                if not history.eval_step or history.eval_step[-1] != done:
                    evaluate(done)  # a budget-stopped run still ends with an evaluation
                break
        step = end
    except KeyboardInterrupt:
        history.interrupted = True
        flush()
        step = history.step[-1] if history.step else start
    finally:
        if bar is not None:
            bar.close()
    flush()
    synchronize(dev)
    history.seconds = time.perf_counter() - t0
    history.steps_done = step
    counted = timed_steps - timing_skip if timed_steps > timing_skip else timed_steps
    if timed_steps <= timing_skip:  # too short to skip anything: time the whole run
        t_timing, eval_at_timing = t0, 0.0
    train_seconds = (t0 + history.seconds - t_timing) - (history.eval_seconds - eval_at_timing)
    if tokens_per_step and counted and train_seconds > 0:
        history.tokens_per_s = tokens_per_step * accum_steps * counted / train_seconds
        peak = peak_flops or peak_flops_for(dev)
        if flops_per_token and peak:
            history.mfu = flops_per_token * history.tokens_per_s / peak
    save(step)
    return history
