"""Memorisation by repetition (notebook 06): keep training a language model on one short passage,
as a web crawl may hold a popular text many times over, so that
:func:`course_lib.models.lm.verbatim_lengths` can show the model reciting it. The positive control
of the notebook's memorisation probe: a probe that finds nothing on the pre-training text only
means something if it finds the passage here (Carlini et al., 2023, "Quantifying Memorization
Across Neural Language Models", measure how memorisation grows with such duplication).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..tasks.text import lm_loss, random_windows
from ..train import History, OptimConfig, fit
from ..validate import InputTypeError, non_negative_int, number, positive_int, token_ids


def times_seen(steps: int, batch_size: int, block_size: int, n_tokens: int) -> float:
    """How many times, on average, training of ``steps`` steps on ``batch_size`` random windows of
    ``block_size`` tokens shows each of ``n_tokens`` tokens."""
    for value, what in ((batch_size, "batch_size"), (block_size, "block_size"), (n_tokens, "n_tokens")):
        positive_int(value, what)
    return non_negative_int(steps, "steps") * batch_size * block_size / n_tokens


def repeat_passage(model: nn.Module, passage: torch.Tensor, *, steps: int, batch_size: int, lr: float = 1e-3,
                   seed: int = 0, eval_fn: Callable[[nn.Module, int], dict[str, float]] | None = None,
                   eval_every: int | None = None, device: torch.device | str | None = None) -> History:
    """Train ``model`` for ``steps`` steps on random windows of the 1-D token sequence ``passage``
    alone (next-token loss, windows of the model's ``block_size``, drawn from ``seed``; AdamW at a
    constant ``lr`` without weight decay), with ``fit``'s ``eval_fn`` / ``eval_every``."""
    block = getattr(getattr(model, "config", None), "block_size", None)
    if not isinstance(model, nn.Module) or not isinstance(block, int):
        raise InputTypeError(f"model must be a language model (an nn.Module with config.block_size), "
                             f"got {type(model).__name__}")
    token_ids(passage, getattr(model.config, "vocab_size", None), "passage", dim=1)
    if len(passage) < block + 1:
        raise ValueError(f"passage holds {len(passage)} tokens; windows of block_size={block} need at least "
                         f"{block + 1}")
    positive_int(steps, "steps")
    positive_int(batch_size, "batch_size")
    number(lr, "lr", 0.0, low_open=True)
    non_negative_int(seed, "seed")
    passage = passage.cpu()

    def batches(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return random_windows(passage, batch_size, block, torch.Generator().manual_seed(seed * 1_000_003 + i))

    return fit(model, lm_loss, batches, steps=steps, optim=OptimConfig(lr=lr, min_lr_ratio=1.0, weight_decay=0.0),
               eval_fn=eval_fn, eval_every=eval_every, device=device, progress=False)
