"""course_lib.models.attention against F.scaled_dot_product_attention, and the notebook-03 checkers."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import checks, measure
from course_lib.models import attention as att
from course_lib.models import seq2seq, transformer

# bfloat16 keeps 8 mantissa bits (relative rounding 2^-8 ~ 0.4%); we compare both implementations
# in bf16 against a float64 ground truth and allow 3e-2 absolute on unit-scale outputs.
BF16_ATOL = 3e-2


def _random_case(seed: int):
    g = torch.Generator().manual_seed(seed)
    B = int(torch.randint(1, 4, (1,), generator=g))
    h = int(torch.randint(1, 5, (1,), generator=g))
    nq = int(torch.randint(1, 20, (1,), generator=g))
    nk = int(torch.randint(1, 20, (1,), generator=g))
    d = int(torch.randint(1, 40, (1,), generator=g))
    dv = int(torch.randint(1, 40, (1,), generator=g))
    q = torch.randn(B, h, nq, d, generator=g)
    k = torch.randn(B, h, nk, d, generator=g)
    v = torch.randn(B, h, nk, dv, generator=g)
    mask = torch.rand(B, 1, nq, nk, generator=g) > 0.3
    mask[..., 0] = True  # no fully masked rows (compared separately below)
    return q, k, v, mask


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("masked", [False, True])
def test_sdpa_float32_matches_pytorch(seed, masked):
    q, k, v, mask = _random_case(seed)
    m = mask if masked else None
    ours = att.scaled_dot_product_attention(q, k, v, m)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("masked", [False, True])
def test_sdpa_bfloat16_within_tolerance(seed, masked):
    q, k, v, mask = _random_case(100 + seed)
    m = mask if masked else None
    truth = att.scaled_dot_product_attention(q.double(), k.double(), v.double(), m)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    ours = att.scaled_dot_product_attention(qb, kb, vb, m)
    theirs = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=m)
    assert ours.dtype == torch.bfloat16
    assert (ours.double() - truth).abs().max() < BF16_ATOL
    assert (theirs.double() - truth).abs().max() < BF16_ATOL


def test_causal_matches_is_causal_and_fully_masked_rows_are_zero():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8, generator=g) for _ in range(3))
    ours = att.scaled_dot_product_attention(q, k, v, att.causal_mask(9))
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5, rtol=1e-4)
    mask = torch.ones(9, 9, dtype=torch.bool)
    mask[3] = False
    out = att.scaled_dot_product_attention(q, k, v, mask)
    assert torch.isfinite(out).all() and (out[:, :, 3] == 0).all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-5, rtol=1e-4)


def test_weighted_average_hand_example():
    a = torch.tensor([0.0, 0.0, math.log(2.0)])
    X = torch.tensor([[4.0, 0.0], [0.0, 4.0], [2.0, 2.0]])
    torch.testing.assert_close(att.weighted_average(a, X), torch.tensor([2.0, 2.0]))
    A = torch.stack([a, torch.zeros(3)])
    torch.testing.assert_close(att.weighted_average(A, X)[1], X.mean(0))


def test_self_attention_lecture_notation_equals_sdpa():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(2, 7, 12, generator=g)
    W_Q, W_K, W_V = torch.randn(12, 5, generator=g), torch.randn(12, 5, generator=g), torch.randn(12, 6, generator=g)
    Y, A = att.self_attention(X, W_Q, W_K, W_V, return_weights=True)
    ref = F.scaled_dot_product_attention(X @ W_Q, X @ W_K, X @ W_V)
    torch.testing.assert_close(Y, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(A.sum(-1), torch.ones(2, 7))


def test_causal_property_future_token_does_not_change_past():
    torch.manual_seed(0)
    layer = att.SelfAttention(16, 8, causal=True)
    X = torch.randn(1, 10, 16)
    for t in range(10):
        X2 = X.clone()
        X2[:, t] = torch.randn(16) * 5
        Y, Y2 = layer(X), layer(X2)
        torch.testing.assert_close(Y[:, :t], Y2[:, :t])  # earlier outputs unchanged
        assert not torch.allclose(Y[:, t], Y2[:, t])     # the changed position itself does change


def test_permutation_equivariance_without_positions():
    torch.manual_seed(0)
    layer = att.SelfAttention(8, 8)
    X = torch.randn(6, 8)
    perm = torch.randperm(6)
    torch.testing.assert_close(layer(X[perm]), layer(X)[perm], atol=1e-6, rtol=1e-5)
    pos = att.PositionalEncoding(6, 8, "sinusoidal")
    Xe = pos(X[None])[0]
    Xpe = pos(X[perm][None])[0]
    assert not torch.allclose(layer(Xpe), layer(Xe)[perm], atol=1e-3)


def test_positional_encodings():
    E = att.sinusoidal_positions(20, 16)
    assert E.shape == (20, 16)
    torch.testing.assert_close(E[:, 0], torch.sin(torch.arange(20.0)))
    torch.testing.assert_close(E[:, 1], torch.cos(torch.arange(20.0)))
    torch.testing.assert_close(E[5, 2], torch.sin(torch.tensor(5.0) / 10000 ** (2 / 16)))
    for kind in att.PositionalEncoding.KINDS:
        pe = att.PositionalEncoding(12, 8, kind)
        x = torch.zeros(2, 5, 8)
        out = pe(x)
        assert out.shape == x.shape
        torch.testing.assert_close(out[0], pe.E[:5].detach())
    assert sum(p.numel() for p in att.PositionalEncoding(12, 8, "learned").parameters()) == 96
    assert sum(p.numel() for p in att.PositionalEncoding(12, 8, "sinusoidal").parameters()) == 0


def test_models_shapes_and_weights():
    m = att.OrderProbe(vocab_size=10, n_classes=4, max_len=8, d_model=16, pos="sinusoidal", n_layers=2)
    x = torch.randint(10, (3, 8))
    logits, maps = m(x, return_weights=True)
    assert logits.shape == (3, 4) and maps.shape == (3, 2, 8, 8)
    t = transformer.TransformerClassifier(10, 4, 8, d_model=16, n_heads=2, n_layers=3, causal=True)
    logits, maps = t(x, return_weights=True)
    assert logits.shape == (3, 4) and maps.shape == (3, 3, 2, 8, 8)
    assert (maps.triu(1) == 0).all()
    torch.testing.assert_close(t(x), logits)


def test_saved_activation_bytes_naive_is_quadratic_fused_is_not():
    def saved(n, fn):
        q, k, v = (torch.randn(1, 2, n, 16, requires_grad=True) for _ in range(3))
        return measure.saved_activation_bytes(fn, q, k, v)

    naive = [saved(n, att.scaled_dot_product_attention) for n in (64, 128)]
    fused = [saved(n, F.scaled_dot_product_attention) for n in (64, 128)]
    assert naive[1] >= 3.5 * naive[0]            # ~4x when n doubles: the n x n matrix
    assert fused[1] <= 2.5 * fused[0]            # ~2x: only O(n) statistics and the output
    assert naive[0] >= 2 * 64 * 64 * 4           # at least the (h, n, n) float32 matrix A
    assert measure.median_seconds(lambda: None, repeats=3) >= 0


@pytest.mark.parametrize("call, match", [
    (lambda: att.attention_weights(torch.randn(3, 4), torch.randn(3, 5)), "same d_Q"),
    (lambda: att.attention_weights(torch.randn(3, 4), torch.randn(3, 4), torch.ones(3, 3)), "bool"),
    (lambda: att.attention_weights(torch.randn(3, 4), torch.randn(5, 4), torch.ones(3, 3, dtype=torch.bool)),
     r"\(3, 5\)"),
    (lambda: att.scaled_dot_product_attention(torch.randn(3, 4), torch.randn(5, 4), torch.randn(4, 2)), "one row"),
    (lambda: att.self_attention(torch.randn(3, 4), torch.randn(5, 2), torch.randn(4, 2), torch.randn(4, 2)), "d_X=4"),
    (lambda: att.self_attention(torch.randn(3, 4), torch.randn(4, 2), torch.randn(4, 3), torch.randn(4, 2)), "d_Q"),
    (lambda: att.weighted_average(torch.randn(4), torch.randn(3, 2)), "n = 3"),
    (lambda: att.PositionalEncoding(4, 8, "rotary"), "kind"),
    (lambda: att.PositionalEncoding(4, 8)(torch.randn(1, 5, 8)), "max_len"),
    (lambda: att.PositionalEncoding(4, 8)(torch.randn(1, 3, 6)), "d_model=8"),
    (lambda: att.SelfAttention(8, 4)(torch.randn(3, 6)), "d_X=8"),
    (lambda: att.sinusoidal_positions(4, 7), "even"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- checkers: accept the reference, reject typical mistakes -------------------------------------

def _wrong_no_scaling(Q, K, mask=None):
    S = Q @ K.transpose(-2, -1)
    if mask is not None:
        S = S.masked_fill(~mask, float("-inf"))
    return S.softmax(-1)


def _wrong_softmax_dim(Q, K, mask=None):
    S = Q @ K.transpose(-2, -1) / math.sqrt(Q.size(-1))
    if mask is not None:
        S = S.masked_fill(~mask, float("-inf"))
    return S.softmax(-2)


def _wrong_mask_after_softmax(Q, K, mask=None):
    A = (Q @ K.transpose(-2, -1) / math.sqrt(Q.size(-1))).softmax(-1)
    return A if mask is None else A * mask


def test_checker_attention_weights():
    assert checks.attention_weights(att.attention_weights)
    for wrong in (_wrong_no_scaling, _wrong_softmax_dim, _wrong_mask_after_softmax):
        assert not checks.attention_weights(wrong)


def test_checker_weighted_average():
    assert checks.weighted_average(att.weighted_average)
    assert not checks.weighted_average(lambda a, X: a @ X)                       # no softmax
    assert not checks.weighted_average(lambda a, X: torch.softmax(a, 0) @ X)     # wrong axis for (m, n)


def _causal_ref(X, W_Q, W_K, W_V):
    return att.self_attention(X, W_Q, W_K, W_V, att.causal_mask(X.size(0)))


def test_checker_causal_self_attention():
    assert checks.causal_self_attention(_causal_ref)
    n_of = lambda X: X.size(0)
    future = lambda X, W_Q, W_K, W_V: att.self_attention(  # sees the future, not the past
        X, W_Q, W_K, W_V, torch.ones(n_of(X), n_of(X), dtype=torch.bool).triu())
    strict = lambda X, W_Q, W_K, W_V: att.self_attention(  # excludes itself: row 0 fully masked
        X, W_Q, W_K, W_V, torch.ones(n_of(X), n_of(X), dtype=torch.bool).tril(-1))
    unmasked = lambda X, W_Q, W_K, W_V: att.self_attention(X, W_Q, W_K, W_V)
    for wrong in (future, strict, unmasked):
        assert not checks.causal_self_attention(wrong)
    v = checks.causal_self_attention(lambda *a: (_ for _ in ()).throw(NotImplementedError()))
    assert not v and v.status == "not implemented"


def test_checker_sinusoidal_positions():
    assert checks.sinusoidal_positions(att.sinusoidal_positions)
    swapped = lambda n, d: att.sinusoidal_positions(n, d).view(n, d // 2, 2).flip(-1).reshape(n, d)
    concat = lambda n, d: torch.cat([att.sinusoidal_positions(n, d)[:, 0::2], att.sinusoidal_positions(n, d)[:, 1::2]],
                                    1)

    def no_two(n, d):  # exponent i/d instead of 2i/d
        p = torch.arange(n, dtype=torch.float32)[:, None]
        f = 10000.0 ** (-torch.arange(d // 2) / d)
        E = torch.zeros(n, d)
        E[:, 0::2], E[:, 1::2] = torch.sin(p * f), torch.cos(p * f)
        return E

    for wrong in (swapped, concat, no_two):
        assert not checks.sinusoidal_positions(wrong)


def test_one_mask_convention_across_the_course():
    """True = may attend, everywhere: 02's src_valid, 03's mask, 04's attn_mask and key_valid, and
    F.scaled_dot_product_attention; nn.MultiheadAttention (True = may NOT attend) gets ~mask."""
    g = torch.Generator().manual_seed(7)
    lengths = torch.tensor([5, 3, 1])
    valid = seq2seq.valid_mask_from_lengths(lengths, 5)          # (B, n_keys), True at real tokens
    assert valid.sum(-1).tolist() == lengths.tolist()
    e = torch.randn(3, 5, generator=g)
    alpha = seq2seq.masked_softmax(e, valid)                      # 02
    assert (alpha[~valid] == 0).all() and (alpha[valid] > 0).all()
    Q, K = torch.randn(3, 4, 8, generator=g), torch.randn(3, 5, 8, generator=g)
    key_mask = valid[:, None, :].expand(3, 4, 5)                   # every query may see the real keys
    A = att.attention_weights(Q, K, key_mask)                       # 03
    assert (A.transpose(1, 2)[~valid] == 0).all() and (A.transpose(1, 2)[valid] > 0).all()
    V = torch.randn(3, 5, 6, generator=g)
    torch.testing.assert_close(A @ V, F.scaled_dot_product_attention(Q, K, V, attn_mask=key_mask),
                               atol=1e-5, rtol=1e-4)
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    ours = transformer.MultiHeadAttention.from_torch(mha).eval()   # 04
    x = torch.randn(3, 5, 8, generator=g)
    may = torch.rand(5, 5, generator=g) > 0.4
    may[:, 0] = True
    with torch.no_grad():
        y, w = ours(x, attn_mask=may, key_valid=valid, return_weights=True)
        theirs, _ = mha(x, x, x, attn_mask=~may, key_padding_mask=~valid, need_weights=False)
    torch.testing.assert_close(y, theirs, atol=1e-5, rtol=1e-4)
    assert (w.permute(0, 3, 1, 2)[~valid] == 0).all()               # no weight on padded keys
    assert (w[:, :, ~may] == 0).all()                               # nor where attn_mask is False
    with torch.no_grad():                                            # the other meaning gives another answer
        wrong = ours(x, attn_mask=~may, key_valid=~valid | (torch.arange(5) == 0))
    assert not torch.allclose(wrong, y, atol=1e-3)
