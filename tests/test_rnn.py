"""The RNN reference against torch.nn.RNN, the language model's contract, and the rnn checkers."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import checks
from course_lib.models import rnn
from course_lib.tasks.recall import recall_batch, recall_vocab_size
from course_lib.tokenizers import CharTokenizer


@pytest.mark.parametrize("n_layers,bias", [(1, True), (2, True), (1, False)])
def test_rnn_equals_torch(n_layers, bias):
    torch.manual_seed(0)
    ref = nn.RNN(5, 7, num_layers=n_layers, batch_first=True, bias=bias).double()
    ours = rnn.RNN.from_torch(ref)
    x = torch.randn(3, 11, 5, dtype=torch.double)
    h0 = torch.randn(n_layers, 3, 7, dtype=torch.double)
    for h in (None, h0):
        out, hT = ours(x, h)
        ref_out, ref_hT = ref(x, h)
        torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(hT, ref_hT, atol=1e-12, rtol=1e-10)


def test_rnn_gradients_equal_torch():
    torch.manual_seed(1)
    ref = nn.RNN(4, 6, batch_first=True).double()
    ours = rnn.RNN.from_torch(ref)
    x = torch.randn(2, 8, 4, dtype=torch.double)
    ours(x)[0].pow(2).sum().backward()
    ref(x)[0].pow(2).sum().backward()
    torch.testing.assert_close(ours.W_xh[0].grad, ref.weight_ih_l0.grad.T)
    torch.testing.assert_close(ours.W_hh[0].grad, ref.weight_hh_l0.grad.T)
    torch.testing.assert_close(ours.b_h[0].grad, ref.bias_ih_l0.grad)


def test_rnn_cell_equals_rnncell_and_unbatched():
    torch.manual_seed(2)
    cell = nn.RNNCell(3, 4)
    W_xh, W_hh = cell.weight_ih.detach().T, cell.weight_hh.detach().T
    b_h = (cell.bias_ih + cell.bias_hh).detach()
    x, h = torch.randn(5, 3), torch.randn(5, 4)
    torch.testing.assert_close(rnn.rnn_cell(x, h, W_xh, W_hh, b_h), cell(x, h).detach())
    torch.testing.assert_close(rnn.rnn_cell(x[0], h[0], W_xh, W_hh, b_h), cell(x, h).detach()[0])


def test_rnn_cell_bad_shapes():
    W_xh, W_hh, b_h = torch.zeros(3, 4), torch.zeros(4, 4), torch.zeros(4)
    with pytest.raises(ValueError, match=r"x_t must have shape"):
        rnn.rnn_cell(torch.zeros(2, 5), torch.zeros(2, 4), W_xh, W_hh, b_h)
    with pytest.raises(ValueError, match=r"h_prev must have shape \(2, 4\)"):
        rnn.rnn_cell(torch.zeros(2, 3), torch.zeros(3, 4), W_xh, W_hh, b_h)
    with pytest.raises(ValueError, match=r"W_hh must have shape"):
        rnn.rnn_cell(torch.zeros(2, 3), torch.zeros(2, 4), W_xh, torch.zeros(3, 3), b_h)
    with pytest.raises(ValueError, match=r"b_h must have shape"):
        rnn.rnn_cell(torch.zeros(2, 3), torch.zeros(2, 4), W_xh, W_hh, torch.zeros(3))


def test_rnn_bad_input():
    m = rnn.RNN(3, 4)
    with pytest.raises(ValueError, match="empty sequence"):
        m(torch.zeros(2, 0, 3))
    with pytest.raises(ValueError, match=r"\(B, T, d\) with d = 3"):
        m(torch.zeros(2, 5, 2))
    with pytest.raises(ValueError, match=r"h0 must have shape"):
        m(torch.zeros(2, 5, 3), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="do not match"):
        m.load_from_torch(nn.RNN(3, 5, batch_first=True))
    with pytest.raises(ValueError, match="tanh"):
        m.load_from_torch(nn.RNN(3, 4, nonlinearity="relu", batch_first=True))


@pytest.mark.parametrize("cell", rnn.CELLS)
def test_language_model_shapes_and_state(cell):
    torch.manual_seed(3)
    m = rnn.RNNLanguageModel(vocab_size=11, d_embed=6, d_hidden=8, n_layers=2, cell=cell).eval()
    x = torch.randint(11, (3, 9))
    logits = m(x)
    assert logits.shape == (3, 9, 11)
    # feeding the sequence in two chunks with the carried state gives the same logits (causality + state)
    a, state = m.forward_with_state(x[:, :4])
    b, _ = m.forward_with_state(x[:, 4:], state)
    torch.testing.assert_close(torch.cat([a, b], 1), logits, atol=1e-5, rtol=1e-5)
    # the logit at t does not depend on tokens after t
    x2 = x.clone(); x2[:, 5:] = (x2[:, 5:] + 1) % 11
    torch.testing.assert_close(m(x2)[:, :5], logits[:, :5])


def test_language_model_rnn_equals_from_scratch():
    """The vanilla LM's recurrent layer is nn.RNN; our from-scratch RNN reproduces its logits."""
    torch.manual_seed(4)
    m = rnn.RNNLanguageModel(13, 5, 7, cell="rnn").eval()
    x = torch.randint(13, (2, 6))
    scratch = rnn.RNN.from_torch(m.rnn)
    manual = m.head(scratch(m.embed(x))[0])
    torch.testing.assert_close(manual, m(x))


def test_language_model_bad_input():
    m = rnn.RNNLanguageModel(10, 4, 4, cell="gru")
    with pytest.raises(ValueError, match=r"\(B, T\) tensor of token ids"):
        m(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(B, T\) tensor of token ids"):
        m(torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        m(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        m(torch.tensor([[1, 10]]))
    with pytest.raises(ValueError, match="cell must be one of"):
        rnn.RNNLanguageModel(10, 4, 4, cell="transformer")


def test_language_model_on_recall_task():
    """Notebook 04's use: logits[:, -1] over the recall vocabulary."""
    n_items, n_symbols = 6, 4
    m = rnn.RNNLanguageModel(recall_vocab_size(n_items, n_symbols), 8, 16, cell="lstm")
    x, y, dist = recall_batch(5, n_items, n_symbols, torch.Generator().manual_seed(0))
    assert m(x)[:, -1].shape == (5, recall_vocab_size(n_items, n_symbols))
    assert dist.min() >= 1 and dist.max() <= n_items


def test_sequence_loss_and_perplexity():
    torch.manual_seed(5)
    logits, targets = torch.randn(2, 4, 6), torch.randint(6, (2, 4))
    ref = F.cross_entropy(logits.reshape(-1, 6), targets.reshape(-1))
    torch.testing.assert_close(rnn.sequence_loss(logits, targets), ref)
    assert math.isclose(rnn.perplexity(math.log(6)), 6.0)
    with pytest.raises(ValueError, match=r"targets must have shape \(B, T\) = \(2, 4\)"):
        rnn.sequence_loss(logits, targets[:, :3])
    with pytest.raises(ValueError, match="empty sequence"):
        rnn.sequence_loss(torch.zeros(2, 0, 6), torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        rnn.sequence_loss(logits, torch.full((2, 4), 6))


def test_sample_with_temperature_distribution():
    logits = torch.tensor([1.0, 0.0, -1.0])
    n = 40000
    for T in (0.5, 1.0, 3.0):
        ids = rnn.sample_with_temperature(logits.expand(n, -1), T, torch.Generator().manual_seed(0))
        freq = torch.bincount(ids, minlength=3).double() / n
        torch.testing.assert_close(freq, torch.softmax(logits.double() / T, -1), atol=0.015, rtol=0)
    assert rnn.sample_with_temperature(logits, 0.0).item() == 0
    with pytest.raises(ValueError, match="temperature"):
        rnn.sample_with_temperature(logits, -1.0)
    with pytest.raises(ValueError, match=r"\(B, V\)"):
        rnn.sample_with_temperature(torch.zeros(2, 3, 4), 1.0)


def test_generate_and_sample_text():
    tok = CharTokenizer.from_text("abc \n")
    m = rnn.RNNLanguageModel(tok.vocab_size, 4, 8, cell="lstm")
    text = rnn.sample_text(m, tok, "ab", 10, temperature=1.0, seed=1)
    assert len(text) == 12 and text.startswith("ab")
    assert text == rnn.sample_text(m, tok, "ab", 10, temperature=1.0, seed=1)  # reproducible
    with pytest.raises(ValueError, match="unknown characters"):
        rnn.sample_text(m, tok, "abz", 5)
    with pytest.raises(ValueError, match="prompt is empty"):
        rnn.sample_text(m, tok, "", 5)
    # generation with carried state equals re-running the whole prefix (greedy)
    ids = rnn.generate(m, torch.tensor([[0, 1]]), 6, temperature=0.0)
    for t in range(2, ids.shape[1]):
        assert m(ids[:, :t])[:, -1].argmax(-1).item() == ids[0, t].item()


# ---- checkers: accept the reference, reject typical mistakes, never raise ----

def _cell_no_tanh(x, h, W_xh, W_hh, b):
    return x @ W_xh + h @ W_hh + b


def _cell_no_recurrence(x, h, W_xh, W_hh, b):
    return torch.tanh(x @ W_xh + b)


def _cell_transposed(x, h, W_xh, W_hh, b):
    return torch.tanh(x @ W_xh + h @ W_hh.T + b)


def _cell_todo(x, h, W_xh, W_hh, b):
    raise NotImplementedError()


def test_checker_rnn_cell():
    assert checks.rnn_cell(rnn.rnn_cell)
    for wrong in (_cell_no_tanh, _cell_no_recurrence, _cell_transposed):
        v = checks.rnn_cell(wrong)
        assert not v and v.status == "failed"
    assert checks.rnn_cell(_cell_todo).status == "not implemented"


def test_checker_sequence_loss():
    assert checks.sequence_loss(rnn.sequence_loss)
    wrongs = [
        lambda lg, y: F.cross_entropy(lg.reshape(-1, lg.shape[-1]), y.reshape(-1), reduction="sum"),
        lambda lg, y: -lg.gather(-1, y[..., None]).mean(),  # forgot log_softmax
        lambda lg, y: F.cross_entropy(lg, y),  # wrong layout: V must be dim 1 -> error, explained
        lambda lg, y: F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), y[:, 1:].reshape(-1)),  # shifted twice
    ]
    for wrong in wrongs:
        v = checks.sequence_loss(wrong)
        assert not v and v.status == "failed"


def test_checker_sample_with_temperature():
    assert checks.sample_with_temperature(rnn.sample_with_temperature)
    wrongs = [
        lambda lg, T, g: lg.argmax(-1),  # greedy always
        lambda lg, T, g: torch.multinomial(torch.softmax(lg * max(T, 1e-6), -1), 1, generator=g).squeeze(-1),
        lambda lg, T, g: torch.multinomial(torch.softmax(lg, -1), 1, generator=g).squeeze(-1),  # ignores T
        lambda lg, T, g: torch.softmax(lg / T, -1),  # returns probabilities
    ]
    for wrong in wrongs:
        v = checks.sample_with_temperature(wrong)
        assert not v and v.status == "failed"
