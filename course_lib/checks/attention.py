"""Checkers for notebook 03 (self-attention): weighted averaging, attention weights, causal
self-attention, sinusoidal positional encoding. Answers come from
:mod:`course_lib.models.attention`."""
from __future__ import annotations

import math

import torch

from ..models import attention as ref
from ._core import CheckFailed, checker, expect, expect_close, expect_grads, expect_tensor


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@checker("weighted_average", hint="Softmax(a) X: softmax over the n scores, then a weighted sum of the rows of X.")
def weighted_average(student) -> str:
    """``student(a, X)``: Softmax(a) X for a (n,) or (m, n) and X (n, d)."""
    a = torch.tensor([0.0, 0.0, math.log(2.0)])  # weights 1/4, 1/4, 1/2
    X = torch.tensor([[4.0, 0.0], [0.0, 4.0], [2.0, 2.0]])
    out = expect_tensor(student(a, X), "the hand example Softmax([0, 0, ln 2]) X", shape=(2,), dtype=X.dtype)
    expect_close(out, torch.tensor([2.0, 2.0]), "the hand example Softmax([0, 0, ln 2]) X",
                 hint="the weights are 1/4, 1/4, 1/2, so the answer is [2, 2]")
    g = _gen(1)
    for m, n, d in [(1, 5, 3), (4, 6, 2), (3, 4, 4)]:
        A, Xr = torch.randn(m, n, generator=g), torch.randn(n, d, generator=g)
        what = f"Softmax(A) X for A {m}x{n}, X {n}x{d}"
        out = expect_tensor(student(A, Xr), what, shape=(m, d), dtype=Xr.dtype, device=Xr.device)
        expect_close(out, ref.weighted_average(A, Xr), what,
                     hint="the softmax runs along each row of A (over the n inputs)")
    A, Xr = torch.randn(3, 5, generator=g) * 500, torch.randn(5, 2, generator=g)
    expect_close(student(A, Xr), ref.weighted_average(A, Xr), "Softmax(A) X for large scores (|a| ~ 1000)",
                 hint="exp(1000) overflows: use torch.softmax (or subtract the row maximum)")
    leaves = {"a": torch.randn(2, 4, generator=g).requires_grad_(),
              "X": torch.randn(4, 3, generator=g).requires_grad_()}
    expect_grads(student(*leaves.values()), leaves, ref.weighted_average, "Softmax(A) X")
    return "weights 1/4, 1/4, 1/2 average the rows to [2, 2]"


def _masks(g: torch.Generator, lead: tuple[int, ...], n_q: int, n_k: int) -> list[torch.Tensor]:
    """Boolean masks broadcastable to (*lead, n_q, n_k), of several ranks; each query keeps key 0."""
    out = []
    for shape in [(n_q, n_k), (*lead[-1:], n_q, n_k), (lead[0], 1, n_q, n_k), (*lead, n_q, n_k)]:
        m = torch.rand(*shape, generator=g) > 0.4
        m[..., 0] = True
        out.append(m)
    return out


@checker("attention_weights", hint="A = Softmax(Q K^T / sqrt(d_Q)), softmax on each row (dim=-1); "
         "masked scores are set to -inf BEFORE the softmax (masked_fill or torch.where, which broadcast).")
def attention_weights(student) -> str:
    """``student(Q, K, mask=None)`` -> A (..., n_q, n_k); ``mask`` broadcastable to (..., n_q, n_k)."""
    g = _gen(2)
    for shape_q, shape_k in [((5, 8), (5, 8)), ((3, 4, 16), (3, 6, 16)), ((2, 2, 7, 4), (2, 2, 7, 4))]:
        Q, K = torch.randn(*shape_q, generator=g), torch.randn(*shape_k, generator=g)
        what = f"A for Q {shape_q}, K {shape_k}"
        A = expect_tensor(student(Q, K), what, shape=(*shape_q[:-1], shape_k[-2]), dtype=Q.dtype, device=Q.device)
        expect_close(A, ref.attention_weights(Q, K), what,
                     hint="did you divide the scores by sqrt(d_Q) and take the softmax over the keys (last dim)?")
    Q, K = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    mask = torch.rand(6, 6, generator=g) > 0.4
    mask[:, 0] = True  # every query may attend to at least one key
    A = expect_tensor(student(Q, K, mask), "A with a mask", shape=(6, 6), dtype=Q.dtype)
    expect(bool((A[~mask].abs() < 1e-7).all()),
           "masked positions (mask False) must get weight exactly 0: the mask is True where a query MAY attend "
           "(the course's convention, F.scaled_dot_product_attention's), so fill the scores where it is False")
    expect_close(A.sum(-1), torch.ones(6), "the row sums of masked A",
                 hint="mask the scores with -inf before the softmax, so the rest renormalise to 1")
    expect_close(A, ref.attention_weights(Q, K, mask), "A with a mask")
    Q, K = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 5, 4, generator=g)
    for m in _masks(g, (2, 3), 5, 5):
        what = f"A for Q {tuple(Q.shape)} with a mask of shape {tuple(m.shape)}"
        A = expect_tensor(student(Q, K, m), what, shape=(2, 3, 5, 5), dtype=Q.dtype)
        expect_close(A, ref.attention_weights(Q, K, m), what,
                     hint="a mask broadcasts to the scores: use S.masked_fill(~mask, -inf) (indexing S[~mask] "
                          "needs a mask of S's full shape)")
    Q, K = torch.randn(2, 5, 8, generator=g) * 30, torch.randn(2, 5, 8, generator=g) * 30
    expect_close(student(Q, K), ref.attention_weights(Q, K), "A for large scores (|S| ~ 1000)",
                 hint="exp of a large score overflows: torch.softmax subtracts the maximum for you")
    leaves = {"Q": torch.randn(2, 4, 8, generator=g).requires_grad_(),
              "K": torch.randn(2, 5, 8, generator=g).requires_grad_()}
    m = torch.rand(4, 5, generator=g) > 0.3
    m[:, 0] = True
    expect_grads(student(leaves["Q"], leaves["K"], m), leaves, lambda q, k: ref.attention_weights(q, k, m), "A")
    return "rows sum to 1, masked keys get 0, masks broadcast"


def _causal(X, W_Q, W_K, W_V):
    return ref.self_attention(X, W_Q, W_K, W_V, ref.causal_mask(X.size(0)))


@checker("causal_self_attention", hint="Q = X W_Q, K = X W_K, V = X W_V; mask S[i, j] with -inf where j > i "
         "(torch.ones(n, n).tril() marks what each token may see), then Y = Softmax(S) V.")
def causal_self_attention(student) -> str:
    """``student(X, W_Q, W_K, W_V)`` -> Y (n, d_V): masked self-attention, token i sees j <= i."""
    g = _gen(3)
    for n, d_X, d_Q, d_V in [(6, 8, 4, 5), (9, 16, 16, 16), (1, 3, 2, 2)]:
        X = torch.randn(n, d_X, generator=g)
        W_Q, W_K = torch.randn(d_X, d_Q, generator=g), torch.randn(d_X, d_Q, generator=g)
        W_V = torch.randn(d_X, d_V, generator=g)
        Y = expect_tensor(student(X, W_Q, W_K, W_V), f"Y for n={n}", shape=(n, d_V), dtype=X.dtype, device=X.device)
        expect_close(Y[0], X[0] @ W_V, "the first output row",
                     hint="token 0 can only see itself, so Y[0] must equal V[0]; is your mask lower-triangular, "
                          "diagonal included?")
        for t in range(n - 1, 0, -max(1, n // 3)):  # change token t: outputs before t must not move
            X2 = X.clone()
            X2[t] = torch.randn(d_X, generator=g) * 2
            Y2 = expect_tensor(student(X2, W_Q, W_K, W_V), f"Y for n={n}", shape=(n, d_V))
            expect_close(Y2[:t], Y[:t], f"outputs 0..{t - 1} after changing token {t}",
                         hint="a future token leaked into earlier outputs: mask the scores before the softmax")
        expect_close(Y, _causal(X, W_Q, W_K, W_V), f"Y for n={n}")
    X, W = torch.randn(5, 8, generator=g) * 6, [torch.randn(8, 8, generator=g) * 6 for _ in range(3)]
    expect_close(student(X, *W), _causal(X, *W), "Y for large scores (|S| ~ 1000)",
                 hint="exp of a large score overflows: use torch.softmax (or your attention_weights)")
    leaves = {"X": torch.randn(5, 6, generator=g).requires_grad_(),
              **{k: torch.randn(6, 4, generator=g).requires_grad_() for k in ("W_Q", "W_K", "W_V")}}
    expect_grads(student(*leaves.values()), leaves, _causal, "Y")
    return "changing a future token leaves earlier outputs unchanged"


@checker("sinusoidal_positions", hint="E[p, 2i] = sin(p / 10000^(2i/d)), E[p, 2i+1] = cos(p / 10000^(2i/d)); "
         "even columns sin, odd columns cos, interleaved.")
def sinusoidal_positions(student) -> str:
    """``student(n, d)`` -> E (n, d) float32, the fixed encoding of Vaswani et al."""
    for n, d in [(10, 8), (50, 32), (7, 2), (1, 6), (512, 64)]:
        what = f"E for n={n}, d={d}"
        E = expect_tensor(student(n, d), what, shape=(n, d), dtype=torch.float32, device="cpu")
        expect_close(E[0], ref.sinusoidal_positions(1, d)[0], "row 0 (position 0)",
                     hint="at p = 0, sin = 0 (even columns) and cos = 1 (odd columns)")
        want = ref.sinusoidal_positions(n, d)
        if n > 1 and torch.allclose(E[:, 0::2], want[:, 1::2], atol=1e-4):
            raise CheckFailed("sines and cosines are swapped: even columns hold sin, odd columns cos")
        expect_close(E, want, what, atol=1e-4)
    return "every position gets a unique pattern of frequencies"
