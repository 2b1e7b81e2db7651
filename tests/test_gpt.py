"""GPT: against Hugging Face's GPT2LMHeadModel (weight mapping), KV cache, generation, counting,
bad input, and the notebook's checkers."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import checks
from course_lib.measure import count_parameters
from course_lib.models import gpt as G
from course_lib.models import gpt2_weights, lm
from course_lib.models.gpt import GPT, GPTConfig
from course_lib.models.transformer import KVCache, MultiHeadAttention

SMALL = GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return GPT(SMALL).eval()


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=101, n_positions=40,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    folder = tmp_path_factory.mktemp("hf_gpt2")
    hf.save_pretrained(folder)  # config.json + model.safetensors, as on the hub
    return hf, gpt2_weights.from_hf_checkpoint(folder), folder


def test_hf_weights_give_the_same_logits_and_loss(hf_pair):
    hf, ours, _ = hf_pair
    x = torch.randint(0, 101, (3, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = hf(x, labels=x)
        logits = ours(x)
    torch.testing.assert_close(logits, out.logits, atol=1e-4, rtol=1e-4)
    # HF shifts labels inside; our next-token loss does the same on (logits, tokens)
    torch.testing.assert_close(G.next_token_loss(logits, x), out.loss, atol=1e-5, rtol=1e-5)
    assert ours.lm_head.weight is ours.wte.weight


def test_generation_matches_hf_greedy(hf_pair):
    hf, ours, _ = hf_pair
    prompt = torch.tensor([[5, 17, 3, 99]])
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert torch.equal(lm.generate(ours, prompt, 20, temperature=0), ref)


def test_checkpoint_of_another_shape_is_a_clear_error(hf_pair):
    _, ours, folder = hf_pair
    import json

    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_embd"] = 32
    with pytest.raises(ValueError, match=r"has shape \(101, 64\), this model .* expects \(101, 32\)"):
        gpt2_weights.from_hf_checkpoint(config=cfg, weights=folder / "model.safetensors")
    other = GPT(GPTConfig(vocab_size=101, block_size=40, n_layer=3, n_head=4, n_embd=64))
    with pytest.raises(ValueError, match=r"missing keys \['blocks.2"):
        other.load_state_dict_checked(ours.state_dict())


def test_forward_equals_explicit_reference(small):
    """The model, written out with plain tensor ops (masked softmax attention), gives our logits."""
    x = torch.randint(0, SMALL.vocab_size, (2, 11), generator=torch.Generator().manual_seed(3))
    n, d, h = x.size(1), SMALL.n_embd, SMALL.n_head
    H = small.wte.weight[x] + small.wpe.weight[:n]
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    for blk in small.blocks:
        a = F.layer_norm(H, (d,), blk.ln1.weight, blk.ln1.bias)
        q, k, v = (t.view(2, n, h, d // h).transpose(1, 2) for t in (a @ blk.attn.qkv.weight.T
                                                                     + blk.attn.qkv.bias).split(d, -1))
        S = (q @ k.transpose(-1, -2) / math.sqrt(d // h)).masked_fill(~mask, float("-inf"))
        Y = (S.softmax(-1) @ v).transpose(1, 2).reshape(2, n, d)
        H = H + Y @ blk.attn.proj.weight.T + blk.attn.proj.bias
        m = F.layer_norm(H, (d,), blk.ln2.weight, blk.ln2.bias)
        m = F.gelu(m @ blk.mlp.fc.weight.T + blk.mlp.fc.bias, approximate="tanh")
        H = H + m @ blk.mlp.proj.weight.T + blk.mlp.proj.bias
    logits = F.layer_norm(H, (d,), small.ln_f.weight, small.ln_f.bias) @ small.wte.weight.T
    with torch.no_grad():
        torch.testing.assert_close(small(x), logits, atol=1e-5, rtol=1e-5)


def test_kv_cache_equals_full_forward(small):
    x = torch.randint(0, SMALL.vocab_size, (2, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = small(x)
        caches = small.new_kv_caches()
        parts = [small(x[:, :7], kv_caches=caches)] + [small(x[:, t:t + 1], kv_caches=caches) for t in range(7, 17)]
        parts.append(small(x[:, 17:], kv_caches=caches))  # several new tokens at once also work
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert len(caches[0]) == 20


def test_mha_kv_cache_keeps_the_old_api():
    torch.manual_seed(5)
    mha = MultiHeadAttention(16, 2).eval()
    x = torch.randn(1, 6, 16)
    cache = KVCache()
    steps = torch.cat([mha(x[:, i:i + 1], causal=True, kv_cache=cache) for i in range(6)], 1)
    torch.testing.assert_close(steps, mha(x, causal=True), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="kv_cache is for self-attention"):
        mha(x, context=x, kv_cache=KVCache())
    with pytest.raises(ValueError, match="KVCache is full"):
        KVCache(max_len=2).append(torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8))


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(temperature=0.8, top_k=5), dict(temperature=1.0, top_p=0.9)])
def test_generate_with_and_without_cache_agree(small, kw):
    prompt = torch.randint(0, SMALL.vocab_size, (2, 5), generator=torch.Generator().manual_seed(6))
    a = lm.generate(small, prompt, 40, use_cache=True, slide=True, generator=torch.Generator().manual_seed(7), **kw)
    b = lm.generate(small, prompt, 40, use_cache=False, slide=True, generator=torch.Generator().manual_seed(7), **kw)
    assert a.shape == (2, 45) and torch.equal(a, b)
    assert torch.equal(a[:, :5], prompt)


def test_sampling_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0, 3.0]])
    assert torch.isfinite(lm.top_k_filter(logits, 2)).tolist() == [[False, True, False, False, True]]
    probs = torch.softmax(torch.tensor([[4.0, 3.0, 2.0, 1.0]]), -1)  # 0.64, 0.24, 0.09, 0.03
    assert torch.isfinite(lm.top_p_filter(probs.log(), 0.5)).sum().item() == 1
    assert torch.isfinite(lm.top_p_filter(probs.log(), 0.8)).sum().item() == 2
    assert torch.isfinite(lm.top_p_filter(probs.log(), 1.0)).sum().item() == 4
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([lm.sample_next(probs.log().expand(4000, 4), top_k=2, generator=g)]).flatten()
    assert set(draws.tolist()) == {0, 1}
    assert abs((draws == 0).float().mean().item() - 0.64 / 0.88) < 0.03  # renormalised over the top 2
    assert lm.sample_next(logits, temperature=0).item() == 1


def _meta_count(config):
    with torch.device("meta"):
        return count_parameters(GPT(config))


def test_param_counts_and_flops():
    for name, cfg in G.CONFIGS.items():
        assert _meta_count(cfg) == G.param_count(cfg)
        assert abs(G.param_count(cfg) / G.PUBLISHED_PARAMS[name] - 1) < 0.07, name  # GPT-2 small: 124M vs 117M
    assert _meta_count(G.CONFIGS["gpt2"]) == 124_439_808
    untied = GPTConfig(**{**G.CONFIGS["gpt2"].to_dict(), "tie_weights": False})
    assert _meta_count(untied) == 124_439_808 + 50257 * 768
    c = G.CONFIGS["gpt2"]
    n = 124_439_808 - 1024 * 768
    assert G.flops_per_token(c) == 6 * n + 12 * 12 * 1024 * 768
    assert G.flops_per_token(c, training=False) * 3 == G.flops_per_token(c)


def test_bad_input(small):
    with pytest.raises(ValueError, match="exceeds the context length block_size=32"):
        small(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 50\), got ids in \[0, 50\]"):
        small(torch.tensor([[0, 50]]))
    with pytest.raises(ValueError, match=r"\(B, n\) tensor"):
        small(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        small(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="pass slide=True"):
        lm.generate(small, torch.zeros(1, 30, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="n_head=3 must divide n_embd=32"):
        GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=3, n_embd=32)
    with pytest.raises(ValueError, match="top_p must be in"):
        lm.top_p_filter(torch.zeros(1, 3), 1.5)
    caches = small.new_kv_caches()
    small(torch.zeros(1, 30, dtype=torch.long), kv_caches=caches)
    with pytest.raises(ValueError, match=r"sequence length 33 \(cached 30 \+ new 3\)"):
        small(torch.zeros(1, 3, dtype=torch.long), kv_caches=caches)


def test_offline_pretrained_gpt2_is_a_clear_error(monkeypatch, tmp_path):
    from course_lib.data import DataError

    monkeypatch.setenv("COURSE_OFFLINE", "1")
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COURSE_DATA_MIRROR", str(tmp_path / "none"))
    with pytest.raises(DataError, match="cannot get config.json of the Hugging Face repository 'openai-communi"):
        gpt2_weights.from_pretrained_gpt2()


def test_hf_files_from_a_mirror(hf_pair, monkeypatch):
    hf, _, folder = hf_pair
    monkeypatch.setenv("COURSE_OFFLINE", "1")
    mirror = folder.parent / "mirror"
    (mirror / "someone--tiny-gpt2").mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "model.safetensors"):
        target = mirror / "someone--tiny-gpt2" / f
        if not target.exists():
            target.symlink_to(folder / f)
    monkeypatch.setenv("COURSE_DATA_MIRROR", str(mirror))
    ours = gpt2_weights.from_pretrained_gpt2("someone/tiny-gpt2")
    x = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, atol=1e-4, rtol=1e-4)


# ---- checkers: accept the reference, reject typical mistakes ----------------------------------

def _rejects(check, *wrongs):
    for w in wrongs:
        v = check(w)
        assert not v and v.status == "failed", w.__name__


def test_next_token_loss_checker():
    assert checks.next_token_loss(G.next_token_loss)

    def unshifted(logits, tokens):
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), tokens.reshape(-1))

    def backwards(logits, tokens):
        return F.cross_entropy(logits[:, 1:].reshape(-1, logits.size(-1)), tokens[:, :-1].reshape(-1))

    def summed(logits, tokens):
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1),
                               reduction="sum")

    _rejects(checks.next_token_loss, unshifted, backwards, summed)


def test_top_k_and_top_p_checkers():
    assert checks.top_k_filter(lm.top_k_filter) and checks.top_p_filter(lm.top_p_filter)

    def keeps_k_minus_1(logits, k):
        return lm.top_k_filter(logits, max(1, k - 1)) if k > 1 else lm.top_k_filter(logits, 2)

    def zeros_not_inf(logits, k):
        kth = torch.topk(logits, k).values[..., -1:]
        return logits.masked_fill(logits < kth, 0.0)

    def returns_probs(logits, k):
        return torch.softmax(lm.top_k_filter(logits, k), -1)

    _rejects(checks.top_k_filter, keeps_k_minus_1, zeros_not_inf, returns_probs)

    def drops_crossing_token(logits, p):  # keeps only tokens whose cumulative mass stays <= p
        s, order = torch.sort(logits, descending=True)
        drop = torch.softmax(s, -1).cumsum(-1) > p
        return logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))

    def ascending(logits, p):
        return -lm.top_p_filter(-logits, p)

    _rejects(checks.top_p_filter, drops_crossing_token, ascending)


def test_param_count_checker():
    assert checks.param_count(G.param_count)

    def no_positions(c):
        return G.param_count(c) - c.block_size * c.n_embd

    def untied(c):
        return G.param_count(c) + c.vocab_size * c.n_embd

    def no_layernorms(c):
        return G.param_count(c) - 4 * c.n_embd * c.n_layer - 2 * c.n_embd

    _rejects(checks.param_count, no_positions, untied, no_layernorms)


def test_kv_attention_step_checker():
    assert checks.kv_attention_step(G.kv_attention_step)

    def forgets_cache(q, k, v, kc, vc):
        _, K, V = G.kv_attention_step(q, k, v, kc, vc)
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.size(-1)), -1) @ v, K, V

    def no_scale(q, k, v, kc, vc):
        y, K, V = G.kv_attention_step(q, k, v, kc, vc)
        return torch.softmax(q @ K.transpose(-1, -2), -1) @ V, K, V

    def wrong_axis(q, k, v, kc, vc):
        K = k if kc is None else torch.cat([kc, k], dim=-1)
        V = v if vc is None else torch.cat([vc, v], dim=-1)
        return q, K, V

    _rejects(checks.kv_attention_step, forgets_cache, no_scale, wrong_axis)


def test_embeds_path_equals_token_ids_and_hidden_states_feed_the_head(small):
    """``embeds=wte(x)`` is the same forward pass as ``x``; ``hidden_states`` is it without the head."""
    idx = torch.randint(0, small.config.vocab_size, (2, 7))
    logits = small(idx)
    torch.testing.assert_close(small(embeds=small.wte(idx)), logits)
    torch.testing.assert_close(small.lm_head(small.hidden_states(idx)), logits)
    with pytest.raises(ValueError, match="exactly one of idx"):
        small(idx, embeds=small.wte(idx))
    with pytest.raises(ValueError, match="n_embd"):
        small(embeds=torch.zeros(2, 3, small.config.n_embd + 1))
