"""Issue 15, the smaller model defects: parameter counts without biases, top-p at p = 1, narrow
integer ids, BPE on a lone surrogate, untied Hugging Face heads, the cached decoding step's mask,
GPT.reset_parameters, and LoRA as a drop-in nn.Linear."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from course_lib.measure import count_parameters
from course_lib.models import gpt as G
from course_lib.models import gpt2_weights, lm
from course_lib.models import transformer as TR
from course_lib.models.gpt import GPT, GPTConfig
from course_lib.models.lora import LoRALinear, add_lora, merge_lora


def _meta_count(config: GPTConfig) -> int:
    with torch.device("meta"):
        return count_parameters(GPT(config))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("tie", [True, False])
def test_param_count_is_exact_with_and_without_biases(bias, tie):
    for cfg in (GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=bias, tie_weights=tie),
                GPTConfig(vocab_size=1000, block_size=17, n_layer=3, n_head=2, n_embd=24, bias=bias, tie_weights=tie),
                GPTConfig(**{**G.CONFIGS["gpt2"].to_dict(), "bias": bias, "tie_weights": tie})):
        assert G.param_count(cfg) == _meta_count(cfg), cfg


def test_top_p_of_one_keeps_every_token():
    logits = torch.zeros(2, 50)
    logits[:, 0] = 30.0  # float32 softmax puts all the mass on token 0: the cumulative sum is 1.0 at once
    assert torch.equal(lm.top_p_filter(logits, 1.0), logits)
    assert torch.isfinite(lm.top_p_filter(logits, 0.5)).sum().item() == 2  # one per row


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_narrow_integer_ids_work_like_long(dtype):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    x = torch.randint(0, 50, (2, 9))
    torch.testing.assert_close(model(x.to(dtype)), model(x))


def test_bpe_encodes_a_lone_surrogate_like_tiktoken():
    from course_lib.tokenizers import BPETokenizer, gpt2_tokenizer

    ours, ref = BPETokenizer.gpt2(), gpt2_tokenizer()
    for text in ("a\ud800b", "\udfff", "x \ud83d\ude00 y", "ok\udc80"):
        assert ours.encode(text) == ref.encode_ordinary(text), repr(text)
    trained = BPETokenizer.train("ab ab \ud800 ab", 260)
    assert trained.decode(trained.encode("ab \ud800")) == "ab \ufffd"


def test_hf_conversion_honours_untied_embeddings(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=57, n_positions=16,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False)
    torch.manual_seed(3)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        hf.lm_head.weight.normal_()  # clearly different from the token table
    hf.save_pretrained(tmp_path)
    ours = gpt2_weights.from_hf_checkpoint(tmp_path)
    assert not ours.config.tie_weights and ours.lm_head.weight is not ours.wte.weight
    x = torch.randint(0, 57, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, atol=1e-4, rtol=1e-4)


def test_cached_decoding_step_passes_no_mask(monkeypatch):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    x = torch.randint(0, 20, (2, 6))
    with torch.no_grad():
        full = model(x)
    masks = []
    real = TR.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        masks.append((q.size(2), attn_mask, is_causal))
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)

    monkeypatch.setattr(TR.F, "scaled_dot_product_attention", spy)
    caches = model.new_kv_caches()
    with torch.no_grad():
        steps = [model(x[:, :4], kv_caches=caches), model(x[:, 4:5], kv_caches=caches),
                 model(x[:, 5:6], kv_caches=caches)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert masks[0] == (4, None, True)  # the prompt: SDPA's own causal kernel
    assert [(n, m) for n, m, _ in masks[1:]] == [(1, None), (1, None)]  # one new token sees every key


def test_reset_parameters_reinitialises_layernorms_too():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.fill_(3.0)
                m.bias.fill_(-1.0)
    model.reset_parameters()
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 5 and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)


# --- LoRA is a drop-in nn.Linear ----------------------------------------------------------------

def test_lora_linear_has_the_linear_interface():
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    lora = LoRALinear(base, r=2)
    assert (lora.in_features, lora.out_features) == (8, 6)
    assert lora.bias is base.bias and lora.weight.shape == base.weight.shape
    assert LoRALinear(nn.Linear(8, 6, bias=False), r=2).bias is None


def test_lora_on_the_cross_attention_projection_runs_and_trains():
    from course_lib.models.captioner import Captioner

    torch.manual_seed(0)
    cap = Captioner(vocab_size=12, image_size=16, patch_size=8, d_model=16, enc_layers=1, dec_layers=1,
                    n_heads=2, max_len=8)
    images, tokens = torch.randn(2, 3, 16, 16), torch.randint(0, 12, (2, 5))
    wrapped = add_lora(cap, r=2, targets=("qkv",))
    assert "blocks.0.cross_attn.qkv" in wrapped
    for m in cap.modules():
        if isinstance(m, LoRALinear):
            nn.init.normal_(m.lora_B, std=0.5)
    out = cap(images, tokens)
    out.square().mean().backward()
    cross = cap.blocks[0].cross_attn.qkv
    assert cross.lora_B.grad is not None and cross.lora_B.grad.abs().sum() > 0
    assert cross.lora_A.grad is not None and cross.lora_A.grad.abs().sum() > 0
    with torch.no_grad():
        adapted = cap(images, tokens)
        merge_lora(cap)
        torch.testing.assert_close(cap(images, tokens), adapted, atol=1e-5, rtol=1e-5)


def test_merged_layers_stay_frozen_like_the_rest():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16))
    add_lora(model, r=2, targets=("qkv", "proj"))
    assert merge_lora(model) == 6
    assert count_parameters(model, trainable_only=True) == 0  # frozen before merging, frozen after
    lone = LoRALinear(nn.Linear(4, 4), r=1)
    lone.base.weight.requires_grad_(True)  # a base someone chose to train: the merged layer trains too
    merged = lone.merged()
    assert merged.weight.requires_grad and not merged.bias.requires_grad
