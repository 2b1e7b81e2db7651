"""InstructGPT's step 3: PPO against the reward model with a per-token KL penalty.

The policy pi_phi^RL starts as a copy of pi^SFT and maximises InstructGPT's objective
``E[r_theta(x, y)] - beta KL(pi_phi^RL || pi^SFT)``. The KL is paid per token: the token-level
reward is ``r_t = -beta (log pi(y_t | x, y_<t) - log pi^SFT(y_t | x, y_<t))``, and
r_theta(x, y) is added at the last token (:func:`kl_penalty_rewards`). PPO (Schulman et al.,
2017) reuses each batch of samples for a few gradient steps and keeps the policy near the one
that sampled them with the clipped surrogate
``L^CLIP = E_t[min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)]``,
``rho_t = pi(y_t | s_t) / pi_old(y_t | s_t)`` (:func:`ppo_clip_loss`).

**Baseline.** Instead of a learned value function (InstructGPT initialises one from the reward
model) we sample ``group_size`` responses per prompt and use, for each response, the mean return
of the *other* responses to the same prompt as its baseline: RLOO's leave-one-out baseline
(Ahmadian et al., 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
Human Feedback in LLMs"). GRPO (Shao et al., 2024, "DeepSeekMath") also compares a response with
its group, but differently: its baseline is the group mean *including* the response itself, it
divides by the group's standard deviation, and it puts the KL term in the loss rather than in the
reward. The reward arrives once, at the end of a 20-token answer, so a value network would mostly
have to learn "how good is this prompt", which the other samples of the same prompt tell us
directly; the baseline does not depend on the response's own tokens, so the policy gradient stays
unbiased, and there is no second network to train or tune.

**Temperature.** Responses sampled at temperature T come from softmax(logits / T), so that is the
policy PPO optimises: the old, current and reference log-probabilities are all taken at T
(``PPOConfig.temperature``), and the ratio, the KL penalty and the update stay on-policy.

**Token ids.** A rollout keeps the ids the policy sampled; the text is decoded from them only to
read and label it. (Decoding and re-encoding gives the ids back with the character tokenizer, not
with a BPE, where one text has several spellings in tokens.)

Sequences are right-padded token ids ``ids`` (B, T) with ``prompt_lens`` and ``lengths`` (B,):
the response is ``ids[b, prompt_lens[b]:lengths[b]]``. Per-token quantities (log-probabilities,
rewards, advantages) live on the (B, T - 1) grid of *predicted* tokens, where column t holds
token t + 1 predicted from the tokens up to t; :func:`course_lib.tuning.sequences.response_mask`
marks the response there.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..tasks.instructions import STOP, Example, sample_examples
from ..train import OptimConfig, optimizer_step, progress_bar
from ..validate import shape_of, tensor
from .reward import RewardModel
from .sequences import (
    _need_same_shape,
    disable_dropout,
    pack_sequences,
    policy_logprobs,
    sample_response_ids,
    stop_id,
)

# ---------------------------------------------------------------------------------------------
# Per-token rewards, returns, baseline, the clipped surrogate
# ---------------------------------------------------------------------------------------------

def kl_penalty_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                       beta: float) -> torch.Tensor:
    """Per-token rewards (B, T - 1) of InstructGPT's objective:
    ``r_t = -beta (log pi(y_t | s_t) - log pi^SFT(y_t | s_t))`` on response tokens (0 elsewhere),
    plus the reward model's score r_theta(x, y) at each sequence's last response token.
    Summed over t this is r_theta(x, y) - beta log(pi(y|x) / pi^SFT(y|x)), whose expectation over
    y ~ pi is E[r_theta] - beta KL(pi || pi^SFT)."""
    tensor(logp, "logp (B, T - 1)", 2)
    _need_same_shape("kl_penalty_rewards", ("logp", logp), ("ref_logp", ref_logp), ("mask", mask))
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (logp.size(0),):
        raise ValueError(f"scores must have shape (B,) = ({logp.size(0)},), got {shape_of(scores)}")
    m = mask.to(logp.dtype)
    if (m.sum(-1) == 0).any():
        raise ValueError("every sequence needs at least one response token in mask")
    rewards = -beta * (logp - ref_logp) * m
    last = mask.size(1) - 1 - torch.flip(mask.to(torch.long), [1]).argmax(-1)  # last True column per row
    return rewards.index_put((torch.arange(len(scores), device=scores.device), last),
                             scores.to(rewards.dtype), accumulate=True)

def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G_t = sum_{t' >= t} r_t' over response tokens (no discount, gamma = 1, as in InstructGPT)."""
    _need_same_shape("returns_to_go", ("rewards", rewards), ("mask", mask))
    r = rewards * mask
    return torch.flip(torch.cumsum(torch.flip(r, [1]), 1), [1]) * mask

def leave_one_out_baseline(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """For values (B,) in consecutive groups of ``group_size`` samples of one prompt: the mean of
    the other samples of the same group, b_i = (sum_j v_j - v_i) / (G - 1)."""
    tensor(values, "values (B,)", 1)
    if group_size < 2 or len(values) % group_size:
        raise ValueError(f"need group_size >= 2 dividing B={len(values)}, got {group_size}")
    v = values.view(-1, group_size)
    return ((v.sum(1, keepdim=True) - v) / (group_size - 1)).reshape(-1)

def ppo_clip_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  clip: float = 0.2) -> torch.Tensor:
    """PPO's clipped surrogate, negated to be minimised, averaged over response tokens:
    ``-mean_t min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)``, ``rho_t = exp(log pi - log pi_old)``.
    The min makes the objective a pessimistic bound: moving rho_t beyond [1 - eps, 1 + eps] in the
    direction that A_t rewards earns nothing more, so one batch of samples cannot push the policy
    far from the one that produced it."""
    tensor(logp, "logp (B, T - 1)", 2)
    _need_same_shape("ppo_clip_loss", ("logp", logp), ("old_logp", old_logp), ("advantages", advantages),
                     ("mask", mask))
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    m = mask.to(logp.dtype)
    if m.sum() == 0:
        raise ValueError("mask selects no token")
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages)
    return -(surrogate * m).sum() / m.sum()


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

@dataclass
class PPOConfig:
    iterations: int = 100
    prompts_per_iter: int = 16
    group_size: int = 4  # samples per prompt (for the leave-one-out baseline)
    epochs: int = 2  # passes over each rollout
    minibatches: int = 1
    lr: float = 1e-5
    beta: float = 0.05  # KL penalty coefficient
    clip: float = 0.2
    temperature: float = 1.0
    max_new_tokens: int = 20
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        t = self.temperature
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
            raise ValueError(f"temperature must be a finite number > 0 (PPO needs a stochastic policy), got {t!r}")

@dataclass
class PPOHistory:
    """Per iteration: mean RM score, mean sequence KL to the reference (nats), mean total reward
    (score - beta KL), fraction of samples the labeler would call exact (the "true" reward), PPO's
    clip fraction and mean ratio; and exact match (greedy) at ``eval_step``."""

    reward: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)
    sample_exact: list[float] = field(default_factory=list)
    clipfrac: list[float] = field(default_factory=list)
    first_ratio: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

@torch.no_grad()
def rollout(policy, ref, rm: RewardModel, tokenizer, examples: Sequence[Example], *, group_size: int,
            beta: float, temperature: float = 1.0, max_new_tokens: int = 20, seed: int = 0) -> dict:
    """Sample ``group_size`` responses per example from ``policy`` at ``temperature``, score them
    with ``rm``, and compute what PPO needs: old and reference log-probabilities (both at
    ``temperature``, the distribution the samples came from), the per-token KL-penalised rewards,
    returns-to-go and advantages A_t = G_t - b (leave-one-out baseline of the group's total
    returns), whitened over the batch. The sequences hold the sampled token ids themselves."""
    device = next(policy.parameters()).device
    prompts = [e.prompt for e in examples for _ in range(group_size)]
    sampled = sample_response_ids(policy, tokenizer, prompts, temperature=temperature,
                                  max_new_tokens=max_new_tokens, seed=seed)
    responses = [tokenizer.decode(ids) for ids in sampled]
    packed = pack_sequences([tokenizer.encode(p) for p in prompts], sampled, policy.config.block_size,
                            stop_id(tokenizer))
    seqs = {k: v.to(device) for k, v in packed.items()}
    old_logp, mask = policy_logprobs(policy, seqs, temperature=temperature)
    ref_logp, _ = policy_logprobs(ref, seqs, temperature=temperature)
    scores = rm(seqs["ids"][:, : int(seqs["lengths"].max())], seqs["lengths"]).float()
    rewards = kl_penalty_rewards(scores, old_logp, ref_logp, mask, beta)
    returns = returns_to_go(rewards, mask)
    baseline = leave_one_out_baseline((rewards * mask).sum(-1), group_size)  # other samples' total returns
    adv = (returns - baseline[:, None]) * mask
    m = mask.float()
    mean = (adv * m).sum() / m.sum()
    std = (((adv - mean) * m) ** 2).sum().div(m.sum()).sqrt()
    adv = (adv - mean) / (std + 1e-6) * m
    exact = torch.tensor([float(r == e.answer + STOP) for r, e in
                          zip(responses, [e for e in examples for _ in range(group_size)], strict=True)])
    return {"seqs": seqs, "responses": responses, "old_logp": old_logp, "ref_logp": ref_logp, "mask": mask,
            "scores": scores, "advantages": adv, "kl": ((old_logp - ref_logp) * m).sum(-1), "exact": exact}

def ppo_train(policy, ref, rm: RewardModel, tokenizer, words: Sequence[str], cfg: PPOConfig, *,
              eval_fn: Callable[[nn.Module, int], dict[str, float]] | None = None, eval_every: int | None = None,
              progress: bool = False) -> PPOHistory:
    """InstructGPT's step 3: optimise ``policy`` (in place; start it as a copy of the SFT model)
    against ``rm`` with a per-token KL penalty to the frozen ``ref``, by PPO-clip on prompts drawn
    from ``words``. ``eval_fn(policy, iteration)`` (e.g. exact match) runs every ``eval_every`` iterations and
    at the start and the end. ``ref`` must be a model of its own: the policy itself, or a copy
    sharing its parameter tensors, would move with it (a ValueError)."""
    if cfg.iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {cfg.iterations}")
    if ref is policy:
        raise ValueError("ref is the policy itself: pass a frozen copy as the reference, e.g. copy.deepcopy(sft) "
                         "before training (PPO's KL penalty measures how far the policy moved from it)")
    shared = {id(p) for p in policy.parameters()} & {id(p) for p in ref.parameters()}
    if shared:
        raise ValueError(f"ref shares {len(shared)} parameter tensors with the policy, so it would move with it; "
                         f"pass a deep copy (copy.deepcopy) as the reference")
    device = next(policy.parameters()).device
    disable_dropout(policy)
    ref.eval()  # both frozen: rollouts only read them, under no_grad
    rm.eval()
    optim = OptimConfig(lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.95), grad_clip=cfg.grad_clip)
    opt = optim.make_optimizer(policy, device)
    hist = PPOHistory()
    every = eval_every or max(1, cfg.iterations // 5)
    t0 = time.perf_counter()

    def evaluate(step: int) -> None:
        if eval_fn is not None:
            hist.eval_step.append(step)
            hist.eval.append({k: float(v) for k, v in eval_fn(policy, step).items()})

    evaluate(0)
    bar = progress_bar(cfg.iterations, desc="ppo", enabled=progress)
    for it in range(cfg.iterations):
        examples = sample_examples(words, cfg.prompts_per_iter, seed=cfg.seed * 1_000_003 + it)
        policy.eval()
        ro = rollout(policy, ref, rm, tokenizer, examples, group_size=cfg.group_size, beta=cfg.beta,
                     temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                     seed=cfg.seed * 1_000_003 + it)
        B = len(ro["scores"])
        g = torch.Generator().manual_seed(cfg.seed * 7919 + it)
        clipped, counted, first = 0.0, 0.0, None
        for _ in range(cfg.epochs):
            order = torch.randperm(B, generator=g).to(device)
            for chunk in order.chunk(cfg.minibatches):
                seqs = {k: v[chunk] for k, v in ro["seqs"].items()}
                T = int(seqs["lengths"].max())
                logp, mask = policy_logprobs(policy, seqs, temperature=cfg.temperature)
                old, adv = ro["old_logp"][chunk][:, : T - 1], ro["advantages"][chunk][:, : T - 1]
                opt.zero_grad(set_to_none=True)  # nothing stale (e.g. from eval_fn) enters the step
                ppo_clip_loss(logp, old, adv, mask, cfg.clip).backward()
                optimizer_step(policy, opt, grad_clip=optim.grad_clip)  # clip, step, zero
                with torch.no_grad():
                    ratio = torch.exp(logp - old)
                    m = mask.float()
                    if first is None:
                        first = float((ratio * m).sum() / m.sum())
                    clipped += float((((ratio - 1).abs() > cfg.clip).float() * m).sum())
                    counted += float(m.sum())
        kl = float(ro["kl"].mean())
        hist.reward.append(float(ro["scores"].mean()))
        hist.kl.append(kl)
        hist.objective.append(hist.reward[-1] - cfg.beta * kl)
        hist.sample_exact.append(float(ro["exact"].mean()))
        hist.clipfrac.append(clipped / max(counted, 1.0))
        hist.first_ratio.append(first if first is not None else 1.0)
        bar.update(1)
        bar.set_postfix(reward=f"{hist.reward[-1]:.2f}", kl=f"{kl:.2f}")
        if (it + 1) % every == 0 and it + 1 != cfg.iterations:
            evaluate(it + 1)
    bar.close()
    evaluate(cfg.iterations)
    hist.seconds = time.perf_counter() - t0
    return hist
