"""Checkers for notebook 03 (self-attention): weighted averaging, attention weights, causal
self-attention, sinusoidal positional encoding. Answers come from
:mod:`course_lib.models.attention`."""
from __future__ import annotations

import math

import torch

from ..models import attention as ref
from ._core import checker, expect, expect_close, expect_tensor


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@checker("weighted_average", hint="Softmax(a) X: softmax over the n scores, then a weighted sum of the rows of X.")
def weighted_average(student) -> str:
    """``student(a, X)``: Softmax(a) X for a (n,) or (m, n) and X (n, d)."""
    a = torch.tensor([0.0, 0.0, math.log(2.0)])  # weights 1/4, 1/4, 1/2
    X = torch.tensor([[4.0, 0.0], [0.0, 4.0], [2.0, 2.0]])
    expect_close(student(a, X), torch.tensor([2.0, 2.0]), "the hand example Softmax([0, 0, ln 2]) X",
                 hint="the weights are 1/4, 1/4, 1/2, so the answer is [2, 2]")
    g = _gen(1)
    for m, n, d in [(1, 5, 3), (4, 6, 2)]:
        A, Xr = torch.randn(m, n, generator=g), torch.randn(n, d, generator=g)
        expect_close(student(A, Xr), ref.weighted_average(A, Xr), f"Softmax(A) X for A {m}x{n}, X {n}x{d}",
                     hint="the softmax runs along each row of A (over the n inputs)")
    return "weights 1/4, 1/4, 1/2 average the rows to [2, 2]"


@checker("attention_weights", hint="A = Softmax(Q K^T / sqrt(d_Q)), softmax on each row (dim=-1); "
         "masked scores are set to -inf BEFORE the softmax.")
def attention_weights(student) -> str:
    """``student(Q, K, mask=None)`` -> A (..., n_q, n_k)."""
    g = _gen(2)
    for shape_q, shape_k in [((5, 8), (5, 8)), ((3, 4, 16), (3, 6, 16)), ((2, 2, 7, 4), (2, 2, 7, 4))]:
        Q, K = torch.randn(*shape_q, generator=g), torch.randn(*shape_k, generator=g)
        A = expect_tensor(student(Q, K), f"A for Q {shape_q}, K {shape_k}")
        expect_close(A, ref.attention_weights(Q, K), f"A for Q {shape_q}, K {shape_k}",
                     hint="did you divide the scores by sqrt(d_Q) and take the softmax over the keys (last dim)?")
    Q, K = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    mask = torch.rand(6, 6, generator=g) > 0.4
    mask[:, 0] = True  # every query may attend to at least one key
    A = expect_tensor(student(Q, K, mask), "A with a mask", shape=(6, 6))
    expect(bool((A[~mask].abs() < 1e-7).all()), "masked positions must get weight exactly 0")
    expect_close(A.sum(-1), torch.ones(6), "the row sums of masked A",
                 hint="mask the scores with -inf before the softmax, so the rest renormalise to 1")
    expect_close(A, ref.attention_weights(Q, K, mask), "A with a mask")
    return "rows sum to 1, masked keys get 0"


@checker("causal_self_attention", hint="Q = X W_Q, K = X W_K, V = X W_V; mask S[i, j] with -inf where j > i "
         "(torch.ones(n, n).tril() marks what each token may see), then Y = Softmax(S) V.")
def causal_self_attention(student) -> str:
    """``student(X, W_Q, W_K, W_V)`` -> Y (n, d_V): masked self-attention, token i sees j <= i."""
    g = _gen(3)
    for n, d_X, d_Q, d_V in [(6, 8, 4, 5), (9, 16, 16, 16)]:
        X = torch.randn(n, d_X, generator=g)
        W_Q, W_K = torch.randn(d_X, d_Q, generator=g), torch.randn(d_X, d_Q, generator=g)
        W_V = torch.randn(d_X, d_V, generator=g)
        Y = expect_tensor(student(X, W_Q, W_K, W_V), f"Y for n={n}", shape=(n, d_V))
        Y_ref = ref.self_attention(X, W_Q, W_K, W_V, ref.causal_mask(n))
        expect_close(Y[0], X[0] @ W_V, "the first output row",
                     hint="token 0 can only see itself, so Y[0] must equal V[0]; is your mask lower-triangular, "
                          "diagonal included?")
        X2 = X.clone()
        X2[-1] += 3.0
        Y2 = student(X2, W_Q, W_K, W_V)
        expect_close(Y2[:-1], Y[:-1], "earlier outputs after changing the LAST token",
                     hint="a future token leaked into earlier outputs: mask the scores before the softmax")
        expect_close(Y, Y_ref, f"Y for n={n}")
    return "changing a future token leaves earlier outputs unchanged"


@checker("sinusoidal_positions", hint="E[p, 2i] = sin(p / 10000^(2i/d)), E[p, 2i+1] = cos(p / 10000^(2i/d)); "
         "even columns sin, odd columns cos, interleaved.")
def sinusoidal_positions(student) -> str:
    """``student(n, d)`` -> E (n, d), the fixed encoding of Vaswani et al."""
    for n, d in [(10, 8), (50, 32), (7, 2)]:
        E = expect_tensor(student(n, d), f"E for n={n}, d={d}", shape=(n, d))
        expect_close(E[0], ref.sinusoidal_positions(1, d)[0], "row 0 (position 0)",
                     hint="at p = 0, sin = 0 (even columns) and cos = 1 (odd columns)")
        expect_close(E, ref.sinusoidal_positions(n, d), f"E for n={n}, d={d}", atol=1e-4)
    return "every position gets a unique pattern of frequencies"
