"""Notebook 09: the shapes dataset, the captioner (cross-attention), the LLaVA-style prefix LM, checkers."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import checks
from course_lib.models import captioner as C
from course_lib.models import llava
from course_lib.models.gpt import GPT, GPTConfig
from course_lib.tasks import shapes
from course_lib.tasks.instructions import format_prompt
from course_lib.tokenizers import IGNORE, CharTokenizer
from course_lib.train import OptimConfig, fit

TOK = CharTokenizer(shapes.CAPTION_CHARS)
# the char GPT's alphabet: every dataset text must fit in it
SHAKESPEARE = CharTokenizer("\n !$&',-.3:;?" + "abcdefghijklmnopqrstuvwxyz" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


# --- dataset ------------------------------------------------------------------------------------

def test_dataset_is_deterministic_and_splits_differ():
    a, b = shapes.make_split("train", 40, seed=3), shapes.make_split("train", 40, seed=3)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert a.images.shape == (40, 3, 32, 32) and 0 <= a.images.min() and a.images.max() <= 1
    assert shapes.make_split("train", 10, seed=3).captions == a.captions[:10]
    assert shapes.make_split("test", 40, seed=3).captions != a.captions


def test_held_out_pairs_only_in_combo_split():
    train = shapes.make_split("train", 300)
    combo = shapes.make_split("combo", 100)
    assert not any(s.has_held_out() for s in train.scenes)
    assert all(s.has_held_out() for s in combo.scenes)
    assert shapes.qa_pairs(combo, held_out_only=True)
    for i, kind, _q, a in shapes.qa_pairs(combo, held_out_only=True):
        assert kind in ("colour", "shape")
        objs = {(o.colour, o.shape) for o in combo.scenes[i].objects}
        assert any(p in shapes.HELD_OUT for p in objs if (a in p))


def test_caption_matches_pixels():
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        s = shapes.sample_scene(g)
        img = shapes.render(s, noise=0.0)
        for o in s.objects:
            centre = img[:, int(o.cy), int(o.cx)] if o.shape != "triangle" else img[:, int(o.cy + o.r / 2), int(o.cx)]
            assert torch.allclose(centre, torch.tensor(shapes.COLOURS[o.colour])), (s.caption, o)
        if s.relation == "above":
            assert s.objects[0].cy < s.objects[1].cy
        elif s.relation == "left of":
            assert s.objects[0].cx < s.objects[1].cx
        words = s.caption.split()
        assert words[0] == "a" and words[1] == s.objects[0].colour and words[2] == s.objects[0].shape
        if len(s.objects) == 2:
            assert len({o.shape for o in s.objects}) == 2 and len({o.colour for o in s.objects}) == 2


def test_texts_fit_both_alphabets():
    data = shapes.make_split("combo", 50)
    for _i, _, q, a in shapes.qa_pairs(data):
        SHAKESPEARE.encode(format_prompt(q) + a + "\n")
        TOK.encode(q + a)
    for c in data.captions:
        SHAKESPEARE.encode(c)
        TOK.encode(c)
    with pytest.raises(ValueError, match="split must be"):
        shapes.make_split("val", 3)


# --- captioner ----------------------------------------------------------------------------------

def test_cross_attention_matches_sdpa():
    g = torch.Generator().manual_seed(0)
    x, f = torch.randn(2, 5, 8, generator=g), torch.randn(2, 16, 8, generator=g)
    wq, wk, wv = (torch.randn(8, 8, generator=g) for _ in range(3))
    y, A = C.cross_attention(x, f, wq, wk, wv)
    torch.testing.assert_close(y, F.scaled_dot_product_attention(x @ wq, f @ wk, f @ wv))
    assert A.shape == (2, 5, 16)
    torch.testing.assert_close(A.sum(-1), torch.ones(2, 5))


def test_decoder_cross_attention_matches_nn_multihead():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    blk = C.DecoderBlock(16, 4)
    blk.cross_attn = type(blk.cross_attn).from_torch(mha)
    q, f = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
    ours, w = blk.cross_attn(q, context=f, return_weights=True)
    ref, rw = mha(q, f, f, average_attn_weights=False)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w, rw, atol=1e-5, rtol=1e-4)


def test_captioner_shapes_and_causality():
    torch.manual_seed(0)
    m = C.Captioner(TOK.vocab_size, d_model=32, n_heads=2, max_len=20).eval()
    imgs = shapes.make_split("train", 2).images
    x = torch.randint(0, TOK.vocab_size, (2, 10))
    logits, maps = m(imgs, x, return_weights=True)
    assert logits.shape == (2, 10, TOK.vocab_size) and maps.shape == (2, 2, 2, 10, 16)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 2, 10))
    x2 = x.clone()
    x2[:, 6:] = (x2[:, 6:] + 1) % TOK.vocab_size  # a change at t >= 6 must not move logits at t < 6
    torch.testing.assert_close(m(imgs, x2)[:, :6], logits[:, :6])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)|3 channel"):
        m(imgs[:, :1], x)
    with pytest.raises(ValueError, match="max_len"):
        m(imgs, torch.zeros(2, 21, dtype=torch.long))
    with pytest.raises(ValueError, match="patch size"):
        C.PatchEncoder(30, 8, 3, 16, 1, 2)


def test_caption_batches_and_training_lowers_loss():
    torch.manual_seed(0)
    data = shapes.make_split("train", 64)
    batches = shapes.caption_batches(data, TOK, 8)
    imgs, x, y = batches(0)
    assert imgs.shape == (8, 3, 32, 32) and x.shape == y.shape
    stop = TOK.encode("\n")[0]
    assert bool((x[:, 0] == stop).all())
    first = TOK.decode(y[0][y[0] != IGNORE])
    assert first.endswith("\n") and TOK.decode(x[0, 1:len(first)]) == first[:-1]
    m = C.Captioner(TOK.vocab_size, d_model=32, enc_layers=1, dec_layers=1, n_heads=2)
    before = C.caption_loss(m, batches(0)).item()
    fit(m, C.caption_loss, batches, steps=40, optim=OptimConfig(lr=3e-3), progress=False, device="cpu")
    assert C.caption_loss(m, batches(0)).item() < before - 0.5
    caps, weights = C.greedy_captions(m, data.images[:3], TOK, return_weights=True)
    assert len(caps) == 3 and all(w.shape == (len(c), 16) for c, w in zip(caps, weights, strict=True))


def test_word_attention_and_scores():
    A = torch.eye(6)[:4].float()  # char t looks at patch t
    maps = C.word_attention(A, "a bc", (2, 3))
    assert maps.shape == (2, 2, 3)
    assert maps[0, 0, 0] == 1 and maps[1, 0, 2] == 0.5 and maps[1, 1, 0] == 0.5
    s = C.caption_scores(["a red circle", "a red square"], ["a red circle", "a blue square"])
    assert s == {"exact_match": 0.5, "word_accuracy": 5 / 6}


# --- LLaVA-style --------------------------------------------------------------------------------

def _tiny_vlm():
    torch.manual_seed(0)
    enc = C.PatchEncoder(32, 8, 3, 16, 1, 2)
    lm = GPT(GPTConfig(vocab_size=SHAKESPEARE.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32))
    return llava.VisualLM(enc, lm)


def test_prefix_sequence_masks_image_positions():
    img, txt = torch.randn(2, 4, 3), torch.randn(2, 5, 3)
    labels = torch.tensor([[IGNORE, IGNORE, 7, 8, 9], [IGNORE, 1, 2, IGNORE, IGNORE]])
    e, lab = llava.prefix_sequence(img, txt, labels)
    assert torch.equal(e, torch.cat([img, txt], 1))
    assert lab[:, :4].eq(IGNORE).all() and torch.equal(lab[:, 4:], labels)
    with pytest.raises(ValueError, match=r"expected labels \(2, 5\)"):
        llava.prefix_sequence(img, txt, labels[:, :3])
    with pytest.raises(ValueError, match=r"expected text_embeds \(2, T, 3\)"):
        llava.prefix_sequence(img, torch.randn(2, 5, 4), labels)


def test_visual_lm_freezing_forward_and_training():
    vlm = _tiny_vlm()
    trainable = {n.split(".")[0] for n, p in vlm.named_parameters() if p.requires_grad}
    assert trainable == {"projector"}
    vlm.freeze(lm=False)
    assert {n.split(".")[0] for n, p in vlm.named_parameters() if p.requires_grad} == {"projector", "lm"}
    vlm.freeze(lm=True)
    data = shapes.make_split("train", 32)
    items = [(i, format_prompt(q), a) for i, _, q, a in shapes.qa_pairs(data, kinds=("colour",))]
    batches = shapes.vqa_batches(data, items, SHAKESPEARE, 8)
    imgs, x, y = batches(0)
    logits = vlm(imgs, x)
    assert logits.shape == (8, 16 + x.size(1), SHAKESPEARE.vocab_size)
    # the LM's own forward on ids equals ours on their embeddings
    torch.testing.assert_close(vlm.lm_logits(vlm.lm.wte(x)), vlm.lm(x))
    lm_before = [p.clone() for p in vlm.lm.parameters()]
    before = vlm.loss(batches(0)).item()
    fit(vlm, lambda m, b: m.loss(b), batches, steps=30, optim=OptimConfig(lr=1e-2), progress=False, device="cpu")
    assert vlm.loss(batches(0)).item() < before
    assert all(torch.equal(a, b) for a, b in zip(lm_before, vlm.lm.parameters(), strict=True))
    answers = vlm.answer(data.images[:3], [format_prompt("how many shapes?")] * 3, SHAKESPEARE, max_new_tokens=4)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    acc = shapes.vqa_accuracy(vlm, data, shapes.qa_pairs(data)[:6], SHAKESPEARE)
    assert 0 <= acc["all"] <= 1
    with pytest.raises(ValueError, match="patch features"):
        vlm.projector(torch.randn(1, 16, 7))


# --- checkers -----------------------------------------------------------------------------------

def test_cross_attention_checker():
    assert checks.cross_attention(C.cross_attention)

    def over_queries(x, f, wq, wk, wv):
        A = torch.softmax((x @ wq) @ (f @ wk).transpose(-2, -1) / math.sqrt(wq.size(1)), dim=-2)
        return A @ (f @ wv), A

    def unscaled(x, f, wq, wk, wv):
        A = torch.softmax((x @ wq) @ (f @ wk).transpose(-2, -1), dim=-1)
        return A @ (f @ wv), A

    def self_attention(x, f, wq, wk, wv):
        A = torch.softmax((x @ wq) @ (x @ wk).transpose(-2, -1) / math.sqrt(wq.size(1)), dim=-1)
        return A @ (x @ wv), A

    for wrong in (over_queries, unscaled, self_attention):
        assert not checks.cross_attention(wrong)


def test_word_attention_checker():
    assert checks.word_attention(C.word_attention)

    def summed(A, caption, grid):
        return C.word_attention(A, caption, grid) * torch.tensor([len(w) for w in caption.split(" ")])[:, None, None]

    def transposed(A, caption, grid):
        return C.word_attention(A, caption, grid[::-1]).transpose(1, 2)

    def shifted(A, caption, grid):  # uses the row before each character
        return C.word_attention(torch.cat([A[:1], A[:-1]]), caption, grid)

    for wrong in (summed, transposed, shifted):
        assert not checks.word_attention(wrong)


def test_prefix_sequence_checker():
    assert checks.prefix_sequence(llava.prefix_sequence)

    def text_first(img, txt, labels):
        e, lab = llava.prefix_sequence(img, txt, labels)
        return torch.cat([txt, img], 1), lab

    def zero_labels(img, txt, labels):
        return torch.cat([img, txt], 1), torch.cat([torch.zeros(img.shape[:2], dtype=labels.dtype), labels], 1)

    def labels_at_end(img, txt, labels):
        pad = torch.full(img.shape[:2], IGNORE, dtype=labels.dtype)
        return torch.cat([img, txt], 1), torch.cat([labels, pad], 1)

    for wrong in (text_first, zero_labels, labels_at_end):
        assert not checks.prefix_sequence(wrong)
    assert not checks.prefix_sequence(lambda *a: (_ for _ in ()).throw(NotImplementedError()))


def test_teacher_forced_attention_equals_greedy_maps_on_its_own_captions():
    torch.manual_seed(0)
    tok = CharTokenizer(shapes.CAPTION_CHARS)
    model = C.Captioner(tok.vocab_size, d_model=32, enc_layers=1, dec_layers=1, n_heads=2, max_len=12)
    images = shapes.make_split("test", 6).images
    caps, maps = C.greedy_captions(model, images, tok, return_weights=True)
    forced = C.teacher_forced_attention(model, images, caps, tok, batch_size=4)  # two batches, padded
    assert len(forced) == 6
    for a, b, c in zip(maps, forced, caps, strict=True):
        assert b.shape == (len(c), model.encoder.n_patches)
        assert torch.allclose(a, b, atol=1e-5)
        assert torch.allclose(b.sum(-1), torch.ones(len(c)), atol=1e-5)
    with pytest.raises(ValueError, match="as many images as captions"):
        C.teacher_forced_attention(model, images, caps[:2], tok)
    with pytest.raises(ValueError, match="shorter than max_len=12"):
        C.teacher_forced_attention(model, images[:1], ["a red circle above"], tok)
