"""``fit``: the one training loop every notebook uses.

The caller supplies the model, a loss function ``loss_fn(model, batch) -> scalar loss`` and the
data; ``fit`` supplies the rest: AdamW (fused on CUDA; weight decay only on matrices), linear
warmup + cosine learning rate, gradient accumulation and clipping, autocast per the device
policy (``course_lib.device.autocast_policy``), optional ``torch.compile`` (falling back to eager
mode, with one warning, where compilation fails), periodic evaluation, a tqdm progress bar (quiet
under the smoke profile), a history for plots, tokens/s and, on CUDA with ``flops_per_token``,
model FLOPs utilisation (MFU), and atomic checkpoints (:mod:`course_lib.checkpoint`) that resume
exactly in eager mode: a run stopped at step k and resumed ends with the same parameters as a run
that was never interrupted (same seed, deterministic data). A compiled run resumes to the same
state, but its kernels may round differently from the first run's, so it is equal up to
floating-point noise, not bit for bit. A checkpoint is never moved backwards: one already past
this call's end is refused.

Data is either a callable ``data(i) -> batch`` (``i`` counts micro-batches from 0, so the
batch sequence is a pure function of the step and resuming is exact), or an iterable that is
cycled (on resume its first ``k * accum_steps`` batches are skipped). The loop's pieces
(:func:`batch_source`, :func:`accumulate_gradients`, :func:`optimizer_step`, :func:`progress_bar`,
:class:`StepLog`, and :class:`course_lib.measure.RunClock`) are reused by other loops, e.g. PPO's.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from . import profile as _profile
from .checkpoint import resume_training_state, run_settings, save_training_state
from .device import CompiledOrEager, autocast_policy, get_device
from .measure import RunClock, time_apart


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

    def make_optimizer(self, model: nn.Module, device: torch.device | None = None) -> torch.optim.AdamW:
        """:func:`make_optimizer` with this configuration's lr, weight_decay, betas and no_decay."""
        return make_optimizer(model, self.lr, self.weight_decay, self.betas, device, self.no_decay)


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
    checkpoint_seconds: float = 0.0  # and periodic checkpoint writes (excluded from tokens/s)
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

    def checkpointed(self) -> dict:
        """The per-step and per-evaluation lists, which a checkpoint carries into a resumed run."""
        keep = ("step", "loss", "lr", "grad_norm", "eval_step", "eval")
        return {k: v for k, v in self.to_dict().items() if k in keep}


# --- the pieces of a training loop -----------------------------------------------------------

def batch_source(data: Callable[[int], Any] | Iterable[Any], skip: int = 0) -> Callable[[int], Any]:
    """``next_batch(i)`` for micro-batch ``i``: a callable ``data(i)`` as it is; an iterable is
    cycled, its first ``skip`` batches drawn and dropped (replaying the stream to a checkpoint)."""
    if callable(data):
        return data

    def cycle(iterator: Iterator[Any]) -> Iterator[Any]:
        while True:
            empty = True
            for batch in iterator:
                empty = False
                yield batch
            if empty:
                raise ValueError("the training data iterable is empty")
            iterator = iter(data)

    batches = cycle(iter(data))
    for _ in range(skip):
        next(batches)
    return lambda i: next(batches)


def accumulate_gradients(model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                         next_batch: Callable[[int], Any], first: int, accum_steps: int, device: torch.device,
                         policy: Any, scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """Backpropagate micro-batches ``first .. first + accum_steps - 1`` (under the autocast
    ``policy``), each loss divided by ``accum_steps``; returns their mean loss, detached."""
    total = torch.zeros((), device=device)
    for i in range(first, first + accum_steps):
        batch = to_device(next_batch(i), device)
        with policy.context():
            loss = loss_fn(model, batch)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar tensor, got shape {tuple(loss.shape)}")
        scaled = loss / accum_steps
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total += scaled.detach()
    return total


def optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None,
                   grad_clip: float | None = None) -> torch.Tensor:
    """Unscale (with a grad scaler), clip the gradients to norm ``grad_clip`` (None: no clipping),
    step and zero the gradients. Returns the gradient norm before clipping (0 when not clipping)."""
    if scaler is not None:
        scaler.unscale_(opt)
    if grad_clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    else:
        norm = torch.zeros((), device=next(model.parameters()).device)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return norm.detach()


def progress_bar(total: int, *, desc: str, initial: int = 0, enabled: bool | None = None) -> Any:
    """A tqdm bar; a disabled one (same methods, prints nothing) when ``enabled`` is false
    (default: quiet under the smoke profile)."""
    from tqdm.auto import tqdm

    enabled = not _profile.is_smoke() if enabled is None else enabled
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, disable=not enabled)


class StepLog:
    """Per-step (step, loss, gradient norm, lr), the tensors left on the device until :meth:`flush`
    appends them to a :class:`History`: one device sync per flush, not one per step."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []

    def add(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float) -> None:
        self.pending.append((step, loss, grad_norm, lr))

    def flush(self, history: History) -> None:
        if self.pending:
            steps, losses, norms, lrs = zip(*self.pending, strict=True)
            history.loss.extend(torch.stack(losses).float().tolist())
            history.grad_norm.extend(torch.stack(norms).float().tolist())
            history.step.extend(steps)
            history.lr.extend(lrs)
            self.pending.clear()


def evaluate_into(history: History, eval_fn: Callable[[nn.Module, int], dict[str, float]] | None,
                  model: nn.Module, run_model: nn.Module, policy: Any, step: int) -> None:
    """Run ``eval_fn(run_model, step)`` in eval mode under no_grad and autocast; record its metrics
    and its time (``history.eval_seconds``, left out of tokens/s; the device is synchronised before
    the clock starts, so queued training kernels are not counted as evaluation)."""
    if eval_fn is None:
        return

    def add(seconds: float) -> None:
        history.eval_seconds += seconds

    with time_apart(_device_of(model), add):
        model.eval()
        with torch.no_grad(), policy.context():
            metrics = {k: float(v) for k, v in eval_fn(run_model, step).items()}
        model.train()
    history.eval_step.append(step)
    history.eval.append(metrics)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# --- the loop ----------------------------------------------------------------------------------

def _checked(steps: int, accum_steps: int, timing_skip: int, optim: OptimConfig | None) -> OptimConfig:
    if steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
    if timing_skip < 0:
        raise ValueError(f"timing_skip must be >= 0 steps, got {timing_skip}")
    optim = optim if optim is not None else OptimConfig()
    if not isinstance(optim, OptimConfig):
        raise TypeError(f"optim must be an OptimConfig, got {type(optim).__name__}")
    return optim


def fit(model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor], data: Callable[[int], Any] | Iterable[Any],
        *, steps: int, optim: OptimConfig | None = None, accum_steps: int = 1,
        eval_fn: Callable[[nn.Module, int], dict[str, float]] | None = None, eval_every: int | None = None,
        log_every: int = 10, device: torch.device | str | None = None, amp: bool = True, compile: bool = False,
        progress: bool | None = None, checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int | None = None, resume: bool | str = True, stop_at: int | None = None,
        max_seconds: float | None = None, tokens_per_step: int | None = None, flops_per_token: float | None = None,
        peak_flops: float | None = None, optimizer: torch.optim.Optimizer | None = None,
        timing_skip: int = 0) -> History:
    """Train ``model`` for ``steps`` optimizer steps and return its :class:`History`.

    ``loss_fn(model, batch)`` returns the scalar loss of one micro-batch (e.g. next-token
    cross-entropy); ``optim`` (an :class:`OptimConfig`) holds the optimiser's settings.
    ``eval_fn(model, step)`` returns metrics, every ``eval_every`` steps and at the end. ``stop_at``
    ends the run early at that step, as if interrupted (the schedule still spans ``steps``);
    ``max_seconds`` ends it after a wall-clock budget. With ``checkpoint_path`` a checkpoint is
    written every ``checkpoint_every`` steps and at the end, and an existing one is resumed from
    when ``resume`` is true. A checkpoint records the run's settings (the model's ``config``, ``optim``,
    ``steps``, ``accum_steps``, the optimizer's class) and its history; resuming it with other
    settings is a ValueError naming each difference, unless ``resume="changed-settings"``: then the
    run continues with the new settings and warns what changed. ``tokens_per_step`` (tokens in one
    micro-batch) gives tokens/s, with
    ``flops_per_token`` MFU; ``timing_skip`` leaves the first steps of this call out of both
    (compilation and allocator warm-up), so a benchmark reports the steady state; evaluation and
    periodic checkpoint writes are never counted as training time. ``compile=True`` runs the
    steps through ``torch.compile``; where compilation fails (no compiler or Triton, an
    unsupported platform) the step is redone in eager mode and the run continues there, with one
    warning. A checkpoint already past this call's end (``stop_at`` or ``steps``) is a ValueError,
    before anything is loaded: a run never rewrites a checkpoint as an earlier step.
    """
    optim = _checked(steps, accum_steps, timing_skip, optim)
    if resume not in (True, False, "changed-settings"):
        raise ValueError(f"resume must be True, False or 'changed-settings', got {resume!r}")
    dev = torch.device(device) if device is not None else get_device()
    model.to(dev)
    policy = autocast_policy(dev, enabled=amp)
    opt = optimizer or optim.make_optimizer(model, dev)
    scaler = torch.amp.GradScaler("cuda") if policy.use_grad_scaler else None
    eval_every = max(1, steps // 10) if eval_every is None else eval_every
    end = steps if stop_at is None else min(steps, stop_at)
    settings = run_settings(model, optim=optim, steps=steps, accum_steps=accum_steps, optimizer=type(opt).__name__)
    start, saved = resume_training_state(checkpoint_path if resume else None, model, opt, scaler, until=end,
                                         settings=settings, allow_changes=resume == "changed-settings",
                                         opt_in="resume='changed-settings'")
    runner = CompiledOrEager(model, compile)
    try:
        history = History(**saved)
    except TypeError as e:
        raise ValueError(f"checkpoint {checkpoint_path} holds a history fit cannot read ({e}); delete it to train "
                         f"from scratch, or pass resume=False (or another checkpoint_path)") from e
    next_batch = batch_source(data, skip=start * accum_steps)
    evaluate = lambda step: evaluate_into(history, eval_fn, model, runner.model, policy, step)

    def save(step: int) -> None:
        if checkpoint_path is not None:
            log.flush(history)  # the history up to this step goes into the checkpoint
            save_training_state(checkpoint_path, step, model, opt, scaler, history.checkpointed(), settings)

    def save_periodic(step: int) -> None:  # timed apart from training
        with time_apart(dev, lambda s: setattr(history, "checkpoint_seconds", history.checkpoint_seconds + s)):
            save(step)

    bar = progress_bar(end, initial=start, desc="train", enabled=progress)
    log = StepLog()
    model.train()
    clock = RunClock(dev, skip=timing_skip, dtype=policy.dtype)
    step = start
    try:
        for step in range(start, end):
            cur_lr = optim.lr_at(step, steps)
            for g in opt.param_groups:
                g["lr"] = cur_lr
            fetched: dict[int, Any] = {}  # this step's micro-batches, kept so that the step can be redone

            def batch(i: int) -> Any:
                if i not in fetched:
                    fetched[i] = next_batch(i)
                return fetched[i]

            try:
                loss = accumulate_gradients(runner.model, loss_fn, batch, step * accum_steps, accum_steps, dev,
                                            policy, scaler)
            except Exception as e:
                if not runner.falls_back(e):
                    raise
                opt.zero_grad(set_to_none=True)
                loss = accumulate_gradients(model, loss_fn, batch, step * accum_steps, accum_steps, dev, policy,
                                            scaler)
            grad_norm = optimizer_step(model, opt, scaler, optim.grad_clip)
            clock.step_done(history.eval_seconds + history.checkpoint_seconds)
            done = step + 1
            log.add(done, loss, grad_norm, cur_lr)
            if done % log_every == 0 or done == end:
                log.flush(history)
                bar.set_postfix(loss=f"{history.loss[-1]:.4f}", lr=f"{cur_lr:.2e}")
                if not math.isfinite(history.loss[-1]):
                    raise FloatingPointError(f"loss became {history.loss[-1]} at step {done}; lower the learning rate")
            bar.update(1)
            if done % eval_every == 0 or done == end:
                evaluate(done)
            if checkpoint_every and done % checkpoint_every == 0 and done != end:
                save_periodic(done)
            if max_seconds is not None and clock.elapsed() > max_seconds:
                end = done
                if not history.eval_step or history.eval_step[-1] != done:
                    evaluate(done)  # a budget-stopped run still ends with an evaluation
                break
        step = end
    except KeyboardInterrupt:
        history.interrupted = True
        log.flush(history)
        step = history.step[-1] if history.step else start
    finally:
        bar.close()
    log.flush(history)
    history.steps_done = step
    clock.finish(history, tokens_per_step * accum_steps if tokens_per_step else None, flops_per_token, peak_flops)
    if step != start:  # nothing trained (a finished run resumed at its end): the checkpoint is already this state
        save(step)
    return history
