"""course_lib.models.transformer against nn.MultiheadAttention / nn.TransformerEncoderLayer, the
from-scratch multi-head attention of notebook 04, and the notebook-04 checkers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from course_lib import checks
from course_lib.models import attention as att
from course_lib.models import transformer as tr

BF16_ATOL = 5e-2  # bf16 (8 mantissa bits) through 3 matmuls + softmax, unit-scale outputs


def _mha_case(seed: int):
    g = torch.Generator().manual_seed(seed)
    h = int(torch.randint(1, 5, (1,), generator=g))
    d = h * int(torch.randint(1, 9, (1,), generator=g))
    B = int(torch.randint(1, 4, (1,), generator=g))
    n = int(torch.randint(1, 16, (1,), generator=g))
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(d, h, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_(0, 0.1)
        mha.out_proj.bias.normal_(0, 0.1)
    x = torch.randn(B, n, d, generator=g)
    may = torch.rand(n, n, generator=g) > 0.3
    may.fill_diagonal_(True)
    pad = torch.rand(B, n, generator=g) > 0.7
    pad[:, 0] = False
    return mha, x, may, pad


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("masks", ["none", "attn", "causal", "padding"])
def test_mha_matches_torch_float32(seed, masks):
    mha, x, may, pad = _mha_case(seed)
    ours = tr.MultiHeadAttention.from_torch(mha).eval()
    n = x.size(1)
    with torch.no_grad():
        if masks == "none":
            y, _ = mha(x, x, x, need_weights=False)
            y2 = ours(x)
        elif masks == "attn":  # nn.MultiheadAttention's bool mask marks what may NOT be attended
            y, _ = mha(x, x, x, attn_mask=~may, need_weights=False)
            y2 = ours(x, attn_mask=may)
        elif masks == "causal":
            y, _ = mha(x, x, x, attn_mask=~att.causal_mask(n), need_weights=False)
            y2 = ours(x, causal=True)
        else:
            # the course's key_valid is True at real keys; nn.MultiheadAttention's key_padding_mask is
            # True at padding: the boundary converts with ~
            y, _ = mha(x, x, x, key_padding_mask=pad, need_weights=False)
            y2 = ours(x, key_valid=~pad)
    torch.testing.assert_close(y2, y, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_mha_weights_match_torch(seed):
    mha, x, may, _ = _mha_case(seed)
    ours = tr.MultiHeadAttention.from_torch(mha).eval()
    with torch.no_grad():
        y, w = mha(x, x, x, attn_mask=~may, need_weights=True, average_attn_weights=False)
        y2, w2 = ours(x, attn_mask=may, return_weights=True)
    torch.testing.assert_close(y2, y, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w2, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_mha_bfloat16_within_tolerance(seed):
    mha, x, may, _ = _mha_case(20 + seed)
    ours = tr.MultiHeadAttention.from_torch(mha).eval()
    with torch.no_grad():
        truth, _ = mha.double()(x.double(), x.double(), x.double(), attn_mask=~may, need_weights=False)
        ours_bf = ours.bfloat16()(x.bfloat16(), attn_mask=may)
        theirs_bf, _ = mha.bfloat16()(*(x.bfloat16(),) * 3, attn_mask=~may, need_weights=False)
    assert ours_bf.dtype == torch.bfloat16
    assert (ours_bf.double() - truth).abs().max() < BF16_ATOL
    assert (theirs_bf.double() - truth).abs().max() < BF16_ATOL


def _lecture_weights(mha: nn.MultiheadAttention):
    """nn.MultiheadAttention computes x W^T; the lecture writes X W_Q, so W_Q = in_proj[:d].T."""
    d = mha.embed_dim
    W = mha.in_proj_weight.detach()
    return W[:d].T, W[d:2 * d].T, W[2 * d:].T, mha.out_proj.weight.detach().T


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("causal", [False, True])
def test_from_scratch_multi_head_equals_torch(seed, causal):
    _, x, _, _ = _mha_case(seed)
    d = x.size(-1)
    h = [k for k in (4, 3, 2, 1) if d % k == 0][0]
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(d, h, batch_first=True, bias=False).eval()
    n = x.size(1)
    mask = att.causal_mask(n) if causal else None
    with torch.no_grad():
        y, _ = mha(x, x, x, attn_mask=None if mask is None else ~mask, need_weights=False)
    ours = att.multi_head_self_attention(x, *_lecture_weights(mha), n_heads=h, mask=mask)
    torch.testing.assert_close(ours, y, atol=1e-5, rtol=1e-4)


def _copy_block_to_torch(blk: tr.Block) -> nn.TransformerEncoderLayer:
    d = blk.ln1.normalized_shape[0]
    layer = nn.TransformerEncoderLayer(d, blk.attn.n_heads, dim_feedforward=blk.mlp.fc.out_features, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=blk.norm_first).eval()
    with torch.no_grad():
        layer.self_attn.in_proj_weight.copy_(blk.attn.qkv.weight)
        layer.self_attn.in_proj_bias.copy_(blk.attn.qkv.bias)
        layer.self_attn.out_proj.weight.copy_(blk.attn.proj.weight)
        layer.self_attn.out_proj.bias.copy_(blk.attn.proj.bias)
        layer.linear1.load_state_dict(blk.mlp.fc.state_dict())
        layer.linear2.load_state_dict(blk.mlp.proj.state_dict())
        layer.norm1.load_state_dict(blk.ln1.state_dict())
        layer.norm2.load_state_dict(blk.ln2.state_dict())
    return layer


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_block_matches_torch_encoder_layer(norm_first, causal):
    torch.manual_seed(0)
    blk = tr.Block(32, 4, norm_first=norm_first, causal=causal).eval()
    layer = _copy_block_to_torch(blk)
    x = torch.randn(3, 10, 32)
    with torch.no_grad():
        mask = nn.Transformer.generate_square_subsequent_mask(10) if causal else None
        ref = layer(x, src_mask=mask, is_causal=causal)
        torch.testing.assert_close(blk(x), ref, atol=1e-5, rtol=1e-4)


def test_decoder_block_causal_property():
    torch.manual_seed(0)
    enc = tr.TransformerEncoder(2, 16, 4, causal=True).eval()
    x = torch.randn(2, 8, 16)
    with torch.no_grad():
        y = enc(x)
        for t in range(8):
            x2 = x.clone()
            x2[:, t] += torch.randn(16)
            y2 = enc(x2)
            torch.testing.assert_close(y2[:, :t], y[:, :t])
            assert not torch.allclose(y2[:, t], y[:, t])


@pytest.mark.parametrize("d, r, bias", [(64, 4.0, True), (48, 2.0, True), (32, 4.0, False), (768, 4.0, True)])
def test_block_param_count_formula(d, r, bias):
    counted = sum(p.numel() for p in tr.Block(d, 4, mlp_ratio=r, bias=bias).parameters())
    assert tr.block_param_count(d, r, bias) == counted
    if r == 4.0 and bias:
        assert counted == 12 * d * d + 13 * d


def test_split_merge_roundtrip_and_layout():
    x = torch.arange(2 * 3 * 8.0).view(2, 3, 8)
    s = tr.split_heads(x, 4)
    assert s.shape == (2, 4, 3, 2)
    torch.testing.assert_close(s[:, 2], x[..., 4:6])
    torch.testing.assert_close(tr.merge_heads(s), x)


@pytest.mark.parametrize("call, match", [
    (lambda: tr.MultiHeadAttention(10, 3), "must divide d_model=10"),
    (lambda: tr.MultiHeadAttention(8, 2)(torch.randn(1, 4, 6)), "d_model=8"),
    (lambda: tr.MultiHeadAttention(8, 2)(torch.randn(1, 4, 8), attn_mask=torch.ones(4, 4)), "bool"),
    (lambda: tr.MultiHeadAttention(8, 2)(torch.randn(1, 4, 8), attn_mask=torch.ones(4, 5, dtype=torch.bool)),
     r"\(4, 4\)"),
    (lambda: tr.MultiHeadAttention(8, 2)(torch.randn(2, 4, 8), key_valid=torch.ones(2, 5, dtype=torch.bool)),
     r"\(2, 4\)"),
    (lambda: tr.MultiHeadAttention(8, 2)(torch.randn(2, 4, 8), key_valid=torch.ones(2, 4)), "bool"),
    (lambda: tr.MultiHeadAttention(8, 2)(torch.randn(2, 4, 8), context=torch.randn(2, 3, 6)), "context"),
    (lambda: tr.split_heads(torch.randn(1, 2, 10), 4), "not divisible"),
    (lambda: att.multi_head_self_attention(torch.randn(3, 6), *(torch.randn(6, 6),) * 4, n_heads=4), "divide"),
    (lambda: att.multi_head_self_attention(torch.randn(3, 6), torch.randn(6, 4), *(torch.randn(6, 6),) * 3,
                                           n_heads=2), "W_Q"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- checkers ------------------------------------------------------------------------------------

def test_checker_split_heads():
    assert checks.split_heads(tr.split_heads)
    no_transpose = lambda x, h: x.reshape(x.size(0), h, x.size(1), x.size(2) // h)
    strided = lambda x, h: x.view(x.size(0), x.size(1), x.size(2) // h, h).permute(0, 3, 1, 2)
    for wrong in (no_transpose, strided):
        assert not checks.split_heads(wrong)


def test_checker_merge_heads():
    assert checks.merge_heads(tr.merge_heads)
    no_transpose = lambda x: x.reshape(x.size(0), x.size(2), x.size(1) * x.size(3))
    head_sum = lambda x: x.sum(1).repeat(1, 1, x.size(1))
    for wrong in (no_transpose, head_sum):
        assert not checks.merge_heads(wrong)


def _block_ref(block, x, causal=False):
    x = x + block.attn(block.ln1(x), causal=causal)
    return x + block.mlp(block.ln2(x))


def test_checker_block_forward():
    assert checks.block_forward(_block_ref)
    post_norm = lambda b, x, causal=False: b.ln2((y := b.ln1(x + b.attn(x, causal=causal))) + b.mlp(y))
    no_residual = lambda b, x, causal=False: b.mlp(b.ln2(b.attn(b.ln1(x), causal=causal)))
    never_causal = lambda b, x, causal=False: _block_ref(b, x, causal=False)
    for wrong in (post_norm, no_residual, never_causal):
        assert not checks.block_forward(wrong)


def test_checker_block_param_count():
    assert checks.block_param_count(tr.block_param_count)
    no_bias = lambda d, r=4.0, bias=True: 4 * d * d + 2 * int(r * d) * d + 2 * 2 * d
    no_out_proj = lambda d, r=4.0, bias=True: tr.block_param_count(d, r, bias) - d * d - (d if bias else 0)
    no_norms = lambda d, r=4.0, bias=True: tr.block_param_count(d, r, bias) - (4 * d if bias else 2 * d)
    for wrong in (no_bias, no_out_proj, no_norms):
        assert not checks.block_param_count(wrong)


def test_sdpa_used_by_mha_equals_explicit_weights():
    torch.manual_seed(1)
    m = tr.MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        y_fast = m(x, causal=True)
        y_slow, w = m(x, causal=True, return_weights=True)
    torch.testing.assert_close(y_fast, y_slow, atol=1e-5, rtol=1e-4)
    assert (w.triu(1) == 0).all()


def test_layernorm_eps_is_configurable():
    from course_lib.models.transformer import TransformerEncoder

    enc = TransformerEncoder(2, 16, 4, norm_eps=1e-6)
    eps = {m.eps for m in enc.modules() if isinstance(m, torch.nn.LayerNorm)}
    assert eps == {1e-6}
