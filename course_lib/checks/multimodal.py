"""Checkers for notebook 09 (multimodal): one head of cross-attention, per-word attention maps on
the patch grid, and the LLaVA-style prefix sequence with its label mask."""
from __future__ import annotations

import math

import torch

from ..models import captioner, llava
from ..tokenizers import IGNORE
from ._core import checker, expect, expect_close, expect_tensor


@checker("cross_attention", hint="queries come from the text (x W_Q), keys and values from the patches "
         "(feats W_K, feats W_V); scale the scores by 1/sqrt(d_k) and take the softmax over the patches "
         "(the last dimension), so each character's weights sum to 1.")
def cross_attention(student) -> str:

    g = torch.Generator().manual_seed(9)
    for B, T, N, d, dk in ((2, 5, 16, 8, 8), (1, 3, 6, 4, 2)):
        x, feats = torch.randn(B, T, d, generator=g), torch.randn(B, N, d, generator=g)
        w_q, w_k, w_v = (torch.randn(d, dk, generator=g) for _ in range(3))
        out = student(x, feats, w_q, w_k, w_v)
        expect(isinstance(out, tuple) and len(out) == 2, "cross_attention should return a pair (Y, A)")
        y, A = out
        ey, eA = captioner.cross_attention(x, feats, w_q, w_k, w_v)
        expect_tensor(A, f"A for {T} characters and {N} patches", shape=(B, T, N))
        expect_tensor(y, "Y", shape=(B, T, dk))
        expect(torch.allclose(A.sum(-1), torch.ones(B, T), atol=1e-5),
               "each character's attention over the patches should sum to 1: softmax over the last dimension")
        unscaled = torch.softmax((x @ w_q) @ (feats @ w_k).transpose(-2, -1), dim=-1)
        expect(not torch.allclose(A, unscaled, atol=1e-6) or dk == 1,
               f"the scores are not scaled: divide Q K^T by sqrt(d_k) = {math.sqrt(dk):.3g}")
        expect_close(A, eA, "A", atol=1e-5)
        expect_close(y, ey, "Y", atol=1e-5, hint="Y = A V with V = feats W_V")
    return "each character reads a weighted mix of the patches"


@checker("word_attention", hint="word w of caption.split(' ') covers the rows of its own characters (skip "
         "the spaces); average those rows, then reshape the N patches to (gh, gw) row by row.")
def word_attention(student) -> str:

    g = torch.Generator().manual_seed(10)
    for caption, grid in (("a red circle", (2, 3)), ("a blue square left of a red triangle", (4, 4)), ("ab", (1, 5))):
        N = grid[0] * grid[1]
        A = torch.softmax(torch.randn(len(caption), N, generator=g), dim=-1)
        out = student(A, caption, grid)
        n_words = len(caption.split(" "))
        expect_tensor(out, f"the maps of {caption!r}", shape=(n_words, *grid))
        expect(torch.allclose(out.sum((1, 2)), torch.ones(n_words), atol=1e-5),
               "each word's map should sum to 1 like one attention row: average the characters' rows, "
               "do not add them")
        expect_close(out, captioner.word_attention(A, caption, grid), f"the maps of {caption!r}", atol=1e-5,
                     hint="check which rows belong to each word, and reshape to (gh, gw), not (gw, gh)")
    return "one map per word"


@checker("prefix_sequence", hint="torch.cat([image_tokens, text_embeds], dim=1) puts the N visual tokens "
         "first; the labels get N values of -100 in front of the text's labels.")
def prefix_sequence(student) -> str:

    g = torch.Generator().manual_seed(11)
    for B, N, T, d in ((2, 4, 5, 3), (1, 16, 7, 8)):
        img, txt = torch.randn(B, N, d, generator=g), torch.randn(B, T, d, generator=g)
        labels = torch.randint(0, 60, (B, T), generator=g)
        labels[:, :2] = IGNORE
        out = student(img, txt, labels)
        expect(isinstance(out, tuple) and len(out) == 2, "prefix_sequence should return a pair (embeds, labels)")
        e, lab = out
        ee, el = llava.prefix_sequence(img, txt, labels)
        expect_tensor(e, "embeds", shape=(B, N + T, d))
        expect_tensor(lab, "labels", shape=(B, N + T))
        expect(torch.equal(e[:, :N], img), "the image tokens should come first (the text is conditioned on them)")
        expect_close(e, ee, "embeds")
        expect(bool((lab[:, :N] == IGNORE).all()),
               "the image positions have nothing to predict: their labels should be -100")
        expect(torch.equal(lab, el), "after the N image labels (-100) come the text's labels, unchanged")
    return "the LM reads the image first, and learns only the answer"
