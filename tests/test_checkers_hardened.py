"""Every checker the notebooks call, against the mistakes of issue 11 and correct answers written
differently: the reference passes, at least three typical mistakes fail (each for its reason),
at least one alternative correct answer passes, and an unfinished exercise is "not implemented".

The table CASES holds, per checker: the reference, the alternatives, and (mistake, what the
verdict must say) pairs; a needle is a substring of the message or, in brackets, the reason.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib import checks
from course_lib.models import attention as att
from course_lib.models import captioner as C
from course_lib.models import gpt as G
from course_lib.models import llava, lm
from course_lib.models import rnn as R
from course_lib.models import seq2seq as S2S
from course_lib.models import transformer as TR
from course_lib.models import vit as V
from course_lib.models.gpt import GPTConfig
from course_lib.tasks import instructions
from course_lib.tokenizers import IGNORE
from course_lib.tokenizers import merge as ref_merge
from course_lib.tuning import dpo, ppo, reward

CASES: dict[str, tuple] = {}


def case(name, reference, alternatives, mistakes):
    CASES[name] = (reference, alternatives, mistakes)


# --- 00 softmax ---------------------------------------------------------------------------------

def sm_ref(x):
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def sm_detached_max(x):  # the shift is a constant for the gradient: softmax(x - c) = softmax(x)
    e = (x - x.amax(-1, keepdim=True).detach()).exp()
    return e / e.sum(-1, keepdim=True)


case("softmax", sm_ref,
     [lambda x: torch.exp(x - torch.logsumexp(x, -1, keepdim=True)),
      sm_detached_max],
     [(lambda x: x.exp() / x.exp().sum(-1, keepdim=True), "overflow"),
      (lambda x: torch.exp(x - x.max()) / torch.exp(x - x.max()).sum(-1, keepdim=True), "each row's own maximum"),
      (lambda x: torch.softmax(x, dim=-1), "[rule]"),
      (lambda x: F.softmax(x, dim=-1), "[rule]"),
      (lambda x: x.softmax(-1), "[rule]"),
      (lambda x: (sm_ref(x), x.zero_())[0], "[mutation]"),
      (lambda x: sm_ref(x).double(), "dtype"),
      (lambda x: sm_ref(x.detach()), "gradient"),
      (lambda x: torch.exp(x - x.max(0, keepdim=True).values) / torch.exp(x - x.max(0, keepdim=True).values).sum(
          0, keepdim=True), "differs")])


# --- 01 RNN -------------------------------------------------------------------------------------

case("rnn_cell", R.rnn_cell,
     [lambda x, h, Wx, Wh, b: torch.tanh(torch.addmm(b, x, Wx) + h @ Wh),
      lambda x, h, Wx, Wh, b: torch.tanh(torch.cat([x, h], -1) @ torch.cat([Wx, Wh], 0) + b)],
     [(lambda x, h, Wx, Wh, b: x @ Wx + h @ Wh + b, "pre-activation"),
      (lambda x, h, Wx, Wh, b: torch.sigmoid(x @ Wx + h @ Wh + b), "sigmoid"),
      (lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + b), "ignores h_prev"),
      (lambda x, h, Wx, Wh, b: (lambda z: (z.exp() - (-z).exp()) / (z.exp() + (-z).exp()))(x @ Wx + h @ Wh + b),
       "large pre-activations"),
      (lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + h @ Wh + b).detach(), "gradient"),
      (lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + h.mul_(1.0001) @ Wh + b), "[mutation]")])


def seq_ref(logits, targets):
    return -torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0].mean()


case("sequence_loss", seq_ref,
     [lambda lg, t: F.nll_loss(F.log_softmax(lg.double(), -1).flatten(0, 1), t.flatten()),
      lambda lg, t: (torch.logsumexp(lg, -1) - lg.gather(-1, t[..., None])[..., 0]).mean()],
     [(lambda lg, t: F.cross_entropy(lg.reshape(-1, lg.size(-1)), t.reshape(-1)), "[rule]"),
      (lambda lg, t: seq_ref(lg, t) * lg.shape[0] * lg.shape[1], "summed over positions"),
      (lambda lg, t: seq_ref(lg, t) * lg.shape[1], "summed over time"),
      (lambda lg, t: torch.tensor(seq_ref(lg, t).item()), "gradient"),
      (lambda lg, t: -torch.log(torch.softmax(lg, -1)).gather(-1, t[..., None]).mean(), "large logits"),
      (lambda lg, t: -torch.log_softmax(lg, 0).gather(-1, t[..., None]).mean(), "differs")])


def sample_gumbel(logits, temperature=1.0, generator=None):  # the Gumbel-max trick: a different exact sampler
    if temperature == 0:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, generator=generator).clamp(1e-12, 1 - 1e-7)
    return (logits / temperature - torch.log(-torch.log(u))).argmax(-1)


def sample_row0(logits, temperature=1.0, generator=None):
    if temperature == 0:
        return logits.argmax(-1)
    p = torch.softmax(logits[0] / temperature, -1)
    return torch.multinomial(p, logits.shape[0], replacement=True, generator=generator)


def sample_global(logits, temperature=1.0, generator=None):
    return R.sample_with_temperature(logits, temperature)  # ignores the generator


def sample_naive(logits, temperature=1.0, generator=None):
    if temperature == 0:
        return logits.argmax(-1)
    e = torch.exp(logits / temperature)
    return torch.multinomial(e / e.sum(-1, keepdim=True), 1, generator=generator)[:, 0]


case("sample_with_temperature", R.sample_with_temperature, [sample_gumbel],
     [(sample_row0, "row 0's distribution"),
      (lambda lg, t=1.0, g=None: lg.argmax(-1), "argmax"),
      (lambda lg, t=1.0, g=None: R.sample_with_temperature(lg, 1 / t if t else 0, g), "softmax(logits * T)"),
      (sample_global, "same seed"),
      (lambda lg, t=1.0, g=None: R.sample_with_temperature(lg, t, g).float(), "int64"),
      (sample_naive, "[error]")])


# --- 02 seq2seq ---------------------------------------------------------------------------------

def ctx_ref(e, H, valid):  # valid: True at real tokens (the course's one mask convention)
    alpha = torch.softmax(e.masked_fill(~valid, float("-inf")), -1)
    return torch.einsum("bj,bjd->bd", alpha, H), alpha


def ctx_naive(e, H, valid):
    w = torch.exp(e) * valid
    alpha = w / w.sum(-1, keepdim=True)
    return torch.bmm(alpha[:, None], H)[:, 0], alpha


def ctx_in_place(e, H, valid):
    alpha = torch.softmax(e.masked_fill_(~valid, float("-inf")), -1)
    return torch.bmm(alpha[:, None], H)[:, 0], alpha


def ctx_padding_convention(e, H, valid):  # reads the mask as True = padding, as 02 did before issue 14
    alpha = torch.softmax(e.masked_fill(valid, float("-inf")), -1)
    return torch.einsum("bj,bjd->bd", alpha, H), alpha


case("additive_score", S2S.additive_score,
     [lambda s, H, W, U, v: torch.einsum("a,bta->bt", v, torch.tanh(torch.einsum("as,bs->ba", W, s)[:, None]
                                                                      + torch.einsum("ah,bth->bta", U, H)))],
     [(lambda s, H, W, U, v: ((s @ W.T)[:, None, :] + H @ U.T) @ v, "without the tanh"),
      (lambda s, H, W, U, v: torch.tanh((s @ W.T)[:, None, :] + H @ U.T).sum(-1), "differs"),
      (lambda s, H, W, U, v: torch.tanh((s.flip(0) @ W.T)[:, None, :] + H @ U.T) @ v, "another sentence"),
      (lambda s, H, W, U, v: S2S.additive_score(s.detach(), H, W, U, v), "gradient")])
case("attention_context", S2S.attention_context,
     [ctx_ref, lambda e, H, m: (lambda a: ((a[..., None] * H).sum(1), a))(
         torch.softmax(torch.where(m, e, torch.tensor(-1e9)), -1))],
     [(lambda e, H, m: ctx_ref(e * m, H, m | True), "padding"),
      (lambda e, H, m: (torch.einsum("bj,bjd->bd", torch.softmax(e, 0), H), torch.softmax(e, 0)), "dim 0"),
      (ctx_naive, "inf/nan"),
      (ctx_in_place, "[mutation]"),
      (ctx_padding_convention, "REAL tokens"),
      (lambda e, H, m: ctx_ref(e, H, m)[::-1], "(c, alpha)"),
      (lambda e, H, m: (lambda c, a: (c.detach(), a))(*ctx_ref(e, H, m)), "gradient")])


def dec_ref(model, y_prev, s_prev, H, valid):
    c, alpha = model.attention(s_prev, H, valid)
    emb = model.tgt_embed(y_prev)
    s = model.cell(torch.cat([emb, c], -1), s_prev)
    return model.out(torch.cat([s, c, emb], -1)), s, alpha


def dec_late(model, y_prev, s_prev, H, valid):
    emb = model.tgt_embed(y_prev)
    c0, _ = model.attention(s_prev, H, valid)
    s = model.cell(torch.cat([emb, c0], -1), s_prev)
    c, alpha = model.attention(s, H, valid)
    return model.out(torch.cat([s, c, emb], -1)), s, alpha


def dec_no_context(model, y_prev, s_prev, H, valid):
    c, alpha = model.attention(s_prev, H, valid)
    emb = model.tgt_embed(y_prev)
    s = model.cell(torch.cat([emb, torch.zeros_like(c)], -1), s_prev)
    return model.out(torch.cat([s, c, emb], -1)), s, alpha


def dec_padding_convention(model, y_prev, s_prev, H, valid):  # the exercise's functions, mask read inverted
    a = model.attention
    c, alpha = ctx_padding_convention(S2S.additive_score(s_prev, H, a.W, a.U, a.v), H, valid)
    emb = model.tgt_embed(y_prev)
    s = model.cell(torch.cat([emb, c], -1), s_prev)
    return model.out(torch.cat([s, c, emb], -1)), s, alpha


def dec_no_grad(model, *a):
    with torch.no_grad():
        return S2S.decoder_step(model, *a)


def dec_train_mode(model, *a):
    model.train()
    return S2S.decoder_step(model, *a)


case("decoder_step", S2S.decoder_step, [dec_ref],
     [(dec_late, "previous state"), (dec_no_context, "ignores the context"),
      (lambda model, y, s, H, m: (lambda lg, s_, a: (lg, s_, a))(*S2S.decoder_step(model, y, s.flip(0), H, m)),
       "differs"),
      (dec_padding_convention, "real source token"),
      (lambda model, y, s, H, m: S2S.decoder_step(model, y, s, H, ~m), "[error]"),
      (dec_no_grad, "gradient"), (dec_train_mode, "[mutation]")])


# --- 03 self-attention --------------------------------------------------------------------------

def aw_index(Q, K, mask=None):  # indexes S[~mask]: only works for a mask of S's full shape
    S = Q @ K.transpose(-2, -1) / math.sqrt(Q.size(-1))
    if mask is not None:
        S[~mask] = float("-inf")
    return S.softmax(-1)


def aw_naive(Q, K, mask=None):
    S = torch.exp(Q @ K.transpose(-2, -1) / math.sqrt(Q.size(-1)))
    if mask is not None:
        S = S * mask
    return S / S.sum(-1, keepdim=True)


def aw_where(Q, K, mask=None):
    S = torch.einsum("...qd,...kd->...qk", Q, K) / Q.shape[-1] ** 0.5
    if mask is not None:
        S = torch.where(mask, S, torch.tensor(-1e9))
    return torch.softmax(S, -1)


def aw_after(Q, K, mask=None):
    A = (Q @ K.transpose(-2, -1) / math.sqrt(Q.size(-1))).softmax(-1)
    return A if mask is None else A * mask


case("weighted_average", att.weighted_average,
     [lambda a, X: torch.einsum("...n,nd->...d", torch.softmax(a, -1), X)],
     [(lambda a, X: a @ X, "differs"), (lambda a, X: torch.softmax(a, 0) @ X, "differs"),
      (lambda a, X: (a.exp() / a.exp().sum(-1, keepdim=True)) @ X, "large scores"),
      (lambda a, X: torch.softmax(a, -1).detach() @ X, "gradient")])
case("attention_weights", att.attention_weights, [aw_where],
     [(aw_index, "[error]"), (aw_naive, "large scores"), (aw_after, "row sums"),
      (lambda Q, K, mask=None: att.attention_weights(Q, K, None if mask is None else ~mask), "exactly 0"),
      (lambda Q, K, mask=None: torch.softmax(Q @ K.transpose(-2, -1), -1), "sqrt"),
      (lambda Q, K, mask=None: att.attention_weights(Q.detach(), K, mask), "gradient")])


def csa_with(mask_fn, weights=att.attention_weights):
    def f(X, W_Q, W_K, W_V):
        n = X.shape[0]
        return weights(X @ W_Q, X @ W_K, mask_fn(n)) @ (X @ W_V)
    return f


case("causal_self_attention", csa_with(att.causal_mask),
     [csa_with(lambda n: ~torch.ones(n, n, dtype=torch.bool).triu(1), aw_where)],
     [(csa_with(lambda n: torch.ones(n, n, dtype=torch.bool).triu()), "first output row"),
      (csa_with(lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1)), "first output row"),
      (csa_with(lambda n: None), "first output row"),
      (csa_with(att.causal_mask, aw_naive), "large scores"),
      (lambda X, *W: csa_with(att.causal_mask)(X.detach(), *W), "gradient")])


def sin_pow(n, d):
    p = torch.arange(n, dtype=torch.float32)[:, None]
    angle = p / torch.pow(10000.0, torch.arange(0, d, 2, dtype=torch.float32) / d)
    return torch.stack([torch.sin(angle), torch.cos(angle)], -1).reshape(n, d)


def sin_i_over_d(n, d):
    p = torch.arange(n, dtype=torch.float32)[:, None]
    f = 10000.0 ** (-torch.arange(d // 2) / d)
    E = torch.zeros(n, d)
    E[:, 0::2], E[:, 1::2] = torch.sin(p * f), torch.cos(p * f)
    return E


case("sinusoidal_positions", att.sinusoidal_positions, [sin_pow],
     [(lambda n, d: att.sinusoidal_positions(n, d).view(n, d // 2, 2).flip(-1).reshape(n, d), "row 0"),
      (lambda n, d: torch.cat([att.sinusoidal_positions(n, d)[:, 0::2], att.sinusoidal_positions(n, d)[:, 1::2]], 1),
       "differs"),
      (sin_i_over_d, "differs"), (lambda n, d: att.sinusoidal_positions(n, d).double(), "dtype")])


# --- 04 transformer -----------------------------------------------------------------------------

def block_ref(block, x, causal=False):
    x = x + block.attn(block.ln1(x), causal=causal)
    return x + block.mlp(block.ln2(x))


def block_fallback(block, x, causal=False):  # the notebook's own fallback: set the flag, restore it
    saved, block.causal = block.causal, causal
    try:
        return block(x)
    finally:
        block.causal = saved


def block_sticky(block, x, causal=False):  # right output, but the block keeps the new flag
    block.causal = causal
    return block(x)


def block_no_grad(block, x, causal=False):
    with torch.no_grad():
        return block_ref(block, x, causal)


case("split_heads", TR.split_heads,
     [lambda x, h: x.unflatten(-1, (h, -1)).permute(0, 2, 1, 3)],
     [(lambda x, h: x.reshape(x.shape[0], h, x.shape[1], x.shape[2] // h), "head 1"),
      (lambda x, h: x.reshape(x.shape[0], x.shape[1], h, -1).permute(0, 2, 3, 1), "shape"),
      (lambda x, h: TR.split_heads(x, h).detach(), "gradient"),
      (lambda x, h: TR.split_heads(x, h).transpose(2, 3).reshape(TR.split_heads(x, h).shape), "head 1")])
case("merge_heads", TR.merge_heads, [lambda x: x.permute(0, 2, 1, 3).flatten(2)],
     [(lambda x: x.reshape(x.shape[0], x.shape[2], -1), "transpose(1, 2) first"),
      (lambda x: x.transpose(2, 3).reshape(x.shape[0], x.shape[2], -1), "differs"),
      (lambda x: TR.merge_heads(x).detach(), "gradient")])
case("block_forward", block_ref, [block_fallback],
     [(lambda block, x, causal=False: block(x), "causal=True"),
      (block_sticky, "[mutation]"),
      (lambda block, x, causal=False: x + block.mlp(block.ln2(x + block.attn(block.ln1(x), causal=causal))),
       "differs"),
      (lambda block, x, causal=False: block.ln2(x + block.attn(x, causal=causal)), "differs"),
      (lambda block, x, causal=False: block_ref(block, x, False), "changed token"),
      (block_no_grad, "gradient")])
case("block_param_count", TR.block_param_count,
     [lambda d, r=4.0, b=True: np.int64(TR.block_param_count(d, r, b)),
      lambda d, r=4.0, b=True: torch.tensor(TR.block_param_count(d, r, b)),
      lambda d, r=4.0, b=True: float(TR.block_param_count(d, r, b))],
     [(lambda d, r=4.0, b=True: 4 * d * d + 2 * r * d * d, "bias=True"),
      (lambda d, r=4.0, b=True: TR.block_param_count(d, r, b) - 2 * d, "off by"),
      (lambda d, r=4.0, b=True: TR.block_param_count(d, 4.0, b), "mlp_ratio=2.0"),
      (lambda d, r=4.0, b=True: str(TR.block_param_count(d, r, b)), "integer"),
      (lambda d, r=4.0, b=True: TR.block_param_count(d, r, b) + 0.5, "integer"),
      (lambda d, r, b: TR.block_param_count(d, r, b), "[error]")])  # no defaults: block_param_count(768) fails


# --- 05 ViT -------------------------------------------------------------------------------------

def patchify_unfold(x, P):
    return F.unfold(x, kernel_size=P, stride=P).transpose(1, 2)


def embed_ref(x, weight, bias, cls_token, pos_embed, P):
    tokens = V.patchify(x, P) @ weight.T + bias
    return torch.cat([cls_token.expand(x.shape[0], 1, -1), tokens], 1) + pos_embed


def embed_no_grad(*a):
    with torch.no_grad():
        return embed_ref(*a)


def vit_mean_pool(model, x):
    z = model.encoder(V.embed_patches(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias,
                                      model.cls_token, model.pos_embed, model.patch_size))
    return model.head(z.mean(1))


def vit_no_pos(model, x):
    z = model.encoder(V.embed_patches(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias,
                                      model.cls_token, torch.zeros_like(model.pos_embed), model.patch_size))
    return model.head(z[:, 0])


def vit_no_grad(model, x):
    with torch.no_grad():
        return V.vit_forward(model, x)


case("patchify", V.patchify, [patchify_unfold],
     [(lambda x, P: x.reshape(x.shape[0], -1, x.shape[1] * P * P), "plain reshape"),
      (lambda x, P: x.unfold(2, P, P).unfold(3, P, P).permute(0, 2, 3, 4, 5, 1).reshape(
          x.shape[0], -1, x.shape[1] * P * P), "wrong order"),
      (lambda x, P: V.patchify(x.transpose(2, 3), P), "differs"),  # patches column by column
      (lambda x, P: V.patchify(x, P).detach(), "gradient")])
case("patch_embedding", V.embed_patches, [embed_ref],
     [(lambda x, w, b, c, p, P: torch.cat([V.patchify(x, P) @ w.T + b, c.expand(x.shape[0], 1, -1)], 1) + p,
       "class token"),
      (lambda x, w, b, c, p, P: torch.cat([c.expand(x.shape[0], 1, -1), V.patchify(x, P) @ w.T + b + p[:, 1:]], 1),
       "position embedding too"),
      (lambda x, w, b, c, p, P: embed_ref(x, w, torch.zeros_like(b), c, p, P), "bias"),
      (embed_no_grad, "gradient")])
case("vit_forward", V.vit_forward, [lambda model, x: model(x)],
     [(vit_mean_pool, "class token"), (vit_no_pos, "differs"), (vit_no_grad, "gradient"),
      (lambda model, x: V.vit_forward(model, x)[:, torch.arange(model.head.out_features).flip(0)], "differs")])


# --- 06 GPT -------------------------------------------------------------------------------------

def merge_index(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if ids[i:i + 2] == list(pair) and i + 1 < len(ids):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_by_string(ids, pair, new_id):
    text = " ".join(map(str, ids)).replace(f"{pair[0]} {pair[1]}", str(new_id))
    return [int(t) for t in text.split()] if text else []


def merge_overlapping(ids, pair, new_id):
    out = list(ids)
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            out[i] = new_id
    return [t for i, t in enumerate(out) if not (i > 0 and out[i - 1] == new_id and (ids[i - 1], ids[i]) == pair)]


def merge_in_place(ids, pair, new_id):
    i = 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            ids[i:i + 2] = [new_id]
        i += 1
    return ids


def merge_right_to_left(ids, pair, new_id):
    return ref_merge(ids[::-1], pair[::-1], new_id)[::-1]


def ntl_naive(logits, tokens):
    p = torch.exp(logits[:, :-1]) / torch.exp(logits[:, :-1]).sum(-1, keepdim=True)
    return -torch.log(p).gather(-1, tokens[:, 1:, None]).mean()


def topk_scatter(logits, k):
    idx = torch.topk(logits, k, dim=-1).indices
    return torch.full_like(logits, float("-inf")).scatter(-1, idx, logits.gather(-1, idx))


def topk_in_place(logits, k):
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill_(logits < kth, float("-inf"))


def topp_drop_crossing(logits, p):  # drops the token that crosses p
    sl, order = torch.sort(logits, -1, descending=True)
    drop = torch.softmax(sl, -1).cumsum(-1) > p
    drop[..., 0] = False
    return logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))


def topp_naive(logits, p):
    e = torch.exp(logits)
    sl, order = torch.sort(logits, -1, descending=True)
    probs = (e / e.sum(-1, keepdim=True)).gather(-1, order)
    drop = probs.cumsum(-1) - probs >= p
    return logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))


def topp_loop(logits, p):  # one row at a time, with a Python loop
    out = torch.full_like(logits, float("-inf"))
    for r in range(logits.shape[0]):
        probs = torch.softmax(logits[r], -1)
        mass = 0.0
        for j in torch.argsort(logits[r], descending=True).tolist():
            if mass >= p:
                break
            out[r, j] = logits[r, j]
            mass += float(probs[j])
    return out


def kv_sdpa(q, k_new, v_new, k_cache, v_cache):
    K = k_new if k_cache is None else torch.cat([k_cache, k_new], 2)
    V_ = v_new if v_cache is None else torch.cat([v_cache, v_new], 2)
    return F.scaled_dot_product_attention(q, K, V_), K, V_


def kv_naive(q, k_new, v_new, k_cache, v_cache):
    K = k_new if k_cache is None else torch.cat([k_cache, k_new], 2)
    V_ = v_new if v_cache is None else torch.cat([v_cache, v_new], 2)
    w = torch.exp(q @ K.transpose(-2, -1) / math.sqrt(q.size(-1)))
    return (w / w.sum(-1, keepdim=True)) @ V_, K, V_


def kv_wrong_order(q, k_new, v_new, k_cache, v_cache):  # the new key first
    K = k_new if k_cache is None else torch.cat([k_new, k_cache], 2)
    V_ = v_new if v_cache is None else torch.cat([v_new, v_cache], 2)
    return torch.softmax(q @ K.transpose(-2, -1) / math.sqrt(q.size(-1)), -1) @ V_, K, V_


def pc_formula(c):
    V_, T, L, d = c.vocab_size, c.block_size, c.n_layer, c.n_embd
    return V_ * d + T * d + L * (12 * d * d + 13 * d) + 2 * d


case("bpe_merge", ref_merge, [merge_index],
     [(merge_by_string, "returned"), (merge_overlapping, "returned"), (merge_in_place, "[mutation]"),
      (lambda ids, pair, new: tuple(ref_merge(ids, pair, new)), "list"), (merge_right_to_left, "returned"),
      (lambda ids, pair, new: [np.int64(t) for t in ref_merge(ids, pair, new)], "Python int")])
case("next_token_loss", G.next_token_loss,
     [lambda lg, t: -torch.log_softmax(lg[:, :-1].double(), -1).gather(-1, t[:, 1:, None]).mean()],
     [(lambda lg, t: F.cross_entropy(lg.reshape(-1, lg.size(-1)), t.reshape(-1)), "differs"),
      (lambda lg, t: F.cross_entropy(lg[:, 1:].reshape(-1, lg.size(-1)), t[:, :-1].reshape(-1)), "differs"),
      (lambda lg, t: G.next_token_loss(lg, t) * (t.shape[1] - 1), "differs"),
      (lambda lg, t: torch.tensor(G.next_token_loss(lg, t).item()), "gradient"),
      (ntl_naive, "large logits")])
case("top_k_filter", lm.top_k_filter, [topk_scatter],
     [(topk_in_place, "[mutation]"),
      (lambda lg, k: lm.top_k_filter(lg, max(k - 1, 1)) if k > 1 else lm.top_k_filter(lg, 2), "largest logits"),
      (lambda lg, k: lg.masked_fill(lg < torch.topk(lg, k, -1).values[..., -1:], 0.0), "largest logits"),
      (lambda lg, k: torch.softmax(lm.top_k_filter(lg, k), -1), "must be -inf"),
      (lambda lg, k: lg.masked_fill(lg < torch.topk(lg.flatten(), k).values[-1], float("-inf")), "largest logits"),
      (lambda lg, k: lm.top_k_filter(lg, k).detach(), "gradient")])
case("top_p_filter", lm.top_p_filter, [topp_loop],
     [(topp_drop_crossing, "keep"), (lambda lg, p: lm.top_p_filter(-lg, p), "keep"), (topp_naive, "keep"),
      (lambda lg, p: lg.masked_fill_(lm.top_p_filter(lg, p).isinf(), float("-inf")), "[mutation]")])
case("param_count", G.param_count,
     [lambda c: np.int64(pc_formula(c)), lambda c: torch.tensor(pc_formula(c)), pc_formula],
     [(lambda c: pc_formula(c) - c.block_size * c.n_embd, "off by"),
      (lambda c: pc_formula(c) + c.vocab_size * c.n_embd, "off by"),
      (lambda c: pc_formula(c) - c.n_layer * 4 * c.n_embd - 2 * c.n_embd, "off by"),
      (lambda c: torch.tensor(float(pc_formula(c)), dtype=torch.float32), "off by"),
      (lambda c: str(pc_formula(c)), "integer")])
case("kv_attention_step", G.kv_attention_step, [kv_sdpa],
     [(lambda q, k, v, kc, vc: G.kv_attention_step(q, k, v, None, None), "shape"),
      (lambda q, k, v, kc, vc: (lambda y, K, V_: (torch.softmax(q @ K.transpose(-2, -1), -1) @ V_, K, V_))(
          *G.kv_attention_step(q, k, v, kc, vc)), "1/sqrt(d)"),
      (kv_wrong_order, "K with"),
      (kv_naive, "large scores"),
      (lambda *a: (lambda y, K, V_: (y.detach(), K, V_))(*G.kv_attention_step(*a)), "gradient")])


# --- 07 instruction tuning ----------------------------------------------------------------------

def mask_cat(ids, prompt_len):
    y = torch.cat([torch.full((prompt_len - 1,), IGNORE, dtype=ids.dtype), ids[prompt_len:]])
    return ids[:-1].clone(), y


def mask_views(ids, prompt_len):  # y is a view of ids: writing -100 into it changes ids
    x, y = ids[:-1], ids[1:]
    y[:prompt_len - 1] = IGNORE
    return x, y


def pad_sequence_based(pairs, block_size, pad_id=0):
    if max(len(x) for x, _ in pairs) > block_size:
        raise ValueError("too long")
    xs = torch.nn.utils.rnn.pad_sequence([x for x, _ in pairs], batch_first=True, padding_value=pad_id)
    ys = torch.nn.utils.rnn.pad_sequence([y for _, y in pairs], batch_first=True, padding_value=IGNORE)
    return xs, ys


def pad_float(pairs, block_size, pad_id=0):
    longest = max(len(x) for x, _ in pairs)
    if longest > block_size:
        raise ValueError("too long")
    xs, ys = torch.full((len(pairs), longest), float(pad_id)), torch.full((len(pairs), longest), -100.0)
    for i, (x, y) in enumerate(pairs):
        xs[i, :len(x)], ys[i, :len(y)] = x, y
    return xs, ys


def pad_left(pairs, block_size, pad_id=0):
    x, y = instructions.pad_batch([(p[0].flip(0), p[1].flip(0)) for p in pairs], block_size, pad_id)
    return x.flip(1), y.flip(1)


def pad_truncates(pairs, block_size, pad_id=0):
    return instructions.pad_batch([(x[:block_size], y[:block_size]) for x, y in pairs], block_size, pad_id)


def pad_ge(pairs, block_size, pad_id=0):  # refuses an example exactly block_size long
    if max(len(x) for x, _ in pairs) >= block_size:
        raise ValueError("too long")
    return instructions.pad_batch(pairs, block_size, pad_id)


def sft_naive(logits, labels):
    p = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    keep = labels != IGNORE
    return -torch.log(p.gather(-1, labels.clamp(min=0)[..., None])[..., 0])[keep].mean()


def lora_ref(x, base, A, B, alpha):
    return base(x) + (alpha / A.shape[0]) * (x @ A.T) @ B.T


def lora_no_grad(x, base, A, B, alpha):
    with torch.no_grad():
        update = (alpha / A.shape[0]) * F.linear(F.linear(x, A), B)
    return base(x) + update


def lora_merge_in_place(x, base, A, B, alpha):
    with torch.no_grad():
        base.weight += (alpha / A.shape[0]) * B @ A
    return base(x)


case("format_prompt", instructions.format_prompt, [lambda i: "Q: " + i + "\nA: "],
     [(lambda i: f"Q:{i}\nA:", "expected"), (lambda i: f"Q: {i.strip()}\nA: ", "expected"),
      (lambda i: f"Q: {i}\nA: \n", "expected"),
      (lambda i: type("S", (str,), {"__eq__": lambda a, b: True})(f"Q: {i}\nA: "), "str")])
case("mask_prompt_labels", instructions.mask_prompt_labels, [mask_cat],
     [(lambda ids, p: (ids[:-1].clone(), torch.cat([torch.full((p,), IGNORE), ids[p + 1:]])), "labels should be -100"),
      (mask_views, "[mutation]"),
      (lambda ids, p: tuple(t.float() for t in instructions.mask_prompt_labels(ids, p)), "dtype"),
      (lambda ids, p: (ids[:-1].clone(), ids[1:].clone()), "labels should be -100")])
case("pad_batch", instructions.pad_batch, [pad_sequence_based],
     [(pad_float, "torch.int64"), (pad_left, "right-padded"), (pad_truncates, "ValueError"),
      (lambda pairs, bs, pad_id=0: instructions.pad_batch(pairs, bs, 0), "pad_id 3"), (pad_ge, "[error]")])
case("sft_loss", lm.masked_lm_loss,
     [lambda lg, lab: F.cross_entropy(lg.double().flatten(0, 1), lab.flatten(), ignore_index=IGNORE),
      lambda lg, lab: -(torch.log_softmax(lg, -1).gather(-1, lab.clamp(min=0)[..., None])[..., 0]
                        * (lab != IGNORE)).sum() / (lab != IGNORE).sum()],
     [(lambda lg, lab: F.cross_entropy(lg.flatten(0, 1), lab.flatten(), ignore_index=IGNORE, reduction="sum")
       / lab.numel(), "B * T"),
      (lambda lg, lab: torch.tensor(lm.masked_lm_loss(lg, lab).item()), "gradient"),
      (sft_naive, "size ~1000"),
      (lambda lg, lab: F.cross_entropy(lg.flatten(0, 1), lab.clamp(min=0).flatten()), "differs")])
case("lora_forward", lora_ref,
     [lambda x, base, A, B, alpha: F.linear(x, base.weight, base.bias) + F.linear(F.linear(x, A), B) * alpha
      / A.shape[0]],
     [(lambda x, base, A, B, alpha: base(x) + (x @ A.T) @ B.T, "scaled"),
      (lambda x, base, A, B, alpha: base(x) + alpha * A.shape[0] * (x @ A.T) @ B.T, "differs"),
      (lora_no_grad, "gradient"), (lora_merge_in_place, "[mutation]")])


# --- 08 RLHF ------------------------------------------------------------------------------------

def kl_scatter(scores, logp, ref_logp, mask, beta):
    r = torch.where(mask, -beta * (logp - ref_logp), torch.zeros_like(logp))
    last = (mask.long() * torch.arange(mask.shape[1])).argmax(-1, keepdim=True)
    return r.scatter_add(1, last, scores[:, None].to(r.dtype))


def kl_first(scores, logp, ref_logp, mask, beta):
    r = -beta * (logp - ref_logp) * mask
    return r.scatter_add(1, mask.long().argmax(-1, keepdim=True), scores[:, None])


def kl_last_column(scores, logp, ref_logp, mask, beta):
    r = -beta * (logp - ref_logp) * mask
    r[:, -1] += scores
    return r


def kl_in_place(scores, logp, ref_logp, mask, beta):
    logp -= ref_logp
    return ppo.kl_penalty_rewards(scores, logp, torch.zeros_like(logp), mask, beta)


def ppo_where(logp, old, adv, mask, clip=0.2):
    ratio = (logp - old).exp()
    clipped = torch.where(adv >= 0, torch.minimum(ratio, torch.tensor(1 + clip)),
                          torch.maximum(ratio, torch.tensor(1 - clip)))
    return -((clipped * adv)[mask]).mean()


case("bradley_terry_loss", reward.bradley_terry_loss,
     [lambda rc, rr: F.softplus(rr - rc).mean(), lambda rc, rr: -F.logsigmoid((rc - rr).double()).mean()],
     [(lambda rc, rr: -F.logsigmoid(rr - rc).mean(), "rejected"),
      (lambda rc, rr: -F.logsigmoid(rc - rr).sum(), "sums"),
      (lambda rc, rr: -torch.log(torch.sigmoid(rc - rr)).mean(), "overflows"),
      (lambda rc, rr: -(torch.sigmoid(rc - rr) + 1e-8).log().mean(), "margins"),
      (lambda rc, rr: -F.logsigmoid(torch.clamp(rc - rr, -20, 20)).mean(), "margins"),
      (lambda rc, rr: torch.tensor(reward.bradley_terry_loss(rc, rr).item()), "gradient")])
case("kl_penalty_rewards", ppo.kl_penalty_rewards, [kl_scatter],
     [(lambda s, lp, rp, m, b: -b * (lp - rp) * m + s[:, None] * m, "every response token"),
      (lambda s, lp, rp, m, b: ppo.kl_penalty_rewards(s, rp, lp, m, b), "wrong sign"),
      (lambda s, lp, rp, m, b: ppo.kl_penalty_rewards(s, lp, rp, m, b) - b * (lp - rp) * ~m, "multiply by the mask"),
      (kl_first, "first response token"), (kl_last_column, "differs"), (kl_in_place, "[mutation]")])
case("ppo_clip_loss", ppo.ppo_clip_loss, [ppo_where],
     [(lambda lp, old, a, m, c=0.2: -((lp - old).exp() * a * m).sum() / m.sum(), "no clipping"),
      (lambda lp, old, a, m, c=0.2: -(torch.maximum((lp - old).exp() * a, (lp - old).exp().clamp(1 - c, 1 + c) * a)
                                      * m).sum() / m.sum(), "min of the two"),
      (lambda lp, old, a, m, c=0.2: ppo.ppo_clip_loss(lp, old, a, torch.ones_like(m), c), "padding"),
      (lambda lp, old, a, m, c=0.2: ppo.ppo_clip_loss(lp.detach(), old, a, m, c), "gradient"),
      (lambda lp, old, a, m, c=0.2: ppo.ppo_clip_loss(torch.log(lp.exp() / old.exp()) + old, old, a, m, c),
       "log-probs near -110")])
case("dpo_loss", dpo.dpo_loss,
     [lambda pc, pr, rc, rr, beta=0.1: F.softplus(-beta * ((pc - rc) - (pr - rr))).mean()],
     [(lambda pc, pr, rc, rr, beta=0.1: -F.logsigmoid(beta * (pc - pr)).mean(), "reference is missing"),
      (lambda pc, pr, rc, rr, beta=0.1: -F.logsigmoid((pc - rc) - (pr - rr)).mean(), "beta"),
      (lambda pc, pr, rc, rr, beta=0.1: dpo.dpo_loss(pr, pc, rr, rc, beta), "swapped"),
      (lambda pc, pr, rc, rr, beta=0.1: -torch.log(torch.sigmoid(beta * ((pc - rc) - (pr - rr)))).mean(),
       "overflows"),
      (lambda pc, pr, rc, rr, beta=0.1: -(torch.sigmoid(beta * ((pc - rc) - (pr - rr))) + 1e-6).log().mean(),
       "large margins"),
      (lambda pc, pr, rc, rr, beta=0.1: -F.logsigmoid((beta * ((pc - rc) - (pr - rr))).clamp(-50, 50)).mean(),
       "large margins")])


# --- 09 multimodal ------------------------------------------------------------------------------

def xattn(q_src, kv_src, scale, dim=-1, exp=False):
    def f(x, feats, w_q, w_k, w_v):
        q, k, v = (x if q_src == "x" else feats) @ w_q, (feats if kv_src == "f" else x) @ w_k, \
            (feats if kv_src == "f" else x) @ w_v
        S = q @ k.transpose(-2, -1) / scale(w_q.shape[1], x.shape[-1])
        A = (S.exp() / S.exp().sum(-1, keepdim=True)) if exp else torch.softmax(S, dim)
        return A @ v, A
    return f


def word_loop(A, caption, grid):
    words, rows, maps = caption.split(" "), list(range(len(caption))), []
    pos = 0
    for w in words:
        maps.append(torch.stack([A[r] for r in rows[pos:pos + len(w)]]).mean(0).view(*grid))
        pos += len(w) + 1
    return torch.stack(maps)


def word_with_spaces(A, caption, grid):
    maps, start = [], 0
    for w in caption.split(" "):
        maps.append(A[start:start + len(w) + 1].mean(0).reshape(grid))
        start += len(w) + 1
    return torch.stack(maps)


def prefix_cpu_pad(img, txt, labels):  # works on the CPU only: the -100s are made without a device
    pad = torch.full(img.shape[:2], IGNORE, dtype=labels.dtype)
    return torch.cat([img, txt], 1), torch.cat([pad, labels], 1)


def prefix_float_labels(img, txt, labels):
    pad = torch.full(img.shape[:2], -100.0)
    return torch.cat([img, txt], 1), torch.cat([pad, labels.float()], 1)


case("cross_attention", C.cross_attention,
     [lambda x, f, wq, wk, wv: (lambda A: (torch.einsum("btn,bnk->btk", A, f @ wv), A))(
         torch.softmax(torch.einsum("btk,bnk->btn", x @ wq, f @ wk) * wq.shape[1] ** -0.5, -1))],
     [(xattn("x", "f", lambda dk, d: 1.0), "not scaled"),
      (xattn("x", "f", lambda dk, d: math.sqrt(dk), dim=-2), "sum to 1"),
      (xattn("x", "x", lambda dk, d: math.sqrt(dk)), "shape"),
      (xattn("x", "f", lambda dk, d: math.sqrt(dk), exp=True), "inf/nan"),
      (xattn("x", "f", lambda dk, d: math.sqrt(d)), "differs"),
      (lambda *a: (lambda y, A: (y.detach(), A))(*C.cross_attention(*a)), "gradient")])
case("word_attention", C.word_attention, [word_loop],
     [(lambda A, c, g: C.word_attention(A, c, g) * torch.tensor([len(w) for w in c.split(" ")])[:, None, None],
       "average"),
      (word_with_spaces, "differs"),
      (lambda A, c, g: C.word_attention(A, c, g[::-1]).transpose(1, 2), "differs"),
      (lambda A, c, g: C.word_attention(torch.cat([A[:1], A[:-1]]), c, g), "differs")])
case("prefix_sequence", llava.prefix_sequence,
     [lambda img, txt, lab: (torch.cat([img, txt], 1), F.pad(lab, (img.shape[1], 0), value=IGNORE))],
     [(prefix_float_labels, "dtype"), (prefix_cpu_pad, "device"),
      (lambda img, txt, lab: llava.prefix_sequence(img.detach(), txt, lab), "gradient"),
      (lambda img, txt, lab: (torch.cat([txt, img], 1), llava.prefix_sequence(img, txt, lab)[1]), "come first"),
      (lambda img, txt, lab: (torch.cat([img, txt], 1), torch.cat([torch.zeros(img.shape[:2], dtype=lab.dtype), lab],
                                                                   1)), "-100")])


# --- the tests ----------------------------------------------------------------------------------

def _fails_as(verdict, needle: str) -> str:
    """'' if the verdict failed as the needle says, else what went wrong."""
    if verdict.passed or verdict.status != "failed":
        return f"status {verdict.status}: {verdict.message}"
    if needle.startswith("["):
        return "" if verdict.reason == needle[1:-1] else f"reason {verdict.reason!r}: {verdict.message}"
    return "" if needle in verdict.message else f"message lacks {needle!r}: {verdict.message}"


def test_every_checker_has_a_case_with_three_mistakes_and_an_alternative():
    assert set(CASES) == set(checks.CHECKERS)
    for name, (_, alternatives, mistakes) in CASES.items():
        assert len(mistakes) >= 3 and len(alternatives) >= 1, name


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_and_alternatives_pass(name):
    reference, alternatives, _ = CASES[name]
    for k, fn in enumerate([reference, *alternatives]):
        v = checks.CHECKERS[name](fn)
        assert v and v.status == "passed" and v.reason == "correct", (name, k, v.message)


@pytest.mark.parametrize("name", sorted(CASES))
def test_typical_mistakes_fail_for_their_reason(name):
    _, _, mistakes = CASES[name]
    problems = []
    for k, (fn, needle) in enumerate(mistakes):
        if why := _fails_as(checks.CHECKERS[name](fn), needle):
            problems.append(f"mistake {k}: {why}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", sorted(CASES))
def test_unfinished_exercise_is_not_implemented(name):
    def unfinished(*args, **kwargs):
        raise NotImplementedError()

    v = checks.CHECKERS[name](unfinished)
    assert not v and v.status == "not implemented" and v.reason == "not implemented" and v.points == 0


def test_issue_examples_each_fail():
    # the examples of issue 11, each accepted before
    assert not checks.attention_weights(aw_index)
    assert not checks.pad_batch(lambda pairs, bs, pad_id=0: pad_float(pairs, bs, pad_id))
    assert not checks.sft_loss(lambda lg, lab: torch.tensor(lm.masked_lm_loss(lg, lab).item()))
    assert not checks.bradley_terry_loss(lambda rc, rr: -(torch.sigmoid(rc - rr) + 1e-8).log().mean())
    assert not checks.top_k_filter(topk_in_place)
    assert not checks.block_forward(lambda block, x, causal=False: block(x))
    assert not checks.prefix_sequence(lambda img, txt, lab: llava.prefix_sequence(img.detach(), txt, lab))
    assert not checks.sample_with_temperature(sample_row0)


def test_correct_answers_the_issue_says_were_rejected_now_pass():
    assert checks.param_count(lambda c: np.int64(G.param_count(c)))
    assert checks.param_count(lambda c: torch.tensor(G.param_count(c)))
    v = checks.sft_loss(lambda lg, lab: F.cross_entropy(lg.double().flatten(0, 1), lab.flatten(), ignore_index=-100))
    assert v, v.message


def test_param_count_rejects_a_count_that_float32_rounds():
    v = checks.param_count(lambda c: torch.tensor(float(pc_formula(c))))  # float32: GPT-3's count is not exact
    assert not v and "off by" in v.message
    assert GPTConfig(vocab_size=65, block_size=8, n_layer=1, n_head=1, n_embd=8)  # the configs stay constructible
