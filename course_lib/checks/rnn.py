"""Checkers for notebook 01 (RNN language model): the RNN cell, the loss over a sequence,
temperature sampling. Answers come from :mod:`course_lib.models.rnn` and PyTorch."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._core import CheckFailed, checker, expect, expect_close, expect_tensor


@checker("rnn_cell", hint="h_t = tanh(x_t W_xh + h_prev W_hh + b_h), with W_xh (d, H) on the right of x_t.")
def rnn_cell(student_cell) -> str:
    """``student_cell(x_t, h_prev, W_xh, W_hh, b_h) -> h_t`` must equal one tanh step of nn.RNNCell."""
    g = torch.Generator().manual_seed(1)
    for B, d, H in ((4, 3, 5), (2, 7, 4), (1, 6, 6)):
        torch_cell = nn.RNNCell(d, H)
        with torch.no_grad():
            for p in torch_cell.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.7)
        x = torch.randn(B, d, generator=g)
        h = torch.randn(B, H, generator=g)
        W_xh = torch_cell.weight_ih.detach().T.contiguous()
        W_hh = torch_cell.weight_hh.detach().T.contiguous()
        b_h = (torch_cell.bias_ih + torch_cell.bias_hh).detach()
        out = student_cell(x, h, W_xh, W_hh, b_h)
        expect_tensor(out, f"h_t for B={B}, d={d}, H={H}", shape=(B, H))
        expected = torch_cell(x, h).detach()
        pre = x @ W_xh + h @ W_hh + b_h
        if torch.allclose(out.detach().double(), pre.double(), atol=1e-5):
            raise CheckFailed("your h_t equals the pre-activation: apply tanh to x_t W_xh + h_prev W_hh + b_h")
        if torch.allclose(out.detach().double(), torch.tanh(x @ W_xh + b_h).double(), atol=1e-5):
            raise CheckFailed("h_t ignores h_prev: the recurrence needs the h_prev W_hh term")
        if torch.allclose(out.detach().double(), torch.sigmoid(pre).double(), atol=1e-5):
            raise CheckFailed("you used sigmoid; the vanilla RNN cell uses tanh")
        expect_close(out, expected, f"h_t for B={B}, d={d}, H={H}",
                     hint="compare with torch.nn.RNNCell (weight_ih = W_xh^T, bias_ih + bias_hh = b_h)")
    return "equal to torch.nn.RNNCell"


@checker("sequence_loss", hint="log_softmax over the vocabulary, pick each target's log-probability, "
                               "average over every (b, t) position, negate.")
def sequence_loss(student_loss) -> str:
    """``student_loss(logits (B, T, V), targets (B, T)) -> scalar`` mean next-token cross-entropy."""
    g = torch.Generator().manual_seed(2)
    for B, T, V in ((2, 5, 7), (3, 1, 4), (1, 9, 11)):
        logits = torch.randn(B, T, V, generator=g) * 2
        targets = torch.randint(V, (B, T), generator=g)
        out = student_loss(logits, targets)
        expect_tensor(out, f"the loss for B={B}, T={T}, V={V}")
        expect(out.dim() == 0, f"the loss should be a scalar (shape ()), got shape {tuple(out.shape)}")
        expected = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
        summed = expected * B * T
        if T > 1 and torch.isclose(out.double(), summed.double(), atol=1e-4):
            raise CheckFailed("you summed over positions; take the mean over all B*T predictions")
        if T > 1 and torch.isclose(out.double(), (expected * T).double(), atol=1e-4):
            raise CheckFailed("you summed over time and averaged over the batch; average over both")
        expect_close(out, expected, f"the loss for B={B}, T={T}, V={V}",
                     hint="the loss is -(1/(B T)) sum log softmax(logits)[target]; compare with F.cross_entropy")
    # a perfect prediction has (almost) zero loss, a uniform one log V
    V = 5
    targets = torch.tensor([[0, 3, 1]])
    uniform = student_loss(torch.zeros(1, 3, V), targets)
    expect_close(uniform, torch.tensor(float(torch.log(torch.tensor(float(V))))), "the loss of uniform logits",
                 hint="uniform predictions over V tokens must cost log V nats")
    return "mean nats/token, equal to F.cross_entropy"


@checker("sample_with_temperature", hint="divide the logits by the temperature, softmax, then torch.multinomial; "
                                         "temperature 0 means argmax.")
def sample_with_temperature(student_sample) -> str:
    """``student_sample(logits (B, V), temperature, generator) -> ids (B,)`` from softmax(logits / T)."""
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    n = 20000
    batch = logits.expand(n, -1).contiguous()
    tol = 0.02  # about 6 standard errors at n = 20000
    for temperature in (1.0, 0.5, 2.0):
        g = torch.Generator().manual_seed(3)
        ids = student_sample(batch, temperature, g)
        expect_tensor(ids, f"the sampled ids at temperature {temperature}", shape=(n,))
        expect(not ids.dtype.is_floating_point, f"ids should be integer token ids, got dtype {ids.dtype}")
        expect(bool(((ids >= 0) & (ids < len(logits))).all()), f"ids must lie in [0, {len(logits)})")
        freq = torch.bincount(ids.long(), minlength=len(logits)).double() / n
        want = torch.softmax(logits.double() / temperature, -1)
        if bool((ids == ids[0]).all()):
            raise CheckFailed(f"every draw at temperature {temperature} is token {int(ids[0])}: "
                              "you took the argmax; sample with torch.multinomial instead")
        wrong = torch.softmax(logits.double() * temperature, -1)
        if temperature != 1.0 and (freq - wrong).abs().max() < tol < (freq - want).abs().max():
            raise CheckFailed(f"at temperature {temperature} your samples follow softmax(logits * T); "
                              "divide the logits by T instead")
        if (freq - want).abs().max() > tol:
            raise CheckFailed(f"at temperature {temperature} the sample frequencies {freq.numpy().round(3).tolist()} "
                              f"differ from softmax(logits / T) = {want.numpy().round(3).tolist()}")
    ids = student_sample(logits[None].repeat(4, 1), 0.0, torch.Generator().manual_seed(0))
    expect_tensor(ids, "the ids at temperature 0", shape=(4,))
    expect(bool((ids == 0).all()), f"temperature 0 should return the argmax (token 0) every time, got {ids.tolist()}")
    return "frequencies match softmax(logits / T) at T = 0.5, 1, 2; T = 0 is greedy"
