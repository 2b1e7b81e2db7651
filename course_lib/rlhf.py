"""RLHF: preferences, a reward model, PPO against it with a KL penalty, and DPO.

InstructGPT (Ouyang et al., 2022, "Training language models to follow instructions with human
feedback") has three steps; step 1, supervised fine-tuning (SFT), is :mod:`course_lib.instruct`.
This module is steps 2 and 3, plus the shortcut that skips the reward model:

* **Step 2, comparisons and a reward model.** For a prompt x the SFT policy samples K responses;
  a labeler ranks them, and every ranked pair becomes a comparison (y_w preferred to y_l). Our
  labeler is a program (:func:`labeler_score`): an exact answer first, then character-level
  similarity to the right answer. The reward model r_theta(x, y) -- the SFT GPT with its LM head
  replaced by a scalar head read at the response's last token -- is trained with the
  Bradley-Terry loss of Christiano et al. (2017) and InstructGPT:
  ``loss(theta) = -E log sigma(r_theta(x, y_w) - r_theta(x, y_l))``.
* **Step 3, PPO.** The policy pi_phi^RL starts as a copy of pi^SFT and maximises InstructGPT's
  objective ``E[r_theta(x, y)] - beta KL(pi_phi^RL || pi^SFT)``. The KL is paid per token: the
  token-level reward is ``r_t = -beta (log pi(y_t | x, y_<t) - log pi^SFT(y_t | x, y_<t))``, and
  r_theta(x, y) is added at the last token (:func:`kl_penalty_rewards`). PPO (Schulman et al.,
  2017) reuses each batch of samples for a few gradient steps and keeps the policy near the one
  that sampled them with the clipped surrogate
  ``L^CLIP = E_t[min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)]``,
  ``rho_t = pi(y_t | s_t) / pi_old(y_t | s_t)`` (:func:`ppo_clip_loss`).
* **DPO** (Rafailov et al., 2023, "Direct Preference Optimization: Your Language Model is
  Secretly a Reward Model") trains the policy on the same pairs with no reward model and no
  sampling: ``-log sigma(beta [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) -
  log pi_ref(y_l|x))])`` (:func:`dpo_loss`).

**Baseline.** Instead of a learned value function (InstructGPT initialises one from the reward
model) we sample ``group_size`` responses per prompt and use, for each response, the mean return
of the *other* responses to the same prompt as its baseline (leave-one-out, as in Ahmadian et al.,
2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in
LLMs"; GRPO, Shao et al., 2024, is the same idea). The reward arrives once, at the end of a
20-token answer, so a value network would mostly have to learn "how good is this prompt", which
the other samples of the same prompt tell us directly; the baseline does not depend on the
response's own tokens, so the policy gradient stays unbiased, and there is no second network to
train or tune.

Sequences are right-padded token ids ``ids`` (B, T) with ``prompt_lens`` and ``lengths`` (B,):
the response is ``ids[b, prompt_lens[b]:lengths[b]]``. Per-token quantities (log-probabilities,
rewards, advantages) live on the (B, T - 1) grid of *predicted* tokens, where column t holds
token t + 1 predicted from the tokens up to t; :func:`response_mask` marks the response there.
"""
from __future__ import annotations

import copy
import difflib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import instruct
from .instruct import STOP

# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _need_tensor(x, what: str, dim: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != dim:
        raise ValueError(f"{what} must be a {dim}-D tensor, got {_shape(x)}")


def _need_same_shape(what: str, *named: tuple[str, torch.Tensor]) -> None:
    first_name, first = named[0]
    for n, t in named[1:]:
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(first.shape):
            raise ValueError(f"{what}: {n} must have the shape of {first_name} {tuple(first.shape)}, got {_shape(t)}")


def _check_seqs(ids: torch.Tensor, lengths: torch.Tensor, prompt_lens: torch.Tensor | None = None) -> None:
    _need_tensor(ids, "ids (B, T)", 2)
    if not isinstance(lengths, torch.Tensor) or tuple(lengths.shape) != (ids.size(0),):
        raise ValueError(f"lengths must have shape (B,) = ({ids.size(0)},) for ids {tuple(ids.shape)}, "
                         f"got {_shape(lengths)}")
    if len(lengths) and (int(lengths.min()) < 1 or int(lengths.max()) > ids.size(1)):
        raise ValueError(f"lengths must be in [1, T={ids.size(1)}], got [{int(lengths.min())}, {int(lengths.max())}]")
    if prompt_lens is not None:
        if not isinstance(prompt_lens, torch.Tensor) or tuple(prompt_lens.shape) != (ids.size(0),):
            raise ValueError(f"prompt_lens must have shape ({ids.size(0)},), got {_shape(prompt_lens)}")
        if (prompt_lens < 1).any() or (prompt_lens >= lengths).any():
            raise ValueError("every sequence needs 1 <= prompt_len < length (at least one response token)")


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability to 0 (in place). Policy-gradient ratios and DPO's log-ratios
    compare log-probabilities of two forward passes; dropout would make them differ by noise."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        elif isinstance(getattr(m, "dropout", None), float):
            m.dropout = 0.0
    return model


# ---------------------------------------------------------------------------------------------
# Step 2a: sampling K responses, the labeler, rankings -> pairs
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: Sequence[str], *, temperature: float = 1.0,
                     max_new_tokens: int = 20, seed: int = 0, batch_size: int = 512) -> list[str]:
    """One sampled response per prompt, cut after the first stop token (kept; a response that
    never stops is the ``max_new_tokens`` it produced). Prompts of one length are generated
    together with the KV cache; deterministic in ``seed``."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    g = torch.Generator().manual_seed(seed)
    texts = instruct.continuations(model, tokenizer, prompts, max_new_tokens, temperature=temperature,
                                   generator=g, batch_size=batch_size)
    out = []
    for text in texts:
        cut = text.find(STOP)
        out.append(text if cut < 0 else text[: cut + len(STOP)])
    return out


def labeler_score(response: str, answer: str) -> tuple[int, float]:
    """The programmatic labeler's sort key for one response (higher is better): (1 if the
    response is exactly the answer followed by the stop token else 0, character-level
    similarity of the response text to the answer in [0, 1], difflib's ratio 2 M / (|a| + |b|)).
    A response that never stopped is never exact."""
    exact = response == answer + STOP
    text = response[: -len(STOP)] if response.endswith(STOP) else response
    return int(exact), difflib.SequenceMatcher(None, text, answer, autojunk=False).ratio()


def rank_responses(responses: Sequence[str], answer: str) -> list[tuple[str, tuple[int, float]]]:
    """Distinct responses ranked best first by :func:`labeler_score`, each with its score (the
    labeler's ranking of InstructGPT's step 2; ties keep their sampling order)."""
    seen: dict[str, tuple[int, float]] = {}
    for r in responses:
        if r not in seen:
            seen[r] = labeler_score(r, answer)
    return sorted(seen.items(), key=lambda kv: kv[1], reverse=True)


def ranking_to_pairs(ranked: Sequence[tuple[str, tuple[int, float]]]) -> list[tuple[str, str]]:
    """Every (chosen, rejected) pair of a ranking where chosen scores strictly higher: K ranked
    responses give up to K (K - 1) / 2 comparisons, as in InstructGPT."""
    pairs = []
    for i in range(len(ranked)):
        for j in range(i + 1, len(ranked)):
            if ranked[i][1] > ranked[j][1]:
                pairs.append((ranked[i][0], ranked[j][0]))
    return pairs


@dataclass(frozen=True)
class Preference:
    """One comparison: for ``prompt``, the labeler prefers ``chosen`` to ``rejected`` (both
    responses as sampled, with the stop token when they stopped)."""

    task: str
    prompt: str
    answer: str
    chosen: str
    rejected: str


def make_preferences(policy, tokenizer, examples: Sequence[instruct.Example], *, k: int = 4,
                     temperature: float = 1.0, max_new_tokens: int = 20, seed: int = 0) -> list[Preference]:
    """InstructGPT's comparison data, labeled by program: for each example's prompt, sample ``k``
    responses from ``policy``, rank them with :func:`labeler_score`, keep every strictly ordered
    pair. Deterministic in ``seed``. Prompts whose k samples all score the same give no pair."""
    if k < 2:
        raise ValueError(f"need k >= 2 responses per prompt to compare, got {k}")
    prompts = [e.prompt for e in examples for _ in range(k)]
    samples = sample_responses(policy, tokenizer, prompts, temperature=temperature,
                               max_new_tokens=max_new_tokens, seed=seed)
    out = []
    for i, e in enumerate(examples):
        for chosen, rejected in ranking_to_pairs(rank_responses(samples[i * k:(i + 1) * k], e.answer)):
            out.append(Preference(e.task, e.prompt, e.answer, chosen, rejected))
    return out


# ---------------------------------------------------------------------------------------------
# Token grids: encoding, response masks, log-probabilities
# ---------------------------------------------------------------------------------------------


def encode_sequences(tokenizer, prompts: Sequence[str], responses: Sequence[str], block_size: int,
                     pad_id: int, width: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded ``ids`` (B, T) of prompt + response with ``prompt_lens`` and ``lengths`` (B,).
    T is the longest sequence (or ``width``); longer than ``block_size`` is an error."""
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"need as many responses as prompts (at least one), got {len(prompts)} and {len(responses)}")
    p_ids = [tokenizer.encode(p) for p in prompts]
    r_ids = [tokenizer.encode(r) for r in responses]
    if any(len(r) == 0 for r in r_ids):
        raise ValueError("every response needs at least one token")
    lens = [len(p) + len(r) for p, r in zip(p_ids, r_ids, strict=True)]
    T = max(lens) if width is None else width
    if max(lens) > min(T, block_size):
        raise ValueError(f"a sequence has {max(lens)} tokens, more than the context block_size={block_size}"
                         + (f" or width={width}" if width is not None else ""))
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    for b, (p, r) in enumerate(zip(p_ids, r_ids, strict=True)):
        ids[b, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
    return {"ids": ids, "prompt_lens": torch.tensor([len(p) for p in p_ids]), "lengths": torch.tensor(lens)}


def response_mask(prompt_lens: torch.Tensor, lengths: torch.Tensor, T: int) -> torch.Tensor:
    """Bool (B, T - 1): column t is a response token, i.e. prompt_len <= t + 1 < length."""
    if tuple(prompt_lens.shape) != tuple(lengths.shape) or prompt_lens.dim() != 1:
        raise ValueError(f"prompt_lens and lengths must both be (B,), got {_shape(prompt_lens)} and {_shape(lengths)}")
    nxt = torch.arange(1, T, device=lengths.device)[None, :]
    return (nxt >= prompt_lens[:, None]) & (nxt < lengths[:, None])


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log pi(x_{t+1} | x_<=t) for every position: (B, T - 1) from logits (B, T, V) on ids (B, T)."""
    if logits.dim() != 3 or ids.dim() != 2 or logits.shape[:2] != ids.shape:
        raise ValueError(f"expected logits (B, T, V) on ids (B, T), got {_shape(logits)} and {_shape(ids)}")
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)


def policy_logprobs(model, seqs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token log-probabilities (B, T - 1), response mask (B, T - 1)) of ``seqs`` under ``model``."""
    ids, lengths, prompt_lens = seqs["ids"], seqs["lengths"], seqs["prompt_lens"]
    _check_seqs(ids, lengths, prompt_lens)
    T = int(lengths.max())
    ids = ids[:, :T]
    return token_logprobs(model(ids), ids), response_mask(prompt_lens, lengths, T)


def sequence_logprob(model, seqs: dict[str, torch.Tensor]) -> torch.Tensor:
    """log pi(y | x) = sum over response tokens of log pi(y_t | x, y_<t): (B,)."""
    logp, mask = policy_logprobs(model, seqs)
    return (logp * mask).sum(-1)


# ---------------------------------------------------------------------------------------------
# Step 2b: the reward model
# ---------------------------------------------------------------------------------------------


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
    _need_tensor(r_chosen, "r_chosen (B,)", 1)
    _need_same_shape("bradley_terry_loss", ("r_chosen", r_chosen), ("r_rejected", r_rejected))
    return -F.logsigmoid(r_chosen.float() - r_rejected.float()).mean()


def preference_tensors(tokenizer, prefs: Sequence[Preference], block_size: int,
                       pad_id: int) -> dict[str, torch.Tensor]:
    """All pairs encoded once: ``chosen_*`` and ``rejected_*`` ids/prompt_lens/lengths of one width."""
    if not prefs:
        raise ValueError("need at least one preference pair")
    prompts = [p.prompt for p in prefs]
    both = encode_sequences(tokenizer, prompts + prompts, [p.chosen for p in prefs] + [p.rejected for p in prefs],
                            block_size, pad_id)
    n = len(prefs)
    out = {}
    for side, sl in (("chosen", slice(0, n)), ("rejected", slice(n, 2 * n))):
        for k, v in both.items():
            out[f"{side}_{k}"] = v[sl]
    return out


def side(batch: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The ``chosen`` or ``rejected`` sequences of a preference batch, trimmed to their longest."""
    lengths = batch[f"{name}_lengths"]
    T = int(lengths.max())
    return {"ids": batch[f"{name}_ids"][:, :T], "prompt_lens": batch[f"{name}_prompt_lens"], "lengths": lengths}


def subset(tensors: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in tensors.items()}


def preference_batches(tensors: dict[str, torch.Tensor], batch_size: int,
                       seed: int = 0) -> Callable[[int], dict[str, torch.Tensor]]:
    """Deterministic batch function ``i -> batch`` of ``batch_size`` random pairs, for ``fit``."""
    n = len(tensors["chosen_ids"])

    def get(i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        return subset(tensors, torch.randint(n, (min(batch_size, n),), generator=g))

    return get


def reward_pair(rm: RewardModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected), both (B,), in one forward pass over 2B sequences."""
    c, r = side(batch, "chosen"), side(batch, "rejected")
    T = max(c["ids"].size(1), r["ids"].size(1))
    ids = torch.cat([F.pad(c["ids"], (0, T - c["ids"].size(1))), F.pad(r["ids"], (0, T - r["ids"].size(1)))])
    rewards = rm(ids, torch.cat([c["lengths"], r["lengths"]]))
    return rewards[: len(c["lengths"])], rewards[len(c["lengths"]):]


def rm_step_loss(rm: RewardModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``loss_fn`` for :func:`course_lib.train.fit`: the Bradley-Terry loss of a preference batch."""
    return bradley_terry_loss(*reward_pair(rm, batch))


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


# ---------------------------------------------------------------------------------------------
# Step 3: PPO with a per-token KL penalty to the SFT reference
# ---------------------------------------------------------------------------------------------


def kl_penalty_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                       beta: float) -> torch.Tensor:
    """Per-token rewards (B, T - 1) of InstructGPT's objective:
    ``r_t = -beta (log pi(y_t | s_t) - log pi^SFT(y_t | s_t))`` on response tokens (0 elsewhere),
    plus the reward model's score r_theta(x, y) at each sequence's last response token.
    Summed over t this is r_theta(x, y) - beta log(pi(y|x) / pi^SFT(y|x)), whose expectation over
    y ~ pi is E[r_theta] - beta KL(pi || pi^SFT)."""
    _need_tensor(logp, "logp (B, T - 1)", 2)
    _need_same_shape("kl_penalty_rewards", ("logp", logp), ("ref_logp", ref_logp), ("mask", mask))
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (logp.size(0),):
        raise ValueError(f"scores must have shape (B,) = ({logp.size(0)},), got {_shape(scores)}")
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
    _need_tensor(values, "values (B,)", 1)
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
    _need_tensor(logp, "logp (B, T - 1)", 2)
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
def rollout(policy, ref, rm: RewardModel, tokenizer, examples: Sequence[instruct.Example], *, group_size: int,
            beta: float, temperature: float = 1.0, max_new_tokens: int = 20, seed: int = 0) -> dict:
    """Sample ``group_size`` responses per example from ``policy``, score them with ``rm``, and
    compute what PPO needs: old and reference log-probabilities, the per-token KL-penalised
    rewards, returns-to-go and advantages A_t = G_t - b (leave-one-out baseline of the group's
    total returns), whitened over the batch."""
    device = next(policy.parameters()).device
    prompts = [e.prompt for e in examples for _ in range(group_size)]
    responses = sample_responses(policy, tokenizer, prompts, temperature=temperature,
                                 max_new_tokens=max_new_tokens, seed=seed)
    pad = tokenizer.encode(STOP)[0]
    seqs = {k: v.to(device) for k, v in encode_sequences(tokenizer, prompts, responses,
                                                         policy.config.block_size, pad).items()}
    old_logp, mask = policy_logprobs(policy, seqs)
    ref_logp, _ = policy_logprobs(ref, seqs)
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
              eval_fn: Callable[[nn.Module], dict[str, float]] | None = None, eval_every: int | None = None,
              progress: bool = False) -> PPOHistory:
    """InstructGPT's step 3: optimise ``policy`` (in place; start it as a copy of the SFT model)
    against ``rm`` with a per-token KL penalty to the frozen ``ref``, by PPO-clip on prompts drawn
    from ``words``. ``eval_fn(policy)`` (e.g. exact match) runs every ``eval_every`` iterations and
    at the start and the end."""
    from .train import make_optimizer

    if cfg.iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {cfg.iterations}")
    device = next(policy.parameters()).device
    disable_dropout(policy)
    ref.eval()  # both frozen: rollouts only read them, under no_grad
    rm.eval()
    opt = make_optimizer(policy, cfg.lr, weight_decay=0.0, betas=(0.9, 0.95), device=device)
    hist = PPOHistory()
    every = eval_every or max(1, cfg.iterations // 5)
    t0 = time.perf_counter()

    def evaluate(step: int) -> None:
        if eval_fn is not None:
            hist.eval_step.append(step)
            hist.eval.append({k: float(v) for k, v in eval_fn(policy).items()})

    evaluate(0)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iterations, desc="ppo", dynamic_ncols=True)
    for it in range(cfg.iterations):
        examples = instruct.sample_examples(words, cfg.prompts_per_iter, seed=cfg.seed * 1_000_003 + it)
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
                logp, mask = policy_logprobs(policy, seqs)
                old, adv = ro["old_logp"][chunk][:, : T - 1], ro["advantages"][chunk][:, : T - 1]
                loss = ppo_clip_loss(logp, old, adv, mask, cfg.clip)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
                opt.step()
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
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{hist.reward[-1]:.2f}", kl=f"{kl:.2f}")
        if (it + 1) % every == 0 and it + 1 != cfg.iterations:
            evaluate(it + 1)
    if bar is not None:
        bar.close()
    evaluate(cfg.iterations)
    hist.seconds = time.perf_counter() - t0
    return hist


# ---------------------------------------------------------------------------------------------
# DPO
# ---------------------------------------------------------------------------------------------


def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """DPO's loss on sequence log-probabilities (each (B,)):
    ``-mean log sigma(beta [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])``.
    It is the Bradley-Terry loss with the implicit reward r(x, y) = beta log(pi(y|x) / pi_ref(y|x));
    when pi = pi_ref it equals log 2."""
    _need_tensor(pi_chosen, "pi_chosen (B,)", 1)
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


def dpo_step_loss(beta: float) -> Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]:
    """``loss_fn`` for :func:`course_lib.train.fit` on batches of :func:`add_reference_logprobs`."""

    def loss_fn(policy, batch):
        return dpo_loss(sequence_logprob(policy, side(batch, "chosen")),
                        sequence_logprob(policy, side(batch, "rejected")),
                        batch["ref_chosen"], batch["ref_rejected"], beta)

    return loss_fn
