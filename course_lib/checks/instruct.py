"""Checkers for notebook 07 (instruction tuning): the prompt template, the prompt-masked labels,
the masked SFT loss, right-padding a batch, and the LoRA forward pass."""
from __future__ import annotations

import torch
from torch import nn

from ..models import lm
from ..tasks import instructions
from ..tokenizers import IGNORE
from ._core import checker, expect, expect_close, expect_tensor


@checker("format_prompt", hint='the template is "Q: " + instruction + "\\nA: " (note the space after '
         'each colon); the response then follows directly.')
def format_prompt(student) -> str:

    for instruction in ("reverse night", "say moles in capitals", "how does rose end?", "x"):
        out = student(instruction)
        expect(isinstance(out, str), f"format_prompt should return a str, got {type(out).__name__}")
        expect(out == instructions.format_prompt(instruction),
               f"format_prompt({instruction!r}) returned {out!r}, expected {instructions.format_prompt(instruction)!r}")
    return "the model sees exactly the template it was tuned on"


@checker("mask_prompt_labels", hint="x = ids[:-1], y = ids[1:]; y[t] is the token after position t, so "
         "it is still a prompt token while t + 1 < prompt_len: set y[:prompt_len - 1] to -100.")
def mask_prompt_labels(student) -> str:

    g = torch.Generator().manual_seed(7)
    for n, p in ((10, 4), (6, 1), (6, 5), (30, 17)):
        ids = torch.randint(0, 65, (n,), generator=g)
        before = ids.clone()
        out = student(ids, p)
        expect(isinstance(out, tuple) and len(out) == 2, "mask_prompt_labels should return a pair (x, y)")
        x, y = out
        ex, ey = instructions.mask_prompt_labels(ids, p)
        expect(torch.equal(ids, before), "mask_prompt_labels changed ids in place; work on copies (clone)")
        expect_tensor(x, f"x for {n} tokens", shape=(n - 1,))
        expect_tensor(y, f"y for {n} tokens", shape=(n - 1,))
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
    for B, T, V in ((2, 6, 9), (3, 4, 5)):
        logits = torch.randn(B, T, V, generator=g)
        labels = torch.randint(0, V, (B, T), generator=g)
        labels[0, :3] = IGNORE
        labels[-1, -1] = IGNORE
        out = student(logits, labels)
        expect_tensor(out, f"the loss for logits {(B, T, V)}", shape=())
        counted = labels != IGNORE
        logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        over_all = -(logp * counted).sum() / labels.numel()
        expect(not torch.isclose(out, over_all, atol=1e-6),
               "your loss divides by every position (B * T); divide by the counted ones only")
        expect_close(out, lm.masked_lm_loss(logits, labels), f"the loss for logits {(B, T, V)}", atol=1e-5,
                     hint="average over the counted positions only, not over B * T")
    return "prompt and padding positions cost nothing"


@checker("pad_batch", hint="pad every x with pad_id and every y with -100 up to the longest pair, on the "
         "right; a pair longer than block_size is an error, never silently cut.")
def pad_batch(student) -> str:

    pairs = [(torch.tensor([1, 2, 3]), torch.tensor([-100, 3, 4])), (torch.tensor([5]), torch.tensor([6])),
             (torch.tensor([7, 8]), torch.tensor([-100, 9]))]
    out = student(pairs, 16, 0)
    expect(isinstance(out, tuple) and len(out) == 2, "pad_batch should return a pair (x, y)")
    x, y = out
    ex, ey = instructions.pad_batch(pairs, 16, 0)
    expect_tensor(x, "x", shape=tuple(ex.shape))
    expect_tensor(y, "y", shape=tuple(ey.shape))
    expect(torch.equal(x, ex), f"x should be right-padded with pad_id 0: expected {ex.tolist()}, got {x.tolist()}")
    expect(torch.equal(y, ey), f"y should be right-padded with -100: expected {ey.tolist()}, got {y.tolist()}")
    expect(_raises_value_error(lambda: student(pairs, 2, 0)),
           "a pair of 3 tokens with block_size=2 must raise ValueError (never cut silently)")
    return "padding never reaches the loss"


def _raises_value_error(fn) -> bool:
    try:
        fn()
    except ValueError:
        return True
    except NotImplementedError:
        raise
    except Exception:
        return False
    return False


@checker("lora_forward", hint="h = base(x) + (alpha / r) * (x @ A.T) @ B.T, with A (r, d_in) and "
         "B (d_out, r); the base layer's own bias stays in base(x).")
def lora_forward(student) -> str:
    g = torch.Generator().manual_seed(9)
    for d_in, d_out, r, alpha in ((8, 6, 2, 4.0), (16, 16, 4, 16.0)):
        base = nn.Linear(d_in, d_out)
        A = torch.randn(r, d_in, generator=g)
        B = torch.randn(d_out, r, generator=g)
        x = torch.randn(3, 5, d_in, generator=g)
        out = student(x, base, A, B, alpha)
        expected = base(x) + (alpha / r) * (x @ A.T) @ B.T
        expect_tensor(out, f"the LoRA output for x {tuple(x.shape)}", shape=tuple(expected.shape))
        unscaled = base(x) + (x @ A.T) @ B.T
        expect(not torch.allclose(out, unscaled, atol=1e-5),
               f"the update must be scaled by alpha / r = {alpha / r:g}")
        expect_close(out, expected, f"the LoRA output (r={r}, alpha={alpha:g})", atol=1e-4)
    return "a frozen layer plus a trainable low-rank update"
