"""The Vision Transformer (course_lib.models.vit), its image data (course_lib.vision) and checkers."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import checks, measure
from course_lib.data import DataError
from course_lib.models import vit as V
from course_lib.models.transformer import MultiHeadAttention, TransformerEncoder
from course_lib.tasks import vision


# ---------------------------------------------------------------- patches and the patch embedding
def test_patchify_matches_unfold_and_roundtrips():
    x = torch.randn(2, 3, 12, 8)
    p = V.patchify(x, 4)
    assert p.shape == (2, 6, 48)
    ref = F.unfold(x, kernel_size=4, stride=4).transpose(1, 2)   # PyTorch's own patch extraction
    torch.testing.assert_close(p, ref, rtol=0, atol=0)
    torch.testing.assert_close(V.unpatchify(p, 4, (3, 2), 3), x, rtol=0, atol=0)


def test_linear_on_patches_equals_strided_conv():
    torch.manual_seed(0)
    pe = V.PatchEmbedding(patch_size=4, in_channels=3, d_model=32)
    x = torch.randn(5, 3, 16, 20)
    conv = pe.as_conv()
    assert isinstance(conv, nn.Conv2d) and conv.stride == (4, 4) and conv.kernel_size == (4, 4)
    by_conv = conv(x).flatten(2).transpose(1, 2)                # (B, N, d)
    torch.testing.assert_close(pe(x), by_conv, rtol=1e-5, atol=1e-5)
    # and the other way round: torchvision's conv_proj weights used as our linear map
    conv2 = nn.Conv2d(3, 32, 4, stride=4)
    with torch.no_grad():
        pe.proj.weight.copy_(conv2.weight.reshape(32, -1))
        pe.proj.bias.copy_(conv2.bias)
    torch.testing.assert_close(pe(x), conv2(x).flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_bad_images_raise_valueerror_naming_expected_and_received():
    m = V.ViT(8, 2, 1, 10, 16, 1, 2)
    with pytest.raises(ValueError, match=r"not divisible by the patch size 3.*multiples of 3"):
        V.patchify(torch.randn(1, 1, 8, 8), 3)
    with pytest.raises(ValueError, match=r"expected 1 channel.*received 3 channel"):
        m(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expected images of 8x8 pixels, received 10x10"):
        m(torch.randn(2, 1, 10, 10))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\), received shape \(8, 8\)"):
        V.patchify(torch.randn(8, 8), 2)
    with pytest.raises(ValueError, match=r"9x9 is not divisible by the patch size 2"):
        V.ViT(9, 2, 1, 10, 16, 1, 2)


# ---------------------------------------------------------------- the model against references
def test_vit_equals_torchvision_vision_transformer_with_copied_weights():
    """Our ViT with torchvision's VisionTransformer weights gives the same logits (eval mode)."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    tv = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=4, hidden_dim=32,
                           mlp_dim=128, num_classes=7).eval()
    ours = V.ViT(16, 4, 3, 7, d_model=32, n_layers=2, n_heads=4, mlp_ratio=4.0).eval()
    with torch.no_grad():
        ours.patch_embed.proj.weight.copy_(tv.conv_proj.weight.reshape(32, -1))
        ours.patch_embed.proj.bias.copy_(tv.conv_proj.bias)
        ours.cls_token.copy_(tv.class_token)
        ours.pos_embed.copy_(tv.encoder.pos_embedding)
        for blk, layer in zip(ours.encoder.blocks, tv.encoder.layers, strict=True):
            blk.ln1.load_state_dict(layer.ln_1.state_dict())
            blk.ln2.load_state_dict(layer.ln_2.state_dict())
            blk.attn.load_state_dict(MultiHeadAttention.from_torch(layer.self_attention).state_dict())
            blk.mlp.fc.load_state_dict(layer.mlp[0].state_dict())
            blk.mlp.proj.load_state_dict(layer.mlp[3].state_dict())
        ours.encoder.ln_f.load_state_dict(tv.encoder.ln.state_dict())
        ours.head.load_state_dict(tv.heads.head.state_dict())
        nn.init.normal_(ours.head.weight)
        tv.heads.head.weight.copy_(ours.head.weight)
    for m in ours.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = 1e-6  # torchvision's ViT uses LayerNorm(eps=1e-6); ours keeps PyTorch's default 1e-5
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(V.vit_forward(ours, x), tv(x), rtol=1e-4, atol=1e-4)


def test_vit_uses_the_shared_transformer_encoder():
    m = V.ViT(8, 2, 1, 10, 16, 2, 2)
    assert isinstance(m.encoder, TransformerEncoder)
    logits, maps = m(torch.randn(4, 1, 8, 8), return_weights=True)
    assert logits.shape == (4, 10) and maps.shape == (4, 2, 2, 17, 17)
    torch.testing.assert_close(maps.sum(-1), torch.ones(4, 2, 2, 17))


def test_vit_b16_parameter_count_equals_torchvision_on_meta():
    from torchvision.models import vit_b_16

    with torch.device("meta"):
        ours = V.ViT(**V.VIT_B_16)
        theirs = vit_b_16()
    assert next(ours.parameters()).is_meta
    n = measure.count_parameters(ours)
    assert n == measure.count_parameters(theirs) == 86_567_656
    assert V.vit_param_count(**V.VIT_B_16) == n


# ---------------------------------------------------------------- looking inside
def test_attention_rollout_against_explicit_product():
    torch.manual_seed(0)
    maps = torch.softmax(torch.randn(2, 3, 4, 5, 5), dim=-1)
    R = V.attention_rollout(maps, residual=0.5)
    eye = torch.eye(5)
    want = []
    for b in range(2):
        r = eye
        for layer in range(3):
            a = 0.5 * maps[b, layer].mean(0) + 0.5 * eye
            a = a / a.sum(-1, keepdim=True)
            r = a @ r
        want.append(r)
    torch.testing.assert_close(R, torch.stack(want))
    torch.testing.assert_close(R.sum(-1), torch.ones(2, 5))
    # one layer without the residual term is just the head-averaged attention
    torch.testing.assert_close(V.attention_rollout(maps[:, :1], residual=0.0), maps[:, 0].mean(1))
    with pytest.raises(ValueError, match="expected maps of shape"):
        V.attention_rollout(maps[0])


def test_cls_attention_and_position_similarity():
    maps = torch.softmax(torch.randn(2, 3, 4, 17, 17), dim=-1)
    c = V.cls_attention(maps, (4, 4))
    assert c.shape == (2, 4, 4, 4)
    torch.testing.assert_close(c[1, 2, 1, 3], maps[1, -1, 2, 0, 1 + 1 * 4 + 3])
    pos = torch.randn(1, 17, 8)
    s = V.position_similarity(pos, (4, 4))
    assert s.shape == (4, 4, 4, 4)
    torch.testing.assert_close(s[0, 1, 2, 3], F.cosine_similarity(pos[0, 2], pos[0, 1 + 2 * 4 + 3], dim=0))
    torch.testing.assert_close(torch.diagonal(s.reshape(16, 16)), torch.ones(16))


def test_small_cnn_matches_a_parameter_budget():
    vit = V.ViT(8, 2, 1, 10, 64, 4, 4, mlp_ratio=2.0)
    cnn = V.SmallCNN.matching(measure.count_parameters(vit), 1, 10)
    assert abs(measure.count_parameters(cnn) - measure.count_parameters(vit)) / measure.count_parameters(vit) < 0.05
    assert cnn(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, H, W\)"):
        cnn(torch.randn(2, 3, 8, 8))


# ---------------------------------------------------------------- data
def test_digits_split_is_deterministic_stratified_and_normalised():
    a, b = vision.load_digits(), vision.load_digits()
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    torch.testing.assert_close(a.x_test, b.x_test)
    assert float(a.x_train.min()) == 0.0 and float(a.x_train.max()) == 1.0
    assert set(a.y_test.bincount().tolist()) <= {35, 36, 37}                # stratified: ~36 per class
    xn = a.normalize(a.x_train)
    assert abs(float(xn.mean())) < 1e-4 and abs(float(xn.std()) - 1) < 1e-3
    data = vision.batches(a, 64, seed=1, shift=1, rotate=10)
    x1, y1 = data(30)
    x2, y2 = data(30)
    torch.testing.assert_close(x1, x2)
    assert x1.shape == (64, 1, 8, 8) and torch.equal(y1, y2)
    # one epoch visits every image once
    per_epoch = 1437 // 64
    seen = torch.cat([vision.batches(a, 64)(i)[1] for i in range(per_epoch)])
    assert len(seen) == per_epoch * 64


def test_augment_shift_and_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(200, 1, 1, 1) / 16
    flipped = vision.augment(x, g, flip=True)
    is_flip = (flipped == x.flip(-1)).flatten(1).all(1)
    assert 60 < int(is_flip.sum()) < 140 and ((flipped == x).flatten(1).all(1) | is_flip).all()
    shifted = vision.augment(x, g, shift=1)
    assert shifted.shape == x.shape
    # every shifted image equals the original moved by (dy, dx) in {-1, 0, 1}^2, zeros entering
    padded = F.pad(x[:1], (1, 1, 1, 1))
    options = torch.stack([padded[0, 0, i:i + 4, j:j + 4] for i in range(3) for j in range(3)])
    match = (shifted[:, 0, None] == options[None]).flatten(2).all(-1)
    assert match.any(1).all() and match.any(0).sum() == 9


def test_cifar10_missing_gives_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_MIRROR", str(tmp_path / "mirror"))
    with pytest.raises(DataError) as e:
        vision.load_cifar10(root=tmp_path / "cifar", download=False)
    msg = str(e.value)
    assert vision.CIFAR10_FILE in msg and str(tmp_path / "cifar") in msg and "COURSE_DATA_MIRROR" in msg
    with pytest.raises(ValueError, match="unknown image dataset 'mnist'"):
        vision.load_images("mnist")


# ---------------------------------------------------------------- checkers
def test_checker_patchify():
    assert checks.patchify(V.patchify)

    def no_permute(x, P):
        B, C, H, W = x.shape
        return x.reshape(B, (H // P) * (W // P), C * P * P)

    def channels_last(x, P):
        B, C, H, W = x.shape
        return x.reshape(B, C, H // P, P, W // P, P).permute(0, 2, 4, 3, 5, 1).reshape(B, -1, C * P * P)

    def column_major(x, P):
        B, C, H, W = x.shape
        return x.reshape(B, C, H // P, P, W // P, P).permute(0, 4, 2, 1, 3, 5).reshape(B, -1, C * P * P)

    def unfinished(x, P):
        raise NotImplementedError()

    for wrong in (no_permute, channels_last, column_major, unfinished):
        v = checks.patchify(wrong)
        assert not v and v.status in ("failed", "not implemented")


def test_checker_patch_embedding():
    assert checks.patch_embedding(V.embed_patches)

    def no_cls(x, w, b, cls, pos, P):
        return F.linear(V.patchify(x, P), w, b) + pos[:, 1:]

    def cls_last(x, w, b, cls, pos, P):
        t = F.linear(V.patchify(x, P), w, b)
        return torch.cat([t, cls.expand(t.size(0), 1, -1)], 1) + pos

    def cls_without_position(x, w, b, cls, pos, P):
        t = F.linear(V.patchify(x, P), w, b) + pos[:, 1:]
        return torch.cat([cls.expand(t.size(0), 1, -1), t], 1)

    def no_bias(x, w, b, cls, pos, P):
        return V.embed_patches(x, w, None, cls, pos, P)

    for wrong in (no_cls, cls_last, cls_without_position, no_bias):
        assert not checks.patch_embedding(wrong)


def test_checker_vit_forward():
    assert checks.vit_forward(V.vit_forward)
    assert checks.vit_forward(lambda model, x: model(x))

    def mean_pool(model, x):
        z = model.encoder(model.embed(x))
        return model.head(z.mean(1))

    def no_positions(model, x):
        z = V.embed_patches(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, model.cls_token,
                            torch.zeros_like(model.pos_embed), model.patch_size)
        return model.head(model.encoder(z)[:, 0])

    def last_token(model, x):
        return model.head(model.encoder(model.embed(x))[:, -1])

    for wrong in (mean_pool, no_positions, last_token):
        assert not checks.vit_forward(wrong)


def test_batches_of_uint8_colour_images_as_in_the_gpu_profile():
    """The CIFAR-10 path (uint8 images, random crop with padding 4, flips) on a small stand-in split."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=g)
    split = vision.ImageSplit("fake", x[:200], torch.arange(200) % 10, x[200:], torch.arange(100) % 10,
                              tuple("abcdefghij"), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    xb, yb = vision.batches(split, 50, shift=4, flip=True)(3)
    assert xb.dtype == torch.float32 and xb.shape == (50, 3, 32, 32) and yb.shape == (50,)
    assert float(xb.min()) >= -2.0 - 1e-6 and float(xb.max()) <= 2.0 + 1e-6          # (v - 0.5) / 0.25
    xt, _ = next(split.test_batches(100))
    torch.testing.assert_close(xt, (split.x_test.float() / 255 - 0.5) / 0.25)
    assert split.image_shape == (3, 32, 32) and split.n_classes == 10
