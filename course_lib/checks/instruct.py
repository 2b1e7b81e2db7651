"""Checkers for notebook 07 (instruction tuning): the prompt template, the prompt-masked labels,
the masked SFT loss, right-padding a batch, and the LoRA forward pass."""
from __future__ import annotations

import torch
from torch import nn

from ..models import lm
from ..tasks import instructions
from ..tokenizers import IGNORE
from ._core import checker, expect, expect_close, expect_grads, expect_items, expect_tensor


@checker("format_prompt", hint='the template is "Q: " + instruction + "\\nA: " (note the space after '
         'each colon); the response then follows directly.')
def format_prompt(student) -> str:

    for instruction in ("reverse night", "say moles in capitals", "how does rose end?", "x", "  spaced  out ",
                        "Q: A: nested", "ünïcödé wörd"):
        out = student(instruction)
        expect(type(out) is str, f"format_prompt should return a str, got a {type(out).__name__}")
        expect(out == instructions.format_prompt(instruction),
               f"format_prompt({instruction!r}) returned {out!r}, expected {instructions.format_prompt(instruction)!r}")
    return "the model sees exactly the template it was tuned on"


@checker("mask_prompt_labels", hint="x = ids[:-1], y = ids[1:]; y[t] is the token after position t, so "
         "it is still a prompt token while t + 1 < prompt_len: set y[:prompt_len - 1] to -100.")
def mask_prompt_labels(student) -> str:

    g = torch.Generator().manual_seed(7)
    for n, p in ((10, 4), (6, 1), (6, 5), (30, 17), (2, 1)):
        ids = torch.randint(0, 65, (n,), generator=g)
        x, y = expect_items(student(ids, p), 2, "mask_prompt_labels")
        ex, ey = instructions.mask_prompt_labels(ids, p)
        expect_tensor(x, f"x for {n} tokens", shape=(n - 1,), dtype=ids.dtype, device=ids.device)
        expect_tensor(y, f"y for {n} tokens", shape=(n - 1,), dtype=ids.dtype, device=ids.device)
        expect(torch.equal(x, ex), f"x should be ids[:-1] for {n} tokens")
        masked = int((y == IGNORE).sum())
        expect(masked == p - 1, f"with a {p}-token prompt, {p - 1} labels should be -100 (they predict prompt "
               f"tokens); yours masks {masked}")
        expect(torch.equal(y, ey), f"y should be ids[1:] with the first {p - 1} labels set to -100")
    return "only the response is learned"


@checker("sft_loss", hint="flatten logits to (B*T, V) and labels to (B*T,), then F.cross_entropy with "
         "ignore_index=-100: the mean runs over the counted positions only.")
def sft_loss(student) -> str:

    g = torch.Generator().manual_seed(8)
    for B, T, V, scale in ((2, 6, 9, 1.0), (3, 4, 5, 1.0), (2, 5, 7, 300.0)):  # 300: log(softmax) overflows
        logits = torch.randn(B, T, V, generator=g) * scale
        labels = torch.randint(0, V, (B, T), generator=g)
        labels[0, :3] = IGNORE
        labels[-1, -1] = IGNORE
        what = f"the loss for logits {(B, T, V)}" + (" of size ~1000" if scale > 1 else "")
        out = expect_tensor(student(logits, labels), what, shape=(), floating=True, device=logits.device)
        counted = labels != IGNORE
        logp = torch.log_softmax(logits.double(), -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        over_all = -(logp * counted).sum() / labels.numel()
        expect(not torch.isclose(out.detach().double(), over_all, atol=1e-6),
               "your loss divides by every position (B * T); divide by the counted ones only")
        expect_close(out, lm.masked_lm_loss(logits, labels), what, atol=1e-5 if scale == 1 else 1e-3,
                     hint="average over the counted positions only, not over B * T; F.cross_entropy (or "
                          "log_softmax) is stable where log(softmax(x)) is not")
    logits = torch.randn(2, 4, 6, generator=g).requires_grad_()
    labels = torch.randint(0, 6, (2, 4), generator=g)
    labels[1, :2] = IGNORE
    expect_grads(student(logits, labels), {"logits": logits}, lambda lg: lm.masked_lm_loss(lg, labels), "the loss")
    return "prompt and padding positions cost nothing"


@checker("pad_batch", hint="pad every x with pad_id and every y with -100 up to the longest pair, on the "
         "right; a pair longer than block_size is an error, never silently cut.")
def pad_batch(student) -> str:

    t = lambda *v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    batches = [([(t(1, 2, 3), t(-100, 3, 4)), (t(5), t(6)), (t(7, 8), t(-100, 9))], 16, 0),
               ([(t(4, 4), t(-100, 2)), (t(9, 8, 7, 6), t(-100, -100, 5, 1))], 4, 3),  # longest == block_size
               ([(t(11), t(12))], 1, 62)]
    for pairs, block_size, pad_id in batches:
        x, y = expect_items(student(pairs, block_size, pad_id), 2, "pad_batch")
        ex, ey = instructions.pad_batch(pairs, block_size, pad_id)
        for name, got, want in (("x", x, ex), ("y", y, ey)):
            expect_tensor(got, name, shape=tuple(want.shape), device=want.device)
            expect(got.dtype == torch.long, f"{name} has dtype {got.dtype}, expected torch.int64 (token ids for the "
                   f"embedding and labels for cross_entropy; torch.full(..., pad_id) with a float gives a float)")
        expect(torch.equal(x, ex), f"x should be right-padded with pad_id {pad_id}: expected {ex.tolist()}, "
                                   f"got {x.tolist()}")
        expect(torch.equal(y, ey), f"y should be right-padded with -100: expected {ey.tolist()}, got {y.tolist()}")
    pairs = batches[0][0]
    expect(student.raises(ValueError, pairs, 2, 0),
           "a pair of 3 tokens with block_size=2 must raise ValueError (never cut silently)")
    return "padding never reaches the loss"


@checker("lora_forward", hint="h = base(x) + (alpha / r) * (x @ A.T) @ B.T, with A (r, d_in) and "
         "B (d_out, r); the base layer's own bias stays in base(x).")
def lora_forward(student) -> str:
    g = torch.Generator().manual_seed(9)
    for d_in, d_out, r, alpha, lead in ((8, 6, 2, 4.0, (3, 5)), (16, 16, 4, 16.0, (3, 5)), (5, 7, 3, 6.0, (4,)),
                                        (6, 4, 1, 1.0, (2, 1, 3))):
        base = _frozen(nn.Linear(d_in, d_out))
        A = torch.randn(r, d_in, generator=g).requires_grad_()
        B = torch.randn(d_out, r, generator=g).requires_grad_()
        x = torch.randn(*lead, d_in, generator=g).requires_grad_()
        out = student(x, base, A, B, alpha)
        with torch.no_grad():
            expected = base(x) + (alpha / r) * (x @ A.T) @ B.T
            unscaled = base(x) + (x @ A.T) @ B.T
        expect_tensor(out, f"the LoRA output for x {tuple(x.shape)}", shape=tuple(expected.shape), dtype=x.dtype,
                      device=x.device)
        expect(alpha == r or not torch.allclose(out.detach(), unscaled, atol=1e-5),
               f"the update must be scaled by alpha / r = {alpha / r:g}")
        expect_close(out, expected, f"the LoRA output (r={r}, alpha={alpha:g})", atol=1e-4)
        expect_grads(out, {"x": x, "A": A, "B": B},
                     lambda x_, A_, B_, base=base, r=r, alpha=alpha: base(x_) + (alpha / r) * (x_ @ A_.T) @ B_.T,
                     f"the LoRA output (r={r})", atol=1e-4,
                     hint="A and B are what LoRA trains: no torch.no_grad() or .detach() on the update")
    return "a frozen layer plus a trainable low-rank update"


def _frozen(layer: nn.Linear) -> nn.Linear:
    """The base layer as LoRA sees it: its weights never train."""
    for p in layer.parameters():
        p.requires_grad_(False)
    return layer
