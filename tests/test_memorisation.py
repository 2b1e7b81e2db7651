"""Memorisation probes (notebook 06): seeded (prefix, continuation) windows, the length of a
model's verbatim greedy continuation, and training on one passage until the model recites it. A
model that knows a text by heart continues it verbatim, an untrained one does not, the count stops
at the first mismatch, and bad input is refused."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from course_lib.models import lm
from course_lib.models.gpt import GPT, GPTConfig
from course_lib.tuning import memorisation


class Successor(nn.Module):
    """A model that has learned one rule by heart: the next token is (last token + 1) mod V."""

    def __init__(self, vocab_size: int = 10, block_size: int = 16):
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=1, n_embd=4)
        self.dummy = nn.Parameter(torch.zeros(()))  # a device to read

    def forward(self, idx, kv_caches=None):
        nxt = (idx + 1) % self.config.vocab_size
        return torch.nn.functional.one_hot(nxt, self.config.vocab_size).float() * 10 + self.dummy


def test_common_prefix_length():
    assert lm.common_prefix_length("abcd", "abxd") == 2
    assert lm.common_prefix_length([1, 2, 3], [1, 2, 3, 4]) == 3
    assert lm.common_prefix_length("", "abc") == 0
    assert lm.common_prefix_length("x", "y") == 0


def test_probe_windows_are_seeded_contiguous_and_distinct():
    ids = torch.arange(100)
    pre, tru = lm.probe_windows(ids, 20, 5, 3, seed=4)
    assert pre.shape == (20, 5) and tru.shape == (20, 3)
    starts = pre[:, 0]
    assert len(set(starts.tolist())) == 20 and torch.all(starts[1:] > starts[:-1])  # distinct, in text order
    assert torch.equal(torch.cat([pre, tru], 1), starts[:, None] + torch.arange(8))  # prefix then its truth
    assert int(starts.max()) <= 100 - 8
    again, _ = lm.probe_windows(ids, 20, 5, 3, seed=4)
    other, _ = lm.probe_windows(ids, 20, 5, 3, seed=5)
    assert torch.equal(again, pre) and not torch.equal(other, pre)
    every, _ = lm.probe_windows(ids, 93, 5, 3)  # exactly as many windows as there is room for
    assert every[:, 0].tolist() == list(range(93))


def test_probe_windows_bad_input():
    with pytest.raises(ValueError, match="room for 93 distinct windows"):
        lm.probe_windows(torch.arange(100), 94, 5, 3)
    with pytest.raises(TypeError, match="integer token ids"):
        lm.probe_windows(torch.arange(100.0), 4, 5, 3)
    with pytest.raises(ValueError, match="1-D"):
        lm.probe_windows(torch.arange(100).view(10, 10), 4, 5, 3)
    for bad in ({"n": 0}, {"prefix_len": 0}, {"max_len": -1}):
        kw = dict(n=4, prefix_len=5, max_len=3) | bad
        with pytest.raises(ValueError, match="positive integer"):
            lm.probe_windows(torch.arange(100), **kw)
    with pytest.raises(TypeError, match="must be an integer"):
        lm.probe_windows(torch.arange(100), 4.0, 5, 3)


def test_the_count_stops_at_the_first_mismatch():
    model = Successor()
    prefixes = torch.tensor([[0, 1, 2]] * 5)
    truths = torch.tensor([3, 4, 5, 6, 7]).repeat(5, 1)
    for j in range(4):
        truths[j, j] = 0  # row j goes wrong at position j ...
        truths[j, -1] = 0  # ... and a match after the mismatch must not count
    assert lm.verbatim_lengths(model, prefixes, truths) == [0, 1, 2, 3, 5]
    assert lm.verbatim_lengths(model, prefixes, truths, batch_size=2) == [0, 1, 2, 3, 5]
    # in characters: two characters a token, the first of which agrees for 5 vs 6 ("0" of "05", "06")
    two = lambda ids: "".join(f"{i:02d}" for i in ids)  # noqa: E731
    assert lm.verbatim_lengths(model, prefixes, truths, decode=two) == [1, 3, 5, 7, 10]


def test_a_model_that_memorised_a_text_recites_it_and_an_untrained_one_does_not():
    g = torch.Generator().manual_seed(0)
    text = torch.randint(16, (120,), generator=g)  # random: nothing to predict but by heart
    cfg = GPTConfig(vocab_size=16, block_size=24, n_layer=2, n_head=2, n_embd=48, dropout=0.0, bias=False)
    torch.manual_seed(0)
    untrained, model = GPT(cfg), GPT(cfg)
    model.load_state_dict(untrained.state_dict())
    prefixes, truths = lm.probe_windows(text, 40, 12, 12, seed=1)
    curve = []
    history = memorisation.repeat_passage(
        model, text, steps=300, batch_size=32, lr=3e-3, device="cpu", eval_every=100,
        eval_fn=lambda m, step: curve.append(sum(lm.verbatim_lengths(m, prefixes, truths)) / 40) or {})
    assert history.steps_done == 300 and history.eval_step == [100, 200, 300]
    recited = lm.verbatim_lengths(model, prefixes, truths)
    guessed = lm.verbatim_lengths(untrained, prefixes, truths)
    assert sum(recited) / len(recited) >= 11, recited
    assert curve[-1] == sum(recited) / len(recited) and curve[0] < curve[-1]  # it grows with repetition
    assert sum(guessed) / len(guessed) <= 1, guessed
    # a random text the model never saw: no better than the untrained model's guesses
    unseen = torch.randint(16, (120,), generator=g)
    p2, t2 = lm.probe_windows(unseen, 40, 12, 12, seed=1)
    fresh = lm.verbatim_lengths(model, p2, t2)
    assert sum(fresh) / len(fresh) <= 1, fresh
    assert model.training  # generation left the model's mode as it found it
    assert memorisation.times_seen(300, 32, 24, 120) == 300 * 32 * 24 / 120


def test_repeat_passage_bad_input():
    model = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=1, n_embd=8))
    text = torch.randint(16, (40,))
    with pytest.raises(TypeError, match="config.block_size"):
        memorisation.repeat_passage(nn.Linear(2, 2), text, steps=1, batch_size=2)
    with pytest.raises(ValueError, match="need at least 9"):
        memorisation.repeat_passage(model, text[:8], steps=1, batch_size=2)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 16\)"):
        memorisation.repeat_passage(model, text + 16, steps=1, batch_size=2)
    with pytest.raises(TypeError, match="integer token ids"):
        memorisation.repeat_passage(model, text.float(), steps=1, batch_size=2)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        memorisation.repeat_passage(model, text, steps=0, batch_size=2)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        memorisation.repeat_passage(model, text, steps=1, batch_size=2, lr=0.0)
    with pytest.raises(ValueError, match="n_tokens must be a positive integer"):
        memorisation.times_seen(1, 2, 3, 0)


def test_verbatim_lengths_bad_input():
    model = Successor(vocab_size=10, block_size=16)
    pre, tru = torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(TypeError, match="config.block_size"):
        lm.verbatim_lengths(nn.Linear(2, 2), pre, tru)
    with pytest.raises(TypeError, match="integer token ids"):
        lm.verbatim_lengths(model, pre.float(), tru)
    with pytest.raises(ValueError, match="2-D"):
        lm.verbatim_lengths(model, pre[0], tru)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 10\)"):
        lm.verbatim_lengths(model, pre, tru + 10)
    with pytest.raises(ValueError, match="2 prefixes and 1 truths"):
        lm.verbatim_lengths(model, pre, tru[:1])
    with pytest.raises(ValueError, match=r"prefix \(4 tokens\) \+ continuation \(13 tokens\) exceeds"):
        lm.verbatim_lengths(model, pre, torch.zeros(2, 13, dtype=torch.long))
    with pytest.raises(TypeError, match="decode must be a function"):
        lm.verbatim_lengths(model, pre, tru, decode="abc")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        lm.verbatim_lengths(model, pre, tru, batch_size=0)
