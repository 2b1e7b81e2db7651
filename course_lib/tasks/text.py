"""Text corpora as token tensors, and the batching every language-model notebook shares.

``CharCorpus.load()`` reads Tiny Shakespeare through the data registry, builds a
:class:`~course_lib.tokenizers.CharTokenizer` and splits 90% / 10% (train / val), as nanoGPT
does. ``corpus.batches("train", B, T)`` is a deterministic batch function ``i -> (x, y)``
(y is x shifted by one token: next-token prediction), ready for :func:`course_lib.train.fit`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import load_text
from ..tokenizers import CharTokenizer
from ..validate import positive_int, probability, shape_of, token_ids


def random_windows(ids: torch.Tensor, batch_size: int, block_size: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``block_size`` tokens and their next-token targets."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
        raise ValueError(f"ids must be a 1-D tensor of token ids, got shape {shape_of(ids)}")
    token_ids(ids, None, "ids")
    positive_int(batch_size, "batch_size")
    positive_int(block_size, "block_size")
    if len(ids) < block_size + 1:
        raise ValueError(f"need at least block_size + 1 = {block_size + 1} tokens, got {len(ids)}")
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size)
    x = ids[starts[:, None] + offsets]
    y = ids[starts[:, None] + offsets + 1]
    return x, y


@dataclass
class CharCorpus:
    text: str
    tokenizer: CharTokenizer
    train: torch.Tensor
    val: torch.Tensor

    @classmethod
    def load(cls, name: str = "tiny_shakespeare", val_fraction: float = 0.1) -> CharCorpus:
        probability(val_fraction, "val_fraction", open_low=True, open_high=True)
        text = load_text(name)
        tok = CharTokenizer.from_text(text)
        ids = torch.tensor(tok.encode(text), dtype=torch.long)
        n = int(len(ids) * (1 - val_fraction))
        return cls(text, tok, ids[:n], ids[n:])

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val

    def batches(self, split: str, batch_size: int, block_size: int, seed: int = 0
                ) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
        """A deterministic batch function: batch ``i`` depends only on (seed, i)."""
        ids = self.split(split)

        def get(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            g = torch.Generator().manual_seed(seed * 1_000_003 + i)
            return random_windows(ids, batch_size, block_size, g)

        return get


def lm_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy (nats/token) of a model returning logits (B, T, V)."""
    x, y = batch
    out = model(x)
    logits = out[0] if isinstance(out, tuple) else out
    if logits.dim() != 3 or logits.shape[:2] != y.shape:
        raise ValueError(f"model must return logits of shape (B, T, V) = ({y.shape[0]}, {y.shape[1]}, V), "
                         f"got {tuple(logits.shape)}")
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, corpus: CharCorpus, batch_size: int, block_size: int,
                  iters: int = 20, splits: tuple[str, ...] = ("train", "val"), seed: int = 12345
                  ) -> dict[str, float]:
    """Average loss over ``iters`` fixed random batches per split: ``{"train_loss", "val_loss"}``."""
    device = next(model.parameters()).device
    out = {}
    for split in splits:
        get = corpus.batches(split, batch_size, block_size, seed=seed)
        losses = [lm_loss(model, tuple(t.to(device) for t in get(i))).item() for i in range(iters)]
        out[f"{split}_loss"] = sum(losses) / len(losses)
    return out
