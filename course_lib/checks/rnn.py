"""Checkers for notebook 01 (RNN language model): the RNN cell, the loss over a sequence,
temperature sampling. Answers come from :mod:`course_lib.models.rnn` and PyTorch."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._core import CheckFailed, checker, expect, expect_close, expect_grads, expect_tensor


def _cell_reference(x, h, W_xh, W_hh, b_h):
    return torch.tanh(x @ W_xh + h @ W_hh + b_h)


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
        what = f"h_t for B={B}, d={d}, H={H}"
        out = expect_tensor(student_cell(x, h, W_xh, W_hh, b_h), what, shape=(B, H), dtype=x.dtype, device=x.device)
        expected = torch_cell(x, h).detach()
        pre = x @ W_xh + h @ W_hh + b_h
        if torch.allclose(out.detach().double(), pre.double(), atol=1e-5):
            raise CheckFailed("your h_t equals the pre-activation: apply tanh to x_t W_xh + h_prev W_hh + b_h")
        if torch.allclose(out.detach().double(), torch.tanh(x @ W_xh + b_h).double(), atol=1e-5):
            raise CheckFailed("h_t ignores h_prev: the recurrence needs the h_prev W_hh term")
        if torch.allclose(out.detach().double(), torch.sigmoid(pre).double(), atol=1e-5):
            raise CheckFailed("you used sigmoid; the vanilla RNN cell uses tanh")
        expect_close(out, expected, what,
                     hint="compare with torch.nn.RNNCell (weight_ih = W_xh^T, bias_ih + bias_hh = b_h)")
    # saturated units: a tanh written as (e^z - e^-z) / (e^z + e^-z) overflows to nan
    x, h = torch.randn(2, 3, generator=g) * 60, torch.randn(2, 4, generator=g) * 60
    W_xh, W_hh, b_h = torch.randn(3, 4, generator=g), torch.randn(4, 4, generator=g), torch.randn(4, generator=g)
    expect_close(student_cell(x, h, W_xh, W_hh, b_h), _cell_reference(x, h, W_xh, W_hh, b_h),
                 "h_t for large pre-activations (|z| > 100)", hint="use torch.tanh, which saturates at +-1")
    leaves = {k: v.clone().requires_grad_() for k, v in
              dict(x_t=torch.randn(3, 5, generator=g), h_prev=torch.randn(3, 4, generator=g),
                   W_xh=torch.randn(5, 4, generator=g) * 0.5, W_hh=torch.randn(4, 4, generator=g) * 0.5,
                   b_h=torch.randn(4, generator=g)).items()}
    expect_grads(student_cell(*leaves.values()), leaves, _cell_reference, "h_t")
    return "equal to torch.nn.RNNCell"


def _loss_reference(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


@checker("sequence_loss", hint="log_softmax over the vocabulary, pick each target's log-probability, "
                               "average over every (b, t) position, negate.", forbid=("cross_entropy",))
def sequence_loss(student_loss) -> str:
    """``student_loss(logits (B, T, V), targets (B, T)) -> scalar`` mean next-token cross-entropy,
    without F.cross_entropy (the notebook asks for log_softmax and gather)."""
    g = torch.Generator().manual_seed(2)
    for B, T, V in ((2, 5, 7), (3, 1, 4), (1, 9, 11)):
        logits = torch.randn(B, T, V, generator=g) * 2
        targets = torch.randint(V, (B, T), generator=g)
        what = f"the loss for B={B}, T={T}, V={V}"
        out = expect_tensor(student_loss(logits, targets), what, floating=True)
        expect(out.dim() == 0, f"the loss should be a scalar (shape ()), got shape {tuple(out.shape)}")
        expected = _loss_reference(logits, targets)
        summed = expected * B * T
        if T > 1 and torch.isclose(out.double(), summed.double(), atol=1e-4):
            raise CheckFailed("you summed over positions; take the mean over all B*T predictions")
        if T > 1 and torch.isclose(out.double(), (expected * T).double(), atol=1e-4):
            raise CheckFailed("you summed over time and averaged over the batch; average over both")
        expect_close(out, expected, what,
                     hint="the loss is -(1/(B T)) sum log softmax(logits)[target]; compare with F.cross_entropy")
    # a uniform prediction costs log V
    V = 5
    targets = torch.tensor([[0, 3, 1]])
    uniform = student_loss(torch.zeros(1, 3, V), targets)
    expect_close(uniform, torch.tensor(math.log(V)), "the loss of uniform logits",
                 hint="uniform predictions over V tokens must cost log V nats")
    # confident logits: log(softmax(x)) or exp without the maximum overflows
    logits = torch.randn(2, 4, 6, generator=g) * 300
    targets = torch.randint(6, (2, 4), generator=g)
    expect_close(student_loss(logits, targets), _loss_reference(logits, targets),
                 "the loss for large logits (|logit| ~ 1000)", atol=1e-3,
                 hint="torch.log_softmax is stable; log(softmax(x)) gives log(0) = -inf for confident logits")
    logits = (torch.randn(3, 4, 7, generator=g) * 2).requires_grad_()
    targets = torch.randint(7, (3, 4), generator=g)
    expect_grads(student_loss(logits, targets), {"logits": logits}, lambda lg: _loss_reference(lg, targets),
                 "the loss")
    return "mean nats/token, equal to F.cross_entropy"


@checker("sample_with_temperature", hint="divide the logits by the temperature, softmax, then torch.multinomial "
                                         "with the generator; temperature 0 means argmax.")
def sample_with_temperature(student_sample) -> str:
    """``student_sample(logits (B, V), temperature, generator) -> ids (B,)`` from softmax(logits / T),
    each row from its own distribution."""
    rows = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5],
                         [-1.0, 0.0, 2.5, 0.5, 1.0],
                         [0.0, 0.0, 0.0, 0.0, 3.0]])
    R, V = rows.shape
    n = 8000  # draws per row; tol is about 5 standard errors
    batch = rows.repeat_interleave(n, dim=0)  # rows 0..n-1 are row 0, then row 1, ...
    tol = 0.025
    for temperature in (1.0, 0.5, 2.0):
        ids = student_sample(batch, temperature, torch.Generator().manual_seed(3))
        what = f"the sampled ids at temperature {temperature}"
        expect_tensor(ids, what, shape=(R * n,), device=batch.device)
        expect(ids.dtype == torch.long, f"{what} have dtype {ids.dtype}, expected torch.int64 (token ids; "
                                        f"torch.multinomial and argmax return int64)")
        expect(bool(((ids >= 0) & (ids < V)).all()), f"ids must lie in [0, {V})")
        if bool((ids.view(R, n) == ids.view(R, n)[:, :1]).all()):
            raise CheckFailed(f"every draw at temperature {temperature} is the same token within a row: "
                              "you took the argmax; sample with torch.multinomial instead")
        for r in range(R):
            freq = torch.bincount(ids.view(R, n)[r], minlength=V).double() / n
            want = torch.softmax(rows[r].double() / temperature, -1)
            if r > 0 and (freq - torch.softmax(rows[0].double() / temperature, -1)).abs().max() < tol:
                raise CheckFailed(f"row {r} is sampled from row 0's distribution: draw each row from its own "
                                  "softmax (torch.multinomial(probs, 1) samples every row)")
            wrong = torch.softmax(rows[r].double() * temperature, -1)
            if temperature != 1.0 and (freq - wrong).abs().max() < tol < (freq - want).abs().max():
                raise CheckFailed(f"at temperature {temperature} your samples follow softmax(logits * T); "
                                  "divide the logits by T instead")
            if (freq - want).abs().max() > tol:
                raise CheckFailed(f"at temperature {temperature} row {r}'s sample frequencies "
                                  f"{freq.numpy().round(3).tolist()} differ from softmax(logits / T) = "
                                  f"{want.numpy().round(3).tolist()}")
    a = student_sample(batch[::97], 1.0, torch.Generator().manual_seed(5))
    b = student_sample(batch[::97], 1.0, torch.Generator().manual_seed(5))
    expect(isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b),
           "two calls with generators of the same seed gave different ids: pass generator=generator to "
           "torch.multinomial (the global random state makes samples irreproducible)")
    big = rows * 400  # exp of the raw logits overflows
    ids = expect_tensor(student_sample(big, 1.0, torch.Generator().manual_seed(4)), "ids for large logits",
                        shape=(R,))
    expect(torch.equal(ids, big.argmax(-1)), f"with logits of size ~1000 each row's top token has probability ~1, "
           f"expected {big.argmax(-1).tolist()}, got {ids.tolist()}: torch.softmax is stable, exp(logits) is not")
    ids = student_sample(rows, 0.0, torch.Generator().manual_seed(0))
    expect_tensor(ids, "the ids at temperature 0", shape=(R,))
    expect(torch.equal(ids.long(), rows.argmax(-1)),
           f"temperature 0 should return each row's argmax {rows.argmax(-1).tolist()}, got {ids.tolist()}")
    return "each row follows softmax(logits / T) at T = 0.5, 1, 2; T = 0 is greedy"
