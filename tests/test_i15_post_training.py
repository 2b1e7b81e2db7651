"""Issue 15, post-training: PPO scores at its sampling temperature, keeps the sampled token ids,
refuses a reference that is the policy; the labeler puts answers that never stop last; notebook
07's random-init twin is built fresh."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from course_lib.models.gpt import GPT, GPTConfig
from course_lib.tasks import instructions
from course_lib.tokenizers import CharTokenizer
from course_lib.tuning import ppo, preferences, sequences

ROOT = Path(__file__).resolve().parent.parent
# the alphabet, words and fixtures of the RLHF tests (one thread each; the character tokenizer)
import test_rlhf as _rlhf  # noqa: E402

ALPHABET, WORDS = _rlhf.ALPHABET, _rlhf.WORDS
one_thread, tok = _rlhf.one_thread, _rlhf.tok  # fixtures, registered by being module attributes


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=len(ALPHABET), block_size=64, n_layer=1, n_head=2, n_embd=16, bias=False))


class Score(nn.Module):
    """A stand-in reward model: the response's length."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, ids, lengths):
        return lengths.float()


def _logp_at(model, seqs, temperature):
    T = int(seqs["lengths"].max())
    ids = seqs["ids"][:, :T]
    with torch.no_grad():
        logits = model(ids)[:, :-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def test_rollout_scores_the_samples_at_the_temperature_they_were_drawn_at(tok):
    policy, ref = tiny_gpt(0), tiny_gpt(1)
    exs = instructions.sample_examples(WORDS, 3, seed=0)
    ro = ppo.rollout(policy, ref, Score(), tok, exs, group_size=2, beta=0.1, temperature=0.5, max_new_tokens=6)
    m = ro["mask"]
    torch.testing.assert_close(ro["old_logp"][m], _logp_at(policy, ro["seqs"], 0.5)[m])
    torch.testing.assert_close(ro["ref_logp"][m], _logp_at(ref, ro["seqs"], 0.5)[m])


def test_ppo_updates_at_the_sampling_temperature(tok, monkeypatch):
    temperatures = []
    real = ppo.policy_logprobs

    def spy(model, seqs, temperature=1.0):
        temperatures.append(temperature)
        return real(model, seqs, temperature=temperature)

    monkeypatch.setattr(ppo, "policy_logprobs", spy)
    policy, ref = tiny_gpt(0), tiny_gpt(0)
    cfg = ppo.PPOConfig(iterations=1, prompts_per_iter=2, group_size=2, epochs=1, temperature=0.7, max_new_tokens=4)
    hist = ppo.ppo_train(policy, ref, Score(), tok, WORDS, cfg)
    assert set(temperatures) == {0.7} and len(temperatures) == 3  # old, reference, update
    assert abs(hist.first_ratio[0] - 1.0) < 1e-5
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            ppo.PPOConfig(temperature=bad)


class LossyTokenizer(CharTokenizer):
    """Decoding forgets case for 'E': text -> ids is not the inverse of ids -> text (as for any
    tokenizer where several id sequences spell the same text)."""

    def decode(self, ids):
        return super().decode(ids).replace("E", "e")


def test_rollout_keeps_the_sampled_token_ids(tok):
    lossy = LossyTokenizer(ALPHABET)
    policy = tiny_gpt(2)
    exs = instructions.sample_examples(WORDS, 4, seed=1)
    ro = ppo.rollout(policy, tiny_gpt(2), Score(), lossy, exs, group_size=4, beta=0.1, max_new_tokens=12, seed=3)
    prompts = [e.prompt for e in exs for _ in range(4)]
    sampled = sequences.sample_response_ids(policy, lossy, prompts, max_new_tokens=12, seed=3)
    seqs = ro["seqs"]
    for b, ids in enumerate(sampled):
        p = int(seqs["prompt_lens"][b])
        assert seqs["ids"][b, p: int(seqs["lengths"][b])].tolist() == ids
    e_id = tok.encode("E")[0]
    assert any(e_id in ids for ids in sampled)  # the case the re-encoding would have changed
    assert all("E" not in r for r in ro["responses"])


def test_ppo_refuses_the_policy_as_its_own_reference(tok):
    policy = tiny_gpt(0)
    cfg = ppo.PPOConfig(iterations=1, prompts_per_iter=2, group_size=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="reference"):
        ppo.ppo_train(policy, policy, Score(), tok, WORDS, cfg)
    with pytest.raises(ValueError, match="shares"):
        ppo.ppo_train(policy, copy.copy(policy), Score(), tok, WORDS, cfg)  # a shallow copy: the same tensors


def test_the_reference_stays_frozen_while_the_policy_moves(tok):
    policy, ref = tiny_gpt(1), tiny_gpt(1)
    before_ref = {k: v.clone() for k, v in ref.state_dict().items()}  # snapshot BEFORE training
    before_policy = {k: v.clone() for k, v in policy.state_dict().items()}
    cfg = ppo.PPOConfig(iterations=2, prompts_per_iter=4, group_size=2, lr=1e-2, max_new_tokens=6)
    ppo.ppo_train(policy, ref, Score(), tok, WORDS, cfg)
    assert all(torch.equal(before_ref[k], v) for k, v in ref.state_dict().items())
    assert any(not torch.equal(before_policy[k], v) for k, v in policy.state_dict().items())


def test_the_labeler_puts_an_answer_that_never_stops_below_one_that_stops():
    runaway = "a" * 20  # starts with the right letter, never stops
    stopped_wrong = "b\n"
    assert preferences.labeler_score(stopped_wrong, "a") > preferences.labeler_score(runaway, "a")
    ranked = [r for r, _ in preferences.rank_responses([runaway, stopped_wrong, "a\n"], "a")]
    assert ranked == ["a\n", stopped_wrong, runaway]
    # for long words a near miss that stops still beats one that runs on
    assert preferences.labeler_score("thgi\n", "thgin") > preferences.labeler_score("thgin" + "x" * 15, "thgin")


def test_notebook_07_builds_its_random_init_twin_fresh():
    nb = json.loads((ROOT / "solutions" / "07_instruction_tuning.ipynb").read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    twin = [c for c in cells if "scratch =" in c]
    assert len(twin) == 1
    assert "reset_parameters" not in twin[0] and "deepcopy(base)\nscratch" not in twin[0]
    line = next(ln for ln in twin[0].splitlines() if ln.startswith("scratch ="))
    assert "base" not in line.replace("RECIPE[\"base\"]", ""), line  # built from the recipe, not from base
