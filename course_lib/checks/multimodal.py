"""Checkers for notebook 09 (multimodal): one head of cross-attention, per-word attention maps on
the patch grid, and the LLaVA-style prefix sequence with its label mask."""
from __future__ import annotations

import math

import torch

from ..models import captioner, llava
from ..tokenizers import IGNORE
from ._core import checker, expect, expect_close, expect_grads, expect_items, expect_tensor


@checker("cross_attention", hint="queries come from the text (x W_Q), keys and values from the patches "
         "(feats W_K, feats W_V); scale the scores by 1/sqrt(d_k) and take the softmax over the patches "
         "(the last dimension), so each character's weights sum to 1.")
def cross_attention(student) -> str:

    g = torch.Generator().manual_seed(9)
    for B, T, N, d, dk, scale in ((2, 5, 16, 8, 8, 1.0), (1, 3, 6, 4, 2, 1.0), (2, 4, 5, 6, 3, 1.0),
                                  (2, 3, 4, 4, 4, 8.0)):
        x, feats = torch.randn(B, T, d, generator=g) * scale, torch.randn(B, N, d, generator=g) * scale
        w_q, w_k, w_v = (torch.randn(d, dk, generator=g) for _ in range(3))
        y, A = expect_items(student(x, feats, w_q, w_k, w_v), 2, "cross_attention")
        ey, eA = captioner.cross_attention(x, feats, w_q, w_k, w_v)
        big = " with large scores (|S| ~ 1000)" if scale > 1 else ""
        expect_tensor(A, f"A for {T} characters and {N} patches", shape=(B, T, N), dtype=x.dtype, device=x.device)
        expect_tensor(y, "Y", shape=(B, T, dk), dtype=x.dtype)
        expect(bool(torch.isfinite(A).all()), f"A{big} contains inf/nan: exp of a large score overflows; "
                                              f"torch.softmax subtracts the maximum for you")
        expect(torch.allclose(A.detach().sum(-1), torch.ones(B, T), atol=1e-5),
               "each character's attention over the patches should sum to 1: softmax over the last dimension")
        unscaled = torch.softmax((x @ w_q) @ (feats @ w_k).transpose(-2, -1), dim=-1)
        expect(not torch.allclose(A.detach(), unscaled, atol=1e-6) or dk == 1,
               f"the scores are not scaled: divide Q K^T by sqrt(d_k) = {math.sqrt(dk):.3g}")
        expect_close(A, eA, "A" + big, atol=1e-4 if scale > 1 else 1e-5)
        expect_close(y, ey, "Y" + big, atol=1e-3 if scale > 1 else 1e-5, hint="Y = A V with V = feats W_V")
    leaves = {"x": torch.randn(2, 3, 6, generator=g), "feats": torch.randn(2, 5, 6, generator=g),
              **{k: torch.randn(6, 4, generator=g) for k in ("w_q", "w_k", "w_v")}}
    for t in leaves.values():
        t.requires_grad_()
    y, A = expect_items(student(*leaves.values()), 2, "cross_attention")
    expect_grads(y, leaves, lambda *t: captioner.cross_attention(*t)[0], "Y")
    return "each character reads a weighted mix of the patches"


@checker("word_attention", hint="word w of caption.split(' ') covers the rows of its own characters (skip "
         "the spaces); average those rows, then reshape the N patches to (gh, gw) row by row.")
def word_attention(student) -> str:

    g = torch.Generator().manual_seed(10)
    for caption, grid in (("a red circle", (2, 3)), ("a blue square left of a red triangle", (4, 4)), ("ab", (1, 5)),
                          ("x yy zzz", (3, 2)), ("red red", (2, 2))):
        N = grid[0] * grid[1]
        A = torch.softmax(torch.randn(len(caption), N, generator=g) * 2, dim=-1)
        out = student(A, caption, grid)
        n_words = len(caption.split(" "))
        expect_tensor(out, f"the maps of {caption!r}", shape=(n_words, *grid), dtype=A.dtype, device=A.device)
        expect(torch.allclose(out.sum((1, 2)), torch.ones(n_words), atol=1e-5),
               "each word's map should sum to 1 like one attention row: average the characters' rows, "
               "do not add them")
        expect_close(out, captioner.word_attention(A, caption, grid), f"the maps of {caption!r}", atol=1e-5,
                     hint="check which rows belong to each word, and reshape to (gh, gw), not (gw, gh)")
    A = torch.softmax(torch.randn(8, 6, generator=g), dim=-1).requires_grad_()
    expect_grads(student(A, "x yy zzz", (2, 3)), {"A": A}, lambda a: captioner.word_attention(a, "x yy zzz", (2, 3)),
                 "the maps")
    return "one map per word"


def _device_probe(student, img, txt, labels) -> None:
    """On the meta device (no data, no memory) a function that creates its -100s without
    device=labels.device gives a CPU tensor: the same code would fail on a GPU."""
    ok, out = student.probe(img.to("meta"), txt.to("meta"), labels.to("meta"))
    if not ok:
        if "device" in str(out).lower() or "meta" in str(out).lower():
            _raise_device(f"with inputs on another device your function raised {type(out).__name__}: {out}")
        return  # meta tensors cannot run this code for other reasons: nothing to conclude
    if type(out) in (tuple, list) and len(out) == 2:
        for name, t in zip(("embeds", "labels"), out, strict=True):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                _raise_device(f"with inputs on another device, your {name} came back on {t.device}")


def _raise_device(detail: str) -> None:
    expect(False, f"{detail}: create new tensors on the inputs' device (torch.full(..., device=labels.device) or "
                  f"labels.new_full(...)), so the same code runs on a GPU")


@checker("prefix_sequence", hint="torch.cat([image_tokens, text_embeds], dim=1) puts the N visual tokens "
         "first; the labels get N values of -100 (labels' dtype and device) in front of the text's labels.")
def prefix_sequence(student) -> str:

    g = torch.Generator().manual_seed(11)
    for B, N, T, d in ((2, 4, 5, 3), (1, 16, 7, 8), (3, 2, 4, 5)):
        img, txt = torch.randn(B, N, d, generator=g), torch.randn(B, T, d, generator=g)
        labels = torch.randint(0, 60, (B, T), generator=g)
        labels[:, :2] = IGNORE
        e, lab = expect_items(student(img, txt, labels), 2, "prefix_sequence")
        ee, el = llava.prefix_sequence(img, txt, labels)
        expect_tensor(e, "embeds", shape=(B, N + T, d), dtype=img.dtype, device=img.device)
        expect_tensor(lab, "labels", shape=(B, N + T), device=labels.device)
        expect(lab.dtype == labels.dtype, f"labels have dtype {lab.dtype}, expected {labels.dtype} like the text's "
               f"labels (cross_entropy needs integer class ids: create the -100s with dtype=labels.dtype)")
        expect(torch.equal(e[:, :N].detach(), img), "the image tokens should come first (the text is conditioned "
                                                    "on them)")
        expect_close(e, ee, "embeds")
        expect(bool((lab[:, :N] == IGNORE).all()),
               "the image positions have nothing to predict: their labels should be -100")
        expect(torch.equal(lab, el), "after the N image labels (-100) come the text's labels, unchanged")
    leaves = {"image_tokens": torch.randn(2, 3, 4, generator=g).requires_grad_(),
              "text_embeds": torch.randn(2, 5, 4, generator=g).requires_grad_()}
    labels = torch.randint(0, 60, (2, 5), generator=g)
    e, _ = expect_items(student(*leaves.values(), labels), 2, "prefix_sequence")
    expect_grads(e, leaves, lambda i, t: llava.prefix_sequence(i, t, labels)[0], "embeds",
                 hint="the projector is trained through the image tokens: do not detach them")
    _device_probe(student, img, txt, labels)
    return "the LM reads the image first, and learns only the answer"
