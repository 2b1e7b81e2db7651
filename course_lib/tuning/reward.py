"""InstructGPT's step 2b: the reward model r_theta(x, y) -- the SFT GPT with its LM head replaced by a
scalar head read at the response's last token -- trained with the Bradley-Terry loss of
Christiano et al. (2017) and InstructGPT: ``loss(theta) = -E log sigma(r_theta(x, y_w) - r_theta(x, y_l))``.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..validate import tensor
from .preferences import side
from .sequences import _check_seqs, _need_same_shape, disable_dropout


class RewardModel(nn.Module):
    """r_theta(x, y): a GPT backbone and a scalar head read at the last token of the response.

    Right padding is harmless: the backbone is causal, so position ``length - 1`` never sees the
    padding after it. ``scale`` and ``shift`` (buffers, set by :meth:`normalize_`) standardise the
    output; InstructGPT likewise shifts its reward model so that demonstrations score 0 on
    average, because the Bradley-Terry loss only fixes reward *differences*.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.n_embd, 1)
        nn.init.normal_(self.head.weight, 0.0, 0.02)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    @classmethod
    def from_policy(cls, policy: nn.Module) -> RewardModel:
        """A reward model whose backbone is a copy of ``policy`` (the LM head is left unused)."""
        return cls(disable_dropout(copy.deepcopy(policy)))

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Rewards (B,) of right-padded sequences ``ids`` (B, T) of ``lengths`` (B,) tokens."""
        _check_seqs(ids, lengths)
        h = self.backbone.hidden_states(ids)
        last = h[torch.arange(ids.size(0), device=ids.device), lengths - 1]
        return (self.head(last).squeeze(-1) - self.shift) / self.scale

    @torch.no_grad()
    def normalize_(self, ids: torch.Tensor, lengths: torch.Tensor) -> RewardModel:
        """Make the rewards of these sequences mean 0, standard deviation 1 (in place)."""
        self.shift.zero_()
        self.scale.fill_(1.0)
        r = self(ids, lengths)
        self.shift.fill_(float(r.mean()))
        self.scale.fill_(max(float(r.std()), 1e-6))
        return self


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """-mean log sigma(r_theta(x, y_w) - r_theta(x, y_l)) over pairs (B,): the Bradley-Terry model
    says P(y_w preferred to y_l) = sigma(r_w - r_l); this is its negative log-likelihood."""
    tensor(r_chosen, "r_chosen (B,)", 1)
    _need_same_shape("bradley_terry_loss", ("r_chosen", r_chosen), ("r_rejected", r_rejected))
    return -F.logsigmoid(r_chosen.float() - r_rejected.float()).mean()


def reward_pair(rm: RewardModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected), both (B,), in one forward pass over 2B sequences."""
    c, r = side(batch, "chosen"), side(batch, "rejected")
    T = max(c["ids"].size(1), r["ids"].size(1))
    ids = torch.cat([F.pad(c["ids"], (0, T - c["ids"].size(1))), F.pad(r["ids"], (0, T - r["ids"].size(1)))])
    rewards = rm(ids, torch.cat([c["lengths"], r["lengths"]]))
    return rewards[: len(c["lengths"])], rewards[len(c["lengths"]):]


def rm_step_loss(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = bradley_terry_loss
                 ) -> Callable[[RewardModel, dict[str, torch.Tensor]], torch.Tensor]:
    """``loss_fn`` for :func:`course_lib.train.fit` on preference batches: ``loss(r_chosen,
    r_rejected)`` (default :func:`bradley_terry_loss`; notebook 08 passes the student's)."""

    def loss_fn(rm: RewardModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss(*reward_pair(rm, batch))

    return loss_fn


@torch.no_grad()
def pairwise_accuracy(rm: RewardModel, tensors: dict[str, torch.Tensor], batch_size: int = 256) -> float:
    """Fraction of pairs where r_theta(x, y_w) > r_theta(x, y_l)."""
    was = rm.training
    rm.eval()
    n = len(tensors["chosen_ids"])
    dev = next(rm.parameters()).device
    right = 0
    for s in range(0, n, batch_size):
        b = {k: v[s: s + batch_size].to(dev) for k, v in tensors.items()}
        rc, rr = reward_pair(rm, b)
        right += int((rc > rr).sum())
    rm.train(was)
    return right / n
