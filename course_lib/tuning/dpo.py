"""Direct preference optimisation: (Rafailov et al., 2023, "Direct Preference Optimization: Your Language Model is
Secretly a Reward Model") trains the policy on the same pairs with no reward model and no
sampling: ``-log sigma(beta [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) -
log pi_ref(y_l|x))])`` (:func:`dpo_loss`).

"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..validate import tensor
from .preferences import side
from .sequences import _need_same_shape, sequence_logprob


def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """DPO's loss on sequence log-probabilities (each (B,)):
    ``-mean log sigma(beta [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])``.
    It is the Bradley-Terry loss with the implicit reward r(x, y) = beta log(pi(y|x) / pi_ref(y|x));
    when pi = pi_ref it equals log 2."""
    tensor(pi_chosen, "pi_chosen (B,)", 1)
    _need_same_shape("dpo_loss", ("pi_chosen", pi_chosen), ("pi_rejected", pi_rejected),
                     ("ref_chosen", ref_chosen), ("ref_rejected", ref_rejected))
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    margin = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin.float()).mean()


@torch.no_grad()
def add_reference_logprobs(ref, tensors: dict[str, torch.Tensor], batch_size: int = 256) -> dict[str, torch.Tensor]:
    """``tensors`` plus ``ref_chosen`` and ``ref_rejected`` (N,): log pi_ref(y|x) of every pair,
    computed once (the reference is frozen)."""
    ref.eval()
    dev = next(ref.parameters()).device
    out = {"ref_chosen": [], "ref_rejected": []}
    n = len(tensors["chosen_ids"])
    for s in range(0, n, batch_size):
        b = {k: v[s: s + batch_size].to(dev) for k, v in tensors.items()}
        for name in ("chosen", "rejected"):
            out[f"ref_{name}"].append(sequence_logprob(ref, side(b, name)).cpu())
    return dict(tensors, **{k: torch.cat(v) for k, v in out.items()})


def dpo_step_loss(beta: float, loss: Callable[..., torch.Tensor] = dpo_loss
                  ) -> Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]:
    """``loss_fn`` for :func:`course_lib.train.fit` on batches of :func:`add_reference_logprobs`:
    ``loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)`` (default :func:`dpo_loss`;
    notebook 08 passes the student's)."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")

    def loss_fn(policy, batch):
        return loss(sequence_logprob(policy, side(batch, "chosen")), sequence_logprob(policy, side(batch, "rejected")),
                    batch["ref_chosen"], batch["ref_rejected"], beta)

    return loss_fn
