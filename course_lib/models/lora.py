"""LoRA: low-rank adaptation (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language
Models").

Fine-tuning changes a pretrained weight W (d_out x d_in) by some delta. LoRA freezes W and
learns the delta as a product of two thin matrices, delta W = (alpha / r) B A with A (r x d_in)
and B (d_out x r), r << d. The layer computes

    h = W x + (alpha / r) B (A x)

B starts at zero, so the adapted model starts exactly equal to the pretrained one; A starts
random (Kaiming-uniform, as ``nn.Linear``) so gradients reach B at once. Only r (d_in + d_out)
numbers per layer train, and after training B A can be folded into W (:func:`merge_lora`), so
inference costs nothing extra.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``r`` update scaled by ``alpha / r``.

    It offers ``nn.Linear``'s interface (``in_features``, ``out_features``, ``weight``, ``bias``),
    so code that reads those keeps working; code that wants the adapted function should call the
    module (as :class:`course_lib.models.transformer.MultiHeadAttention` does for any ``qkv`` that
    is not a plain ``nn.Linear``), which also applies the adapter's dropout."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"rank r must be a positive integer, got {r!r}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha = r, float(alpha)
        self.scale = self.alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:  # the weight the layer applies, for code that reads .weight
        return self.base.weight + self.delta_weight()

    @property
    def bias(self) -> torch.Tensor | None:  # LoRA adapts the weight only; the bias is the base layer's
        return self.base.bias

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((self.dropout(x) @ self.lora_A.T) @ self.lora_B.T)

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with W + (alpha / r) B A: the same function, no extra cost. Its
        parameters train exactly when the base layer's did (frozen after :func:`add_lora`)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None,
                        device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.delta_weight())
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        out.weight.requires_grad_(self.base.weight.requires_grad)
        if self.base.bias is not None:
            out.bias.requires_grad_(self.base.bias.requires_grad)
        return out

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}"


def add_lora(model: nn.Module, r: int = 8, alpha: float = 16.0, targets: tuple[str, ...] = ("qkv", "proj"),
             dropout: float = 0.0) -> list[str]:
    """Freeze every parameter of ``model`` and wrap each ``nn.Linear`` whose attribute name is in
    ``targets`` (e.g. ``"qkv"``, ``"proj"``, ``"fc"``) in a :class:`LoRALinear`. Returns the
    wrapped modules' names; only their A and B matrices train afterwards."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, r=r, alpha=alpha, dropout=dropout))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    if not wrapped:
        raise ValueError(f"no nn.Linear named one of {targets} in {type(model).__name__}")
    return wrapped


def merge_lora(model: nn.Module) -> int:
    """Replace every :class:`LoRALinear` in ``model`` by its merged ``nn.Linear`` (as frozen as the
    base layer it wrapped, like the rest of the model); returns how many."""
    n = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())
                n += 1
    return n
