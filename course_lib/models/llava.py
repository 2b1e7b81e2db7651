"""Vision meets language (notebook 09), part 2: visual instruction tuning, LLaVA-style (Liu et al.,
2023, "Visual Instruction Tuning"). A frozen vision encoder's patch features go through a
trainable projector (a 2-layer MLP, as in LLaVA-1.5) into the token embedding space of a
pretrained GPT; the N projected patches are a prefix of "visual tokens" before the text, and only
the answer's tokens are learned (label -100 elsewhere).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..tokenizers import IGNORE
from ..validate import positive_int, strings, token_ids
from .captioner import PatchEncoder
from .lm import length_groups, masked_lm_loss


class Projector(nn.Module):
    """Patch features (B, N, d_vision) -> visual tokens (B, N, d_lm): Linear, GELU, Linear
    (LLaVA-1.5's projector; LLaVA-1 used a single linear map)."""

    def __init__(self, d_vision: int, d_lm: int):
        super().__init__()
        self.d_vision, self.d_lm = d_vision, d_lm
        self.fc1 = nn.Linear(d_vision, d_lm)
        self.fc2 = nn.Linear(d_lm, d_lm)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.dim() != 3 or feats.size(-1) != self.d_vision:
            raise ValueError(f"expected patch features (B, N, {self.d_vision}), received {tuple(feats.shape)}")
        return self.fc2(F.gelu(self.fc1(feats)))


def prefix_sequence(image_tokens: torch.Tensor, text_embeds: torch.Tensor, labels: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The LM's input: [image tokens; text embeddings] (B, N + T, d), and labels (B, N + T): -100 at
    the N image positions (nothing to predict there), then the text's labels."""
    if image_tokens.dim() != 3 or text_embeds.dim() != 3:
        raise ValueError(f"expected image_tokens (B, N, d) and text_embeds (B, T, d), received "
                         f"{tuple(image_tokens.shape)} and {tuple(text_embeds.shape)}")
    B, N, d = image_tokens.shape
    if text_embeds.shape[0] != B or text_embeds.shape[2] != d:
        raise ValueError(f"expected text_embeds ({B}, T, {d}), received {tuple(text_embeds.shape)}")
    if tuple(labels.shape) != tuple(text_embeds.shape[:2]):
        raise ValueError(f"expected labels {tuple(text_embeds.shape[:2])}, received {tuple(labels.shape)}")
    pad = torch.full((B, N), IGNORE, dtype=labels.dtype, device=labels.device)
    return torch.cat([image_tokens, text_embeds], dim=1), torch.cat([pad, labels], dim=1)


class VisualLM(nn.Module):
    """Vision encoder (frozen) -> :class:`Projector` -> prefix of a pretrained :class:`GPT`.

    ``forward(images, x)`` returns logits (B, N + T, V) for text ids ``x`` (B, T) after the N
    visual tokens. ``freeze(lm=True)`` trains the projector alone (LLaVA's stage 1);
    ``freeze(lm=False)`` trains the projector and the LM (stage 2). The encoder stays frozen."""

    def __init__(self, vision: PatchEncoder, lm, projector: Projector | None = None):
        super().__init__()
        self.vision, self.lm = vision, lm
        self.projector = projector or Projector(vision.d_model, lm.config.n_embd)
        self.n_image_tokens = vision.n_patches
        if self.n_image_tokens >= lm.config.block_size:
            raise ValueError(f"{self.n_image_tokens} image tokens leave no room in the LM's context "
                             f"block_size={lm.config.block_size}")
        self.freeze(lm=True)

    def freeze(self, lm: bool = True) -> None:
        for p in self.vision.parameters():
            p.requires_grad_(False)
        for p in self.lm.parameters():
            p.requires_grad_(not lm)
        for p in self.projector.parameters():
            p.requires_grad_(True)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        self.vision.eval()
        with torch.no_grad():
            feats = self.vision(images)
        return self.projector(feats)

    def lm_logits(self, embeds: torch.Tensor) -> torch.Tensor:
        """The GPT's forward pass from input embeddings (B, n, d) instead of token ids."""
        return self.lm(embeds=embeds)

    def forward(self, images: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        token_ids(x, self.lm.config.vocab_size, "x (text ids)", dim=2)
        img = self.image_tokens(images)
        if x.size(0) != img.size(0):
            raise ValueError(f"expected text ids (B={img.size(0)}, T), received {tuple(x.shape)}")
        return self.lm_logits(torch.cat([img, self.lm.wte(x)], dim=1))

    def loss(self, batch, prefix: Callable = prefix_sequence) -> torch.Tensor:
        """The answer tokens' cross-entropy of an ``(images, x, y)`` batch: visual tokens and text
        embeddings joined by ``prefix`` (:func:`prefix_sequence`, or a function with its signature),
        then :func:`course_lib.models.lm.masked_lm_loss`."""
        images, x, y = batch
        token_ids(x, self.lm.config.vocab_size, "x (text ids)", dim=2)
        embeds, labels = prefix(self.image_tokens(images), self.lm.wte(x), y)
        return masked_lm_loss(self.lm_logits(embeds), labels)

    @torch.no_grad()
    def answer(self, images: torch.Tensor, prompts: Sequence[str], tokenizer, max_new_tokens: int = 12,
               batch_size: int = 256) -> list[str]:
        """Greedy answers to ``prompts`` about ``images`` (one each), cut at the first newline."""
        prompts = strings(prompts, "prompts")
        positive_int(batch_size, "batch_size")
        if len(images) != len(prompts):
            raise ValueError(f"expected one prompt per image, received {len(images)} images and {len(prompts)} prompts")
        was = self.training
        self.eval()
        device = next(self.projector.parameters()).device
        encoded = [tokenizer.encode(p) for p in prompts]
        out: list[str] = [""] * len(prompts)
        for n, chunk in length_groups(encoded, batch_size):
            new = min(max_new_tokens, self.lm.config.block_size - self.n_image_tokens - n)
            img = self.image_tokens(images[chunk].to(device))
            ids = torch.tensor([encoded[i] for i in chunk], device=device)
            for _ in range(new):
                logits = self.lm_logits(torch.cat([img, self.lm.wte(ids)], dim=1))
                ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            for i, row in zip(chunk, ids[:, n:].cpu(), strict=True):
                out[i] = tokenizer.decode(row).split("\n", 1)[0]
        self.train(was)
        return out


def vlm_step_loss(prefix: Callable = prefix_sequence) -> Callable[[VisualLM, tuple], torch.Tensor]:
    """``loss_fn`` for :func:`course_lib.train.fit`: :meth:`VisualLM.loss` with ``prefix``
    (notebook 09 passes the student's ``prefix_sequence``)."""
    return lambda model, batch: model.loss(batch, prefix)
