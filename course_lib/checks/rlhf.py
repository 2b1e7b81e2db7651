"""Checkers for notebook 08 (RLHF): the Bradley-Terry loss of the reward model, the per-token
KL-penalised rewards, PPO's clipped surrogate loss, and the DPO loss."""
from __future__ import annotations

import torch

from ..tuning import dpo, ppo, reward
from ._core import checker, expect, expect_close, expect_grads, expect_tensor


def _same(a, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return (isinstance(a, torch.Tensor) and tuple(a.shape) == tuple(b.shape)
            and torch.allclose(a.detach().double(), b.detach().double(), atol=atol))


def _loss(out, what: str) -> torch.Tensor:
    return expect_tensor(out, what, shape=(), floating=True, device="cpu")


@checker("bradley_terry_loss", hint="P(y_w preferred) = sigmoid(r_w - r_l); the loss is its negative log, "
         "-F.logsigmoid(r_chosen - r_rejected), averaged over the pairs.")
def bradley_terry_loss(student) -> str:

    g = torch.Generator().manual_seed(80)
    for B in (5, 1, 12):
        rc, rr = torch.randn(B, generator=g) * 2, torch.randn(B, generator=g) * 2
        out = _loss(student(rc, rr), f"the loss of {B} pairs")
        expected = reward.bradley_terry_loss(rc, rr)
        expect(not _same(out, reward.bradley_terry_loss(rr, rc)),
               "your loss rewards the *rejected* response: the chosen reward comes first, r_w - r_l")
        if B > 1:
            expect(not _same(out, expected * B), "your loss sums over the pairs; take the mean")
        expect_close(out, expected, f"the loss of {B} pairs", atol=1e-5,
                     hint="use the log of the sigmoid (F.logsigmoid is the stable way), not the sigmoid itself")
    # equal rewards: the model cannot tell the pair apart, loss log 2
    out = student(torch.zeros(3), torch.zeros(3))
    expect_close(out, torch.tensor(0.6931471805599453), "the loss for equal rewards", atol=1e-5)
    rc, rr = torch.tensor([-60.0, 30.0, -12.0, 5.0]), torch.tensor([60.0, -30.0, 14.0, 5.0])
    big = student(rc, rr)
    expect(isinstance(big, torch.Tensor) and bool(torch.isfinite(big).all()),
           "the loss overflows for a margin of -120 (a confidently wrong pair); use F.logsigmoid instead of "
           "torch.log(torch.sigmoid(...))")
    expect_close(big, reward.bradley_terry_loss(rc, rr), "the loss with margins -120, 60, -26, 0", atol=1e-4,
                 hint="a confidently wrong pair must cost its full margin: log(sigmoid(m) + eps) stops at -log(eps), "
                      "and clamping the margin caps the loss")
    leaves = {"r_chosen": rc.clone().requires_grad_(), "r_rejected": rr.clone().requires_grad_()}
    expect_grads(student(*leaves.values()), leaves, reward.bradley_terry_loss, "the loss (with large margins)",
                 hint="a confidently wrong pair must still get a gradient of about 1 / B: an eps inside the log or "
                      "a clamp on the margin makes it 0")
    return "the reward model learns which response a labeler prefers"


def _kl_case(seed: int):
    g = torch.Generator().manual_seed(seed)
    B, T = 3, 7
    logp = -torch.rand(B, T, generator=g) * 3
    ref_logp = -torch.rand(B, T, generator=g) * 3
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 2:5] = True  # response tokens end before the padding
    mask[1, 4:7] = True  # ... or at the last column
    mask[2, 1:2] = True  # a one-token response
    scores = torch.randn(B, generator=g)
    return scores, logp, ref_logp, mask


@checker("kl_penalty_rewards", hint="r_t = -beta * (logp - ref_logp) on response tokens only (multiply by the "
         "mask); then add the reward model's score at each row's LAST response token, not at every token.")
def kl_penalty_rewards(student) -> str:

    for seed, beta in ((81, 0.1), (82, 0.5)):
        scores, logp, ref_logp, mask = _kl_case(seed)
        out = student(scores, logp, ref_logp, mask, beta)
        expected = ppo.kl_penalty_rewards(scores, logp, ref_logp, mask, beta)
        expect_tensor(out, "the per-token rewards", shape=tuple(expected.shape), dtype=logp.dtype, device=logp.device)
        m = mask.float()
        every = -beta * (logp - ref_logp) * m + scores[:, None] * m
        expect(not _same(out, every), "the score is added at every response token; it belongs at the last one only")
        first = ppo.kl_penalty_rewards(scores, logp, ref_logp, mask, beta) - _at_last(scores, mask) \
            + _at_first(scores, mask)
        expect(not _same(out, first), "the score is added at the first response token; it belongs at the last one")
        flipped = ppo.kl_penalty_rewards(scores, ref_logp, logp, mask, beta)
        expect(not _same(out, flipped), "the KL penalty has the wrong sign: it is -beta (log pi - log pi_ref)")
        unmasked = expected + (-beta * (logp - ref_logp)) * (1 - m)
        expect(not _same(out, unmasked), "prompt and padding positions must get reward 0: multiply by the mask")
        expect_close(out, expected, f"the per-token rewards (beta={beta})", atol=1e-5,
                     hint="the score goes at the last True column of each mask row")
    scores, logp, _, mask = _kl_case(83)
    out = student(scores, logp, logp.clone(), mask, 0.3)
    expect(isinstance(out, torch.Tensor) and torch.allclose((out * mask).sum(-1), scores, atol=1e-5),
           "when policy == reference the KL is 0 and each row's rewards should sum to its score")
    return "reward minus beta times the per-token log-ratio, as in InstructGPT"


def _at_last(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    last = mask.size(1) - 1 - torch.flip(mask.long(), [1]).argmax(-1)
    return torch.zeros(mask.shape).index_put((torch.arange(len(scores)), last), scores)


def _at_first(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.zeros(mask.shape).index_put((torch.arange(len(scores)), mask.long().argmax(-1)), scores)


@checker("ppo_clip_loss", hint="ratio = exp(logp - old_logp); surrogate = min(ratio * A, clamp(ratio, 1 - clip, "
         "1 + clip) * A); loss = -(surrogate * mask).sum() / mask.sum().")
def ppo_clip_loss(student) -> str:

    g = torch.Generator().manual_seed(84)
    B, T = 4, 6
    for clip, offset in ((0.2, 0.0), (0.1, 0.0), (0.2, -110.0)):
        old = -torch.rand(B, T, generator=g) * 3 + offset  # offset: log-probs of long answers, exp() underflows
        logp = old + torch.randn(B, T, generator=g) * 0.4  # ratios well outside [1 - clip, 1 + clip] too
        adv = torch.randn(B, T, generator=g)
        mask = torch.rand(B, T, generator=g) > 0.3
        mask[:, 0] = True
        what = f"the PPO loss (clip={clip}{', log-probs near -110' if offset else ''})"
        out = _loss(student(logp, old, adv, mask, clip), what)
        expected = ppo.ppo_clip_loss(logp, old, adv, mask, clip)
        m = mask.float()
        ratio = torch.exp(logp - old)
        unclipped = -(ratio * adv * m).sum() / m.sum()
        expect(not _same(out, unclipped), "no clipping: take the min of ratio * A and clamp(ratio) * A")
        expect(not _same(out, -unclipped), "no clipping, and the sign: minimise the NEGATIVE surrogate")
        clipped = torch.clamp(ratio, 1 - clip, 1 + clip)
        as_max = -(torch.maximum(ratio * adv, clipped * adv) * m).sum() / m.sum()
        expect(not _same(out, as_max), "use the min of the two terms (the pessimistic bound), not the max")
        expect(not _same(out, -expected), "the sign: the loss is the NEGATIVE clipped surrogate (we minimise it)")
        all_pos = ppo.ppo_clip_loss(logp, old, adv, torch.ones_like(mask), clip)
        expect(not _same(out, all_pos), "padding and prompt positions count in your mean; average over the mask")
        expect_close(out, expected, what, atol=1e-5,
                     hint="compute the ratio as exp(logp - old_logp): exp(logp) / exp(old_logp) is 0 / 0 for "
                          "long answers" if offset else
                          "the surrogate is min(ratio * A, clamp(ratio, 1 - clip, 1 + clip) * A), averaged over "
                          "the mask")
        leaves = {"logp": logp.clone().requires_grad_()}
        expect_grads(student(leaves["logp"], old, adv, mask, clip), leaves,
                     lambda lp: ppo.ppo_clip_loss(lp, old, adv, mask, clip), what,
                     hint="the gradient flows through the ratio into logp: do not detach the ratio or logp")
    # at the start of an update pi == pi_old: ratio 1, the loss is -mean advantage
    out = student(old, old.clone(), adv, mask, 0.2)
    expect_close(out, -(adv * mask).sum() / mask.sum(), "the loss when logp == old_logp", atol=1e-5)
    return "the clipped surrogate of Schulman et al. (2017)"


@checker("dpo_loss", hint="margin = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected); loss = "
         "-F.logsigmoid(beta * margin).mean().")
def dpo_loss(student) -> str:

    g = torch.Generator().manual_seed(85)
    for B, beta in ((6, 0.1), (3, 0.5)):
        pc, pr = -torch.rand(B, generator=g) * 20, -torch.rand(B, generator=g) * 20
        rc, rr = -torch.rand(B, generator=g) * 20, -torch.rand(B, generator=g) * 20
        out = _loss(student(pc, pr, rc, rr, beta), "the DPO loss")
        expected = dpo.dpo_loss(pc, pr, rc, rr, beta)
        no_ref = -torch.nn.functional.logsigmoid(beta * (pc - pr)).mean()
        expect(not _same(out, no_ref), "the reference is missing: each log-prob is measured relative to pi_ref")
        expect(not _same(out, dpo.dpo_loss(pr, pc, rr, rc, beta)),
               "chosen and rejected are swapped: the chosen log-ratio comes first")
        no_beta = -torch.nn.functional.logsigmoid((pc - rc) - (pr - rr)).mean()
        expect(not _same(out, no_beta), f"beta={beta} must scale the margin inside the sigmoid")
        expect_close(out, expected, f"the DPO loss (beta={beta})", atol=1e-5)
    same = -torch.rand(4, generator=g) * 10
    out = student(same, same - 1, same.clone(), same - 1, 0.1)
    expect_close(out, torch.tensor(0.6931471805599453), "the DPO loss when policy == reference", atol=1e-5,
                 hint="with pi == pi_ref the margin is 0 and the loss is log 2")
    # sequence log-probs of long answers: margins of hundreds of nats
    pc, pr = torch.tensor([-900.0, -40.0, -300.0]), torch.tensor([-100.0, -600.0, -310.0])
    rc, rr = torch.tensor([-120.0, -45.0, -290.0]), torch.tensor([-110.0, -50.0, -300.0])
    for beta in (0.5, 0.1):
        out = student(pc, pr, rc, rr, beta)
        expect(isinstance(out, torch.Tensor) and bool(torch.isfinite(out).all()),
               f"the DPO loss overflows for a margin of {beta * -790:g} (beta={beta}): use F.logsigmoid, not "
               f"torch.log(torch.sigmoid(...))")
        expect_close(out, dpo.dpo_loss(pc, pr, rc, rr, beta), f"the DPO loss with large margins (beta={beta})",
                     atol=1e-4, hint="log(sigmoid(m) + eps) and a clamped margin cap the loss of a badly wrong pair")
        leaves = {"pi_chosen": pc.clone().requires_grad_(), "pi_rejected": pr.clone().requires_grad_()}
        expect_grads(student(*leaves.values(), rc, rr, beta), leaves,
                     lambda a, b, beta=beta: dpo.dpo_loss(a, b, rc, rr, beta), f"the DPO loss (beta={beta})",
                     hint="the policy's log-probs get the gradient; an eps inside the log or a clamp kills it")
    return "the Bradley-Terry loss with the implicit reward beta log(pi / pi_ref)"
