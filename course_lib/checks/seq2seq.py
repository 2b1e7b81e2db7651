"""Checkers for notebook 02 (seq2seq with Bahdanau attention).

Each checker runs the student's function on cases whose answers come from
:mod:`course_lib.models.seq2seq`, and recognises the usual mistakes to give a specific hint.
"""
from __future__ import annotations

import torch

from ..models import seq2seq as ref
from ._core import CheckFailed, checker, expect, expect_close, expect_grads, expect_items, expect_tensor


def _close(a, b, atol: float = 1e-5) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(
        a.detach().double(), b.detach().double(), atol=atol, rtol=1e-4)


def _score_case(g: torch.Generator, B: int, T: int, d_s: int, d_h: int, d_a: int):
    return (torch.randn(B, d_s, generator=g), torch.randn(B, T, d_h, generator=g),
            torch.randn(d_a, d_s, generator=g), torch.randn(d_a, d_h, generator=g), torch.randn(d_a, generator=g))


@checker("additive_score", hint="e_ij = v^T tanh(W s_{i-1} + U h_j): one score per source position j.")
def additive_score(student) -> str:
    """Student: ``additive_score(s_prev (B, d_s), H (B, T_x, d_h), W (d_a, d_s), U (d_a, d_h), v (d_a,))``
    -> e (B, T_x)."""
    g = torch.Generator().manual_seed(0)
    for B, T, d_s, d_h, d_a in [(1, 4, 3, 3, 3), (2, 5, 3, 4, 6), (3, 7, 8, 10, 5)]:
        s, H, W, U, v = _score_case(g, B, T, d_s, d_h, d_a)
        out = student(s, H, W, U, v)
        expected = ref.additive_score(s, H, W, U, v)
        expect_tensor(out, f"e for B={B}, T_x={T}")
        if out.shape != expected.shape:
            raise CheckFailed(f"e has shape {tuple(out.shape)}, expected (B, T_x) = {tuple(expected.shape)}: "
                              "one score per sentence and source position")
        expect_tensor(out, f"e for B={B}, T_x={T}", dtype=s.dtype, device=s.device)
        no_tanh = ((s @ W.T)[:, None, :] + H @ U.T) @ v
        if _close(out, no_tanh) and not _close(out, expected):
            raise CheckFailed("your scores equal v^T (W s + U h_j) without the tanh: the non-linearity is what "
                              "makes the score more than a dot product")
        other_state = torch.tanh((s.flip(0) @ W.T)[:, None, :] + H @ U.T) @ v
        if B > 1 and _close(out, other_state) and not _close(out, expected):
            raise CheckFailed("sentence b's scores use another sentence's state: "
                              "broadcast W s over T_x with [:, None, :]")
        expect_close(out, expected, f"e for B={B}, T_x={T}, d_s={d_s}, d_h={d_h}, d_a={d_a}",
                     hint="W multiplies s_{i-1}, U multiplies each h_j, v^T takes the dot product after tanh")
    leaves = dict(zip(("s_prev", "H", "W", "U", "v"), (t.requires_grad_() for t in _score_case(g, 2, 4, 3, 5, 6)),
                      strict=True))
    expect_grads(student(*leaves.values()), leaves, ref.additive_score, "e")
    return "e_ij = v^T tanh(W s_{i-1} + U h_j) for every j"


def _inverted(alpha: torch.Tensor, valid: torch.Tensor) -> bool:
    """In the rows with padding, the real tokens get weight 0 and the padding all of it: the mask was
    read as True = padding (nn.MultiheadAttention's key_padding_mask), not True = real token."""
    rows = (~valid).any(-1)
    if not bool(rows.any()):
        return False
    a, v = alpha.detach()[rows], valid[rows]
    on_real, on_pad = a[v].nan_to_num(1.0), a[~v]
    return bool((on_real.abs() < 1e-6).all() and torch.isfinite(on_pad).all() and on_pad.sum() > 0)


@checker("attention_context", hint="alpha = softmax over j of e with the scores where src_valid is False set to "
         "-inf; c_i = sum_j alpha_ij h_j; return (c, alpha), context first.")
def attention_context(student) -> str:
    """Student: ``attention_context(e (B, T_x), H (B, T_x, d_h), src_valid (B, T_x) bool, True = real token)``
    -> (c (B, d_h), alpha (B, T_x))."""
    g = torch.Generator().manual_seed(1)
    B, T, d_h = 3, 6, 5  # T != d_h, so the two outputs have different shapes and their order shows
    e = torch.randn(B, T, generator=g) * 2
    H = torch.randn(B, T, d_h, generator=g)
    valid = ref.valid_mask_from_lengths(torch.tensor([6, 4, 1]), T)
    mixed = ref.valid_mask_from_lengths(torch.tensor([2, 6, 5]), T)
    cases = [(e, valid, "with padding"), (e, torch.ones(B, T, dtype=torch.bool), "without padding"),
             (e, mixed, "with other lengths"), (e * 400, valid, "with large scores (|e| ~ 1000)")]
    for scores, case_valid, what in cases:
        first, second = expect_items(student(scores, H, case_valid), 2, "attention_context")
        if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor) \
                and tuple(first.shape) == (B, T) and tuple(second.shape) == (B, d_h):
            raise CheckFailed("you returned (alpha, c); the order is (c, alpha), context first, the order "
                              "model.attention uses")
        c, alpha = first, second
        expect_tensor(c, f"c {what}", (B, d_h), dtype=H.dtype, device=H.device)
        expect_tensor(alpha, f"alpha {what}", (B, T), dtype=scores.dtype, device=scores.device)
        ref_alpha = ref.masked_softmax(scores, case_valid)
        if _inverted(alpha, case_valid):
            raise CheckFailed("alpha is zero on every real token and puts its weight on padding: src_valid is "
                              "True at the REAL tokens (may be attended) and False at padding, so set the scores "
                              "to -inf where it is False: e.masked_fill(~src_valid, -inf)")
        if _close(alpha, torch.softmax(scores, dim=0)):
            raise CheckFailed("alpha is a softmax over the batch (dim 0); normalise over source positions j (dim -1)")
        expect(bool(torch.isfinite(alpha).all()), f"alpha {what} contains inf/nan: exp of a large score overflows; "
                                                  f"torch.softmax subtracts the maximum for you")
        sums = alpha.detach().sum(-1)
        expect(torch.allclose(sums, torch.ones(B), atol=1e-4),
               f"alpha {what} should sum to 1 over j in every row, got row sums {[round(x, 4) for x in sums.tolist()]}")
        pad_weight = alpha.detach()[~case_valid].abs().max().item() if (~case_valid).any() else 0.0
        expect(pad_weight < 1e-6,
               f"alpha puts weight {pad_weight:.3g} on padding positions (src_valid False); set their scores to "
               "-inf before the softmax (multiplying e by the mask leaves a score of 0, which still gets weight)")
        expect_close(alpha, ref_alpha, f"alpha {what}")
        expect_close(c, ref.context_vector(ref_alpha, H), f"c {what}",
                     hint="c_i = sum_j alpha_ij h_j: a weighted average of the annotations (torch.bmm or einsum)")
    leaves = {"e": (e * 1.0).requires_grad_(), "H": H.clone().requires_grad_()}
    c, alpha = expect_items(student(leaves["e"], leaves["H"], valid), 2, "attention_context")
    expect_grads(c, leaves, lambda e_, H_: ref.attention_context(e_, H_, valid)[0], "c")
    return "(c, alpha): weights sum to one over real positions and are zero on padding"


def _tiny_model(seed: int = 0) -> ref.Seq2Seq:
    torch.manual_seed(seed)
    return ref.Seq2Seq(11, 9, d_emb=6, n_h=5, d_s=7, d_a=4, attention=True).eval()


@checker("decoder_step",
         hint="c_i from s_{i-1}; s_i = cell([E y_{i-1}; c_i], s_{i-1}); logits = out([s_i; c_i; E y_{i-1}]).")
def decoder_step(student) -> str:
    """Student: ``decoder_step(model, y_prev (B,), s_prev (B, d_s), H (B, T_x, d_h), src_valid)``
    -> (logits (B, V), s_i (B, d_s), alpha_i (B, T_x)); ``src_valid`` True at real source tokens."""
    model = _tiny_model()
    g = torch.Generator().manual_seed(2)
    B, T = 3, 6
    src = torch.randint(1, 11, (B, T), generator=g)
    src_len = torch.tensor([6, 3, 5])
    with torch.no_grad():
        mem = model.encode(src, src_len)
    for k in range(2):
        s_prev = (mem.s0 + 0.3 * (k + 1) * torch.randn(mem.s0.shape, generator=g)).requires_grad_()
        H = mem.H.clone().requires_grad_()
        y_prev = torch.randint(0, 9, (B,), generator=g)
        out = student(model, y_prev, s_prev, H, mem.src_valid)
        logits, s, alpha = expect_items(out, 3, "decoder_step")
        with torch.no_grad():
            exp_logits, exp_s, exp_alpha = model.decoder_step(y_prev, s_prev, H, mem.src_valid)
        expect_tensor(logits, "logits", tuple(exp_logits.shape), dtype=exp_logits.dtype, device=exp_logits.device)
        expect_tensor(s, "s_i", tuple(exp_s.shape), dtype=exp_s.dtype)
        expect_tensor(alpha, "alpha_i", tuple(exp_alpha.shape), dtype=exp_alpha.dtype)
        with torch.no_grad():
            if not _close(alpha, exp_alpha):
                _, late = model.attention(exp_s, H, mem.src_valid)
                if _inverted(alpha, mem.src_valid):
                    raise CheckFailed("alpha_i is zero on every real source token and puts its weight on padding: "
                                      "src_valid is True at the real tokens; pass it as it is, "
                                      "model.attention(s_prev, H, src_valid)")
                if _close(alpha, late):
                    raise CheckFailed("alpha_i was computed from the new state s_i; Bahdanau's decoder attends "
                                      "with the previous state s_{i-1}, before the GRU update")
                expect_close(alpha, exp_alpha, "alpha_i", hint="use model.attention(s_prev, H, src_valid)")
            if not _close(s, exp_s):
                emb = model.tgt_embed(y_prev)
                no_ctx = torch.cat([emb, torch.zeros_like(H[:, 0])], -1)
                if _close(s, model.cell(no_ctx, s_prev)):
                    raise CheckFailed("s_i ignores the context c_i: the GRU input is [E y_{i-1}; c_i]")
                expect_close(s, exp_s, "s_i", hint="s_i = model.cell(torch.cat([E y_{i-1}, c_i], -1), s_{i-1})")
        expect_close(logits, exp_logits, "logits",
                     hint="logits = model.out(torch.cat([s_i, c_i, E y_{i-1}], -1)), in that order")
    expect_grads(logits, {"s_prev": s_prev, "H": H},
                 lambda s_, H_: model.decoder_step(y_prev, s_, H_, mem.src_valid)[0], "the logits",
                 shared=dict(model.named_parameters()))
    return "one step of the attention decoder"
