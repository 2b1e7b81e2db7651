"""RLHF: the labeler and preference pairs, the reward model (Bradley-Terry, last-token reading with
right padding), the KL-penalised rewards, PPO-clip, DPO, a tiny end-to-end PPO run, and the checkers."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import checks
from course_lib.models.gpt import GPT, GPTConfig
from course_lib.tasks import instructions
from course_lib.tokenizers import CharTokenizer
from course_lib.tuning import dpo, ppo, preferences, reward, sequences

ALPHABET = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # Tiny Shakespeare's 65
WORDS = ["rose", "night", "king", "moles", "crown", "sword", "tears", "heart"]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tok():
    return CharTokenizer(ALPHABET)


def tiny_gpt(seed: int = 0, n_embd: int = 16) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=len(ALPHABET), block_size=64, n_layer=1, n_head=2, n_embd=n_embd, bias=False))


# --- labeler and pairs --------------------------------------------------------------------------

def test_labeler_puts_exact_first_then_similarity():
    assert preferences.labeler_score("thgin\n", "thgin") == (1, 1.0)
    assert preferences.labeler_score("thgin", "thgin")[0] == 0  # never stopped: not exact
    ranked = preferences.rank_responses(["xyz\n", "thgi\n", "thgin\n", "thgi\n", "thgin!!\n"], "thgin")
    assert [r for r, _ in ranked] == ["thgin\n", "thgi\n", "thgin!!\n", "xyz\n"]  # duplicates dropped
    pairs = preferences.ranking_to_pairs(ranked)
    assert len(pairs) == 6 and pairs[0] == ("thgin\n", "thgi\n")
    # equal scores give no comparison
    assert preferences.ranking_to_pairs(preferences.rank_responses(["ab\n", "ba\n"], "cd")) == []


def test_preferences_are_deterministic_in_the_seed(tok):
    model = tiny_gpt()
    exs = instructions.sample_examples(WORDS, 6, seed=3)
    a = preferences.make_preferences(model, tok, exs, k=4, seed=5, max_new_tokens=8)
    b = preferences.make_preferences(model, tok, exs, k=4, seed=5, max_new_tokens=8)
    c = preferences.make_preferences(model, tok, exs, k=4, seed=6, max_new_tokens=8)
    assert a == b and a != c and len(a) > 0
    for p in a:
        assert preferences.labeler_score(p.chosen, p.answer) > preferences.labeler_score(p.rejected, p.answer)
    with pytest.raises(ValueError, match="k >= 2"):
        preferences.make_preferences(model, tok, exs, k=1)


def test_sampled_responses_stop_at_the_newline(tok):
    out = sequences.sample_responses(tiny_gpt(), tok, ["Q: a\nA: ", "Q: bb\nA: "] * 3, max_new_tokens=10, seed=0)
    for r in out:
        assert ("\n" not in r[:-1]) and (r.endswith("\n") or len(r) == 10)


# --- token grids --------------------------------------------------------------------------------

def test_encode_and_response_mask(tok):
    s = sequences.encode_sequences(tok, ["Q: a\nA: ", "Q: bb\nA: "], ["x\n", "yz\n"], 64, pad_id=0)
    assert s["ids"].shape == (2, 12) and s["prompt_lens"].tolist() == [8, 9] and s["lengths"].tolist() == [10, 12]
    mask = sequences.response_mask(s["prompt_lens"], s["lengths"], 12)
    assert mask.shape == (2, 11)
    assert mask[0].nonzero().flatten().tolist() == [7, 8]  # predicts tokens 8, 9 = "x\n"
    assert mask[1].nonzero().flatten().tolist() == [8, 9, 10]
    with pytest.raises(ValueError, match="block_size=8"):
        sequences.encode_sequences(tok, ["Q: a\nA: "], ["xyz\n"], 8, pad_id=0)


def test_sequence_logprob_sums_the_response_tokens(tok):
    model = tiny_gpt()
    s = sequences.encode_sequences(tok, ["Q: a\nA: ", "Q: bb\nA: "], ["x\n", "yz\n"], 64, pad_id=0)
    got = sequences.sequence_logprob(model, s)
    for b in range(2):
        ids = s["ids"][b: b + 1, : s["lengths"][b]]
        logp = F.log_softmax(model(ids)[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
        assert torch.allclose(got[b], logp[s["prompt_lens"][b] - 1:].sum(), atol=1e-5)


# --- reward model ---------------------------------------------------------------------------------

def test_bradley_terry_by_hand():
    loss = reward.bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert math.isclose(float(loss), (math.log1p(math.exp(-2.0)) + math.log(2)) / 2, rel_tol=1e-6)
    assert torch.isfinite(reward.bradley_terry_loss(torch.tensor([-80.0]), torch.tensor([80.0])))
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        reward.bradley_terry_loss(torch.zeros(3), torch.zeros(2))


def test_reward_model_reads_the_last_token_and_ignores_right_padding(tok):
    rm = reward.RewardModel.from_policy(tiny_gpt())
    rm.eval()
    s = sequences.encode_sequences(tok, ["Q: a\nA: ", "Q: bb\nA: "], ["x\n", "yz\n"], 64, pad_id=0)
    r = rm(s["ids"], s["lengths"])
    assert r.shape == (2,)
    alone = rm(s["ids"][:1, :10], torch.tensor([10]))
    assert torch.allclose(r[0], alone[0], atol=1e-5)
    other_pad = s["ids"].clone()
    other_pad[0, 10:] = 5
    assert torch.allclose(rm(other_pad, s["lengths"]), r, atol=1e-5)
    # the head reads position length - 1: changing that token changes the reward
    changed = s["ids"].clone()
    changed[0, 9] = 7
    assert not torch.allclose(rm(changed, s["lengths"])[0], r[0])
    with pytest.raises(ValueError, match=r"lengths must have shape \(B,\) = \(2,\)"):
        rm(s["ids"], torch.tensor([3]))
    rm.normalize_(s["ids"], s["lengths"])
    r = rm(s["ids"], s["lengths"])
    r = r.detach()
    assert abs(float(r.mean())) < 1e-5 and abs(float(r.std()) - 1) < 1e-4


def test_reward_model_learns_a_preference_with_fit(tok):
    from course_lib.train import OptimConfig, fit

    prefs = [preferences.Preference("reverse", e.prompt, e.answer, e.answer + "\n", e.answer[:-1] + "\n")
             for e in instructions.sample_examples(WORDS, 16, seed=0, tasks=["reverse"])]
    tensors = preferences.preference_tensors(tok, prefs, 64, pad_id=0)
    rm = reward.RewardModel.from_policy(tiny_gpt(n_embd=32))
    before = reward.pairwise_accuracy(rm, tensors)
    fit(rm, reward.rm_step_loss(), preferences.preference_batches(tensors, 16), steps=40,
        optim=OptimConfig(lr=3e-3, weight_decay=0.0), progress=False, device="cpu")
    assert reward.pairwise_accuracy(rm, tensors) > max(before, 0.9)


# --- PPO ----------------------------------------------------------------------------------------

def test_kl_penalty_rewards_by_hand_and_zero_when_policy_is_reference():
    logp = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    ref = torch.tensor([[-1.0, -1.0, -1.0, -1.0]])
    mask = torch.tensor([[False, True, True, False]])
    out = ppo.kl_penalty_rewards(torch.tensor([4.0]), logp, ref, mask, beta=0.5)
    assert torch.allclose(out, torch.tensor([[0.0, 0.5, -0.25 + 4.0, 0.0]]))
    out = ppo.kl_penalty_rewards(torch.tensor([4.0]), logp, logp.clone(), mask, beta=0.5)
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, 4.0, 0.0]]))
    with pytest.raises(ValueError, match=r"scores must have shape \(B,\) = \(1,\)"):
        ppo.kl_penalty_rewards(torch.zeros(2), logp, ref, mask, 0.1)
    with pytest.raises(ValueError, match=r"mask must have the shape of logp \(1, 4\), got \(1, 3\)"):
        ppo.kl_penalty_rewards(torch.zeros(1), logp, ref, mask[:, :3], 0.1)


def test_returns_and_leave_one_out_baseline():
    r = torch.tensor([[0.0, 1.0, 2.0, 0.0]])
    m = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    assert torch.equal(ppo.returns_to_go(r, m), torch.tensor([[0.0, 3.0, 2.0, 0.0]]))
    b = ppo.leave_one_out_baseline(torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0]), 3)
    assert torch.allclose(b, torch.tensor([2.5, 2.0, 1.5, 25.0, 20.0, 15.0]))
    with pytest.raises(ValueError, match="group_size"):
        ppo.leave_one_out_baseline(torch.zeros(5), 2)


def test_ppo_clip_loss_by_hand():
    # ratio 1.5 with A = +1 is clipped to 1.2; ratio 0.5 with A = -1 is clipped to 0.8 (min = -0.8)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, -1.0, 7.0]])
    mask = torch.tensor([[True, True, False]])
    loss = ppo.ppo_clip_loss(logp, old, adv, mask, clip=0.2)
    assert math.isclose(float(loss), -(1.2 - 0.8) / 2, abs_tol=1e-6)
    # pi == pi_old: ratio 1, loss = -mean advantage, gradient = -A / n per token
    lp = torch.zeros(1, 3, requires_grad=True)
    ppo.ppo_clip_loss(lp, old, adv, mask).backward()
    assert torch.allclose(lp.grad, torch.tensor([[-0.5, 0.5, 0.0]]))


class CountE(nn.Module):
    """A stand-in reward model: the fraction of the sequence's tokens that are 'e'."""

    def __init__(self, e_id: int):
        super().__init__()
        self.e_id = e_id
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, ids, lengths):
        T = ids.size(1)
        valid = torch.arange(T)[None] < lengths[:, None]
        return ((ids == self.e_id) & valid).sum(-1).float() / lengths.float() * 10


def test_ppo_end_to_end_rewards_go_up_and_first_ratio_is_one(tok):
    policy = tiny_gpt(1, n_embd=32)
    ref = copy.deepcopy(policy)
    ref_before = {k: v.clone() for k, v in ref.state_dict().items()}  # snapshot before training
    rm = CountE(tok.encode("e")[0])
    cfg = ppo.PPOConfig(iterations=24, prompts_per_iter=8, group_size=4, epochs=2, minibatches=2, lr=1e-2,
                         beta=0.01, max_new_tokens=8, seed=0)
    hist = ppo.ppo_train(policy, ref, rm, tok, WORDS, cfg, eval_fn=lambda m, step: {"x": 1.0}, eval_every=12)
    assert all(abs(r - 1.0) < 1e-5 for r in hist.first_ratio)  # every update starts at pi == pi_old
    assert abs(hist.kl[0]) < 1e-5  # the first rollout's policy is the reference
    assert sum(hist.reward[-4:]) / 4 > sum(hist.reward[:4]) / 4 + 0.5
    assert hist.kl[-1] > 0 and hist.eval_step == [0, 12, 24]
    assert all(torch.equal(ref_before[k], v) for k, v in ref.state_dict().items())  # the reference stayed frozen


def test_rollout_kl_is_zero_when_policy_is_the_reference(tok):
    policy = tiny_gpt()
    exs = instructions.sample_examples(WORDS, 3, seed=0)
    ro = ppo.rollout(policy, copy.deepcopy(policy), CountE(5), tok, exs, group_size=2, beta=0.1, max_new_tokens=6)
    assert torch.allclose(ro["kl"], torch.zeros_like(ro["kl"]), atol=1e-6)
    assert ro["advantages"].shape == ro["mask"].shape


# --- DPO ----------------------------------------------------------------------------------------

def test_dpo_loss_by_hand_and_log2_when_policy_is_reference(tok):
    loss = dpo.dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5)
    assert math.isclose(float(loss), math.log1p(math.exp(-1.0)), rel_tol=1e-6)  # beta * margin = 0.5 * 2
    model = tiny_gpt()
    prefs = [preferences.Preference("first", "Q: a\nA: ", "a", "a\n", "b\n"),
             preferences.Preference("last", "Q: bb\nA: ", "b", "b\n", "cc\n")]
    tensors = dpo.add_reference_logprobs(model, preferences.preference_tensors(tok, prefs, 64, pad_id=0))
    loss = dpo.dpo_step_loss(0.1)(model, tensors)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    with pytest.raises(ValueError, match="beta"):
        dpo.dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), 0.0)


# --- checkers -----------------------------------------------------------------------------------

def _bt_swapped(rc, rr):
    return -F.logsigmoid(rr - rc).mean()


def _bt_sum(rc, rr):
    return -F.logsigmoid(rc - rr).sum()


def _bt_naive_log(rc, rr):
    return -torch.log(torch.sigmoid(rc - rr)).mean()


def _kl_every_token(scores, logp, ref, mask, beta):
    m = mask.float()
    return (-beta * (logp - ref) + scores[:, None]) * m


def _kl_unmasked(scores, logp, ref, mask, beta):
    return ppo.kl_penalty_rewards(scores, logp, ref, mask, beta) - beta * (logp - ref) * (~mask).float()


def _kl_sign(scores, logp, ref, mask, beta):
    return ppo.kl_penalty_rewards(scores, ref, logp, mask, beta)


def _ppo_no_clip(logp, old, adv, mask, clip=0.2):
    m = mask.float()
    return -(torch.exp(logp - old) * adv * m).sum() / m.sum()


def _ppo_max(logp, old, adv, mask, clip=0.2):
    m, r = mask.float(), torch.exp(logp - old)
    return -(torch.maximum(r * adv, r.clamp(1 - clip, 1 + clip) * adv) * m).sum() / m.sum()


def _ppo_all_positions(logp, old, adv, mask, clip=0.2):
    return ppo.ppo_clip_loss(logp, old, adv, torch.ones_like(mask), clip)


def _dpo_no_ref(pc, pr, rc, rr, beta):
    return -F.logsigmoid(beta * (pc - pr)).mean()


def _dpo_no_beta(pc, pr, rc, rr, beta):
    return -F.logsigmoid((pc - rc) - (pr - rr)).mean()


def _dpo_swapped(pc, pr, rc, rr, beta):
    return dpo.dpo_loss(pr, pc, rr, rc, beta)


def _not_implemented(*args, **kwargs):
    raise NotImplementedError()


@pytest.mark.parametrize("check, reference, mistakes", [
    (checks.bradley_terry_loss, reward.bradley_terry_loss, [_bt_swapped, _bt_sum, _bt_naive_log]),
    (checks.kl_penalty_rewards, ppo.kl_penalty_rewards, [_kl_every_token, _kl_unmasked, _kl_sign]),
    (checks.ppo_clip_loss, ppo.ppo_clip_loss, [_ppo_no_clip, _ppo_max, _ppo_all_positions]),
    (checks.dpo_loss, dpo.dpo_loss, [_dpo_no_ref, _dpo_no_beta, _dpo_swapped]),
])
def test_checkers_accept_the_reference_and_reject_mistakes(check, reference, mistakes, capsys):
    assert check(reference).passed
    for wrong in mistakes:
        verdict = check(wrong)
        assert verdict.status == "failed", wrong.__name__
    assert check(_not_implemented).status == "not implemented"
    assert "[x]" in capsys.readouterr().out
