"""Seq2seq with Bahdanau attention: the date task, the attention maths, the model, decoding, checkers."""
from __future__ import annotations

import datetime as dt
import itertools

import pytest
import torch

from course_lib import checks
from course_lib.models import seq2seq as s2s
from course_lib.tasks.dates import FORMATS, DateTask, identify_format, pad_sequences, render


@pytest.fixture(scope="module")
def task():
    return DateTask(seed=0)


def tiny(attention: bool = True, seed: int = 0, V_src: int = 11, V_tgt: int = 9) -> s2s.Seq2Seq:
    torch.manual_seed(seed)
    return s2s.Seq2Seq(V_src, V_tgt, d_emb=6, n_h=5, d_s=7, d_a=4, attention=attention).eval()


def padded_batch(seed: int = 0, lengths=(6, 3, 5, 1), V: int = 11):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    T = int(lengths.max())
    src = torch.randint(1, V, (len(lengths), T), generator=g)
    src[~s2s.valid_mask_from_lengths(lengths, T)] = 0
    return src, lengths


# ---------------------------------------------------------------------------------------------- data

def test_task_is_deterministic_and_heldout_is_disjoint(task):
    again = DateTask(seed=0)
    assert task.sample(50, "train", seed=3) == again.sample(50, "train", seed=3)
    assert task.sample(50, "train", seed=3) != task.sample(50, "train", seed=4)
    assert not set(task.train_dates) & set(task.heldout_dates)
    assert len(task.heldout_dates) == round(0.1 * (len(task.train_dates) + len(task.heldout_dates)))
    held = {d.isoformat() for d in task.heldout_dates}
    assert all(t in held for _, t in task.sample(200, "heldout"))
    assert not any(t in held for _, t in task.sample(500, "train"))
    assert DateTask(seed=1).heldout_dates != task.heldout_dates


def test_formats_agree_with_strptime():
    # Python's own parser reads our formats back to the same date (its %y window is 1969-2068).
    parse = {"03/03/98": "%m/%d/%y", "3/3/1998": "%m/%d/%Y", "03.03.1998": "%d.%m.%Y", "3.3.98": "%d.%m.%y",
             "Tuesday, March 3, 1998": "%A, %B %d, %Y", "1998 Mar 3": "%Y %b %d", "03-Mar-1998": "%d-%b-%Y",
             "1998/03/03": "%Y/%m/%d", "19980303": "%Y%m%d", "3 march 1998": "%d %B %Y"}
    d0 = dt.date(1970, 1, 1)
    for k in range(0, 365 * 70, 97):
        d = d0 + dt.timedelta(days=k)
        for fmt, pattern in parse.items():
            assert dt.datetime.strptime(render(d, fmt), pattern).date() == d, (fmt, render(d, fmt))
    assert render(dt.date(1998, 3, 3), "Tuesday, March 3, 1998") == "Tuesday, March 3, 1998"
    assert render(dt.date(2011, 11, 11), "March 3rd, 1998") == "November 11th, 2011"
    assert render(dt.date(2022, 5, 22), "the 3rd of March 1998") == "the 22nd of May 2022"
    assert render(dt.date(1950, 1, 1), "03/03/98") == "01/01/50"
    for src, tgt in DateTask(seed=0).sample(300, "heldout"):
        assert render(dt.date.fromisoformat(tgt), identify_format(src, tgt)).lower() == src.lower()
    with pytest.raises(ValueError, match="any of the formats"):
        identify_format("3 march 1998", "1998-03-04")
    assert set(FORMATS) >= {"3 march 1998", "03/03/98", "Tuesday, March 3, 1998", "1998 Mar 3"}


def test_tokenizers_and_collate(task):
    b = task.collate([("3 march 1998", "1998-03-03"), ("03/03/98", "1998-03-03")])
    assert b["src"].shape == (2, 12) and b["src_len"].tolist() == [12, 8]
    assert (b["src"][1, 8:] == 0).all()
    assert b["tgt"].shape == (2, 12)
    assert b["tgt"][0, 0] == task.tgt_tokenizer.bos_id and b["tgt"][0, -1] == task.tgt_tokenizer.eos_id
    assert task.tgt_tokenizer.decode(b["tgt"][0]) == "1998-03-03"
    assert task.src_tokenizer.decode(b["src"][1]) == "03/03/98"


def test_bad_inputs_to_the_data_raise(task):
    with pytest.raises(ValueError, match="unknown characters"):
        task.src_tokenizer.encode("3 März 1998")
    with pytest.raises(ValueError, match="empty"):
        task.src_tokenizer.encode("")
    with pytest.raises(ValueError, match="empty"):
        task.collate([])
    with pytest.raises(ValueError, match="single string"):
        task.encode_sources("3 march 1998")
    with pytest.raises(ValueError, match="split"):
        task.sample(3, "test")
    with pytest.raises(ValueError, match="format"):
        render(dt.date(2000, 1, 1), "yyyy")
    with pytest.raises(ValueError, match="out of range"):
        task.tgt_tokenizer.decode([99])
    with pytest.raises(ValueError, match="empty"):
        pad_sequences([[1, 2], []])


# --------------------------------------------------------------------------------------- attention

def test_additive_score_matches_the_formula_written_out():
    g = torch.Generator().manual_seed(0)
    B, T, d_s, d_h, d_a = 2, 5, 3, 4, 6
    s, H = torch.randn(B, d_s, generator=g), torch.randn(B, T, d_h, generator=g)
    W, U, v = torch.randn(d_a, d_s, generator=g), torch.randn(d_a, d_h, generator=g), torch.randn(d_a, generator=g)
    e = s2s.additive_score(s, H, W, U, v)
    direct = torch.tensor([[float(v @ torch.tanh(W @ s[b] + U @ H[b, j])) for j in range(T)] for b in range(B)])
    torch.testing.assert_close(e, direct, atol=1e-5, rtol=1e-5)
    att = s2s.AdditiveAttention(d_s, d_h, d_a)
    c1, a1 = att(s, H)
    c2, a2 = att(s, H, keys=att.keys(H))
    torch.testing.assert_close(c1, c2)
    torch.testing.assert_close(a1, a2)


def test_attention_weights_sum_to_one_and_mask_padding():
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([5, 2, 1, 4])
    valid = s2s.valid_mask_from_lengths(lengths, 5)  # True = real token, may be attended
    assert valid.tolist()[1] == [True, True, False, False, False]
    e = torch.randn(4, 5, generator=g) * 3
    H = torch.randn(4, 5, 3, generator=g)
    alpha = s2s.masked_softmax(e, valid)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(4))
    assert (alpha[~valid] == 0).all() and (alpha[valid] > 0).all()
    for b, n in enumerate(lengths.tolist()):  # equals PyTorch's softmax over the real positions only
        torch.testing.assert_close(alpha[b, :n], torch.softmax(e[b, :n], -1))
        torch.testing.assert_close(s2s.context_vector(alpha, H)[b], (alpha[b, :n, None] * H[b, :n]).sum(0))
    # padding content cannot leak into the context
    H2 = H.clone()
    H2[~valid] = 1e3
    torch.testing.assert_close(s2s.context_vector(alpha, H2), s2s.context_vector(alpha, H))


def test_model_attention_weights_sum_to_one_and_are_zero_on_padding():
    model = tiny()
    src, lengths = padded_batch()
    tgt_in = torch.randint(0, 9, (4, 3))
    logits, alpha = model(src, lengths, tgt_in)
    assert logits.shape == (4, 3, 9) and alpha.shape == (4, 3, 6)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(4, 3))
    valid = s2s.valid_mask_from_lengths(lengths, 6)
    assert (alpha.masked_select(~valid[:, None, :].expand_as(alpha)) == 0).all()


def test_attention_bad_inputs_raise():
    with pytest.raises(ValueError, match="all padding"):
        s2s.masked_softmax(torch.zeros(2, 3), torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match=r"src_valid must be a bool tensor of shape \(2, 3\) \(True = real token"):
        s2s.masked_softmax(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="src_valid must be a bool tensor"):
        s2s.masked_softmax(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"U must have shape \(d_a=6, d_h=4\)"):
        s2s.additive_score(torch.zeros(2, 3), torch.zeros(2, 5, 4), torch.zeros(6, 3), torch.zeros(4, 6),
                           torch.zeros(6))
    with pytest.raises(ValueError, match="empty sequence"):
        s2s.additive_score(torch.zeros(2, 3), torch.zeros(2, 0, 4), torch.zeros(6, 3), torch.zeros(6, 4),
                           torch.zeros(6))
    with pytest.raises(ValueError, match=r"s_prev must have shape \(B, d_s\)"):
        s2s.additive_score(torch.zeros(3), torch.zeros(2, 5, 4), torch.zeros(6, 3), torch.zeros(6, 4), torch.zeros(6))
    with pytest.raises(ValueError, match="length >= 1"):
        s2s.valid_mask_from_lengths(torch.tensor([3, 0]))


# ----------------------------------------------------------------------------------------- model

def test_encoder_annotations_equal_nn_gru_on_each_unpadded_sentence():
    model = tiny()
    src, lengths = padded_batch()
    H, fwd_last, bwd_first = model.encoder(src, lengths)
    n_h = model.encoder.n_h
    for b, n in enumerate(lengths.tolist()):
        x = model.encoder.embed(src[b: b + 1, :n])
        out, h_n = model.encoder.rnn(x)  # PyTorch's bidirectional GRU on the sentence alone
        torch.testing.assert_close(H[b, :n], out[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(fwd_last[b], out[0, n - 1, :n_h])
        torch.testing.assert_close(bwd_first[b], out[0, 0, n_h:])
        assert (H[b, n:] == 0).all()


@pytest.mark.parametrize("attention", [True, False])
def test_seq2seq_shapes_and_padding_invariance(attention):
    model = tiny(attention)
    src, lengths = padded_batch()
    tgt_in = torch.randint(0, 9, (4, 5))
    logits, alpha = model(src, lengths, tgt_in)
    assert logits.shape == (4, 5, 9)
    assert (alpha is None) != attention
    for b, n in enumerate(lengths.tolist()):  # a sentence alone gives the same output as in a padded batch
        alone, _ = model(src[b: b + 1, :n], lengths[b: b + 1], tgt_in[b: b + 1])
        torch.testing.assert_close(alone[0], logits[b], atol=1e-5, rtol=1e-5)


def test_decoder_step_function_equals_the_module_and_the_forward():
    model = tiny()
    src, lengths = padded_batch()
    mem = model.encode(src, lengths)
    y = torch.tensor([1, 3, 4, 5])
    got = s2s.decoder_step(model, y, mem.s0, mem.H, mem.src_valid)
    want = model.decoder_step(y, mem.s0, mem.H, mem.src_valid)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    logits, alpha = model(src, lengths, y[:, None])
    torch.testing.assert_close(logits[:, 0], got[0])
    torch.testing.assert_close(alpha[:, 0], got[2])


def test_loss_and_bad_model_inputs():
    model = tiny()
    src, lengths = padded_batch()
    tgt = torch.tensor([[1, 3, 4, 2], [1, 5, 2, 0], [1, 6, 7, 2], [1, 2, 0, 0]])
    loss = s2s.seq2seq_loss(model, {"src": src, "src_len": lengths, "tgt": tgt})
    logits, _ = model(src, lengths, tgt[:, :-1])
    y = tgt[:, 1:]
    keep = y != 0
    manual = torch.nn.functional.cross_entropy(logits[keep], y[keep])
    torch.testing.assert_close(loss, manual)
    with pytest.raises(ValueError, match="src_len must lie in"):
        model(src, torch.tensor([6, 3, 9, 1]), tgt)
    with pytest.raises(ValueError, match=r"src must be a \(B, T_x\) tensor"):
        model(src[0], lengths, tgt)
    with pytest.raises(ValueError, match="tgt_in must have shape"):
        model(src, lengths, tgt[:2])
    with pytest.raises(ValueError, match="teacher_forcing"):
        model(src, lengths, tgt, teacher_forcing=1.5)
    with pytest.raises(ValueError, match="fixed context"):
        tiny(False).decoder_step(tgt[:, 0], torch.zeros(4, 7), torch.zeros(4, 6, 10))


def test_free_running_forward_feeds_back_the_greedy_tokens():
    model = tiny()
    src, lengths = padded_batch()
    ids, alpha_g = s2s.greedy_decode(model, src, lengths, max_len=6)
    tgt_in = torch.cat([torch.full((4, 1), model.bos_id), torch.randint(3, 9, (4, ids.size(1) - 1))], 1)
    logits, alpha = model(src, lengths, tgt_in, teacher_forcing=0.0)
    free = s2s._mask_specials(logits.reshape(-1, 9), model).argmax(-1).reshape(ids.shape)
    done = torch.zeros(4, dtype=torch.bool)
    for t in range(ids.size(1)):  # equal up to each sentence's <eos>
        assert (free[~done, t] == ids[~done, t]).all()
        done |= ids[:, t] == model.eos_id
    torch.testing.assert_close(alpha, alpha_g)


# -------------------------------------------------------------------------------------- decoding

def _brute_force_best(model, src, n, max_len):
    """Best sequence by total log-probability among all that end in <eos> or reach max_len."""
    V = model.tgt_vocab_size
    words = [t for t in range(V) if t not in (model.pad_id, model.bos_id)]
    best = (-float("inf"), None)
    for L in range(1, max_len + 1):
        for seq in itertools.product(words, repeat=L):
            if model.eos_id in seq[:-1] or (L < max_len and seq[-1] != model.eos_id):
                continue
            lp = s2s.sequence_logprob(model, src, torch.tensor([n]), list(seq))
            best = max(best, (lp, list(seq)), key=lambda x: x[0])
    return best


def test_beam_search_is_exact_with_a_wide_beam_and_greedy_with_one():
    torch.manual_seed(0)
    model = s2s.Seq2Seq(11, 6, d_emb=4, n_h=3, d_s=5, d_a=3).eval()
    with torch.no_grad():  # make <eos> likely enough to matter
        model.out.bias[model.eos_id] += 0.5
    src, lengths = padded_batch(lengths=(5, 2))
    for b in range(2):
        n = int(lengths[b])
        ids, score, alpha = s2s.beam_search(model, src[b, :n], n, beam_size=64, max_len=3)
        lp, best = _brute_force_best(model, src[b, :n], n, 3)
        assert ids == best
        assert score == pytest.approx(lp, abs=1e-5)
        assert score == pytest.approx(s2s.sequence_logprob(model, src[b, :n], n, ids), abs=1e-5)
        assert alpha.shape == (len(ids), n)
        g_ids, _ = s2s.greedy_decode(model, src[b: b + 1, :n], lengths[b: b + 1], max_len=3)
        g = [t for t in g_ids[0].tolist() if t != model.pad_id]
        b1, s1, _ = s2s.beam_search(model, src[b, :n], n, beam_size=1, max_len=3)
        assert b1 == g
        assert score >= s1 - 1e-6
    with pytest.raises(ValueError, match="one sentence"):
        s2s.beam_search(model, src, beam_size=2)
    with pytest.raises(ValueError, match="beam_size"):
        s2s.beam_search(model, src[0], beam_size=0)


# -------------------------------------------------------------------------------------- checkers

def _ref_attention_context(e, H, valid):
    alpha = s2s.masked_softmax(e, valid)
    return s2s.context_vector(alpha, H), alpha


def _ref_additive_score(s, H, W, U, v):
    return torch.tanh((s @ W.T)[:, None, :] + H @ U.T) @ v


def test_checker_additive_score():
    assert checks.additive_score(_ref_additive_score)
    assert checks.additive_score(s2s.additive_score)
    no_tanh = checks.additive_score(lambda s, H, W, U, v: ((s @ W.T)[:, None, :] + H @ U.T) @ v)
    assert not no_tanh and "tanh" in no_tanh.message
    assert not checks.additive_score(lambda s, H, W, U, v: torch.tanh((s @ W.T)[:, None, :] + H @ U.T).sum(-1))
    assert not checks.additive_score(lambda s, H, W, U, v: torch.tanh((s @ W.T)[None, :, :] + H @ U.T) @ v)
    ni = checks.additive_score(lambda *a: (_ for _ in ()).throw(NotImplementedError()))
    assert not ni and ni.status == "not implemented"


def test_checker_attention_context():
    assert checks.attention_context(_ref_attention_context)
    assert checks.attention_context(s2s.attention_context)

    def no_mask(e, H, valid):
        return _ref_attention_context(e, H, None)

    def multiply_mask(e, H, valid):  # zero scores still get weight
        alpha = torch.softmax(e * valid, -1)
        return s2s.context_vector(alpha, H), alpha

    def wrong_dim(e, H, valid):
        alpha = torch.softmax(e.masked_fill(~valid, float("-inf")), 0)
        return s2s.context_vector(alpha, H), alpha

    def sum_not_average(e, H, valid):
        return H.sum(1), s2s.masked_softmax(e, valid)

    def alpha_first(e, H, valid):  # the old order of the exercise
        return _ref_attention_context(e, H, valid)[::-1]

    def padding_convention(e, H, valid):  # reads the mask as True = padding (nn.MultiheadAttention's)
        alpha = torch.softmax(e.masked_fill(valid, float("-inf")), -1)
        return s2s.context_vector(alpha, H), alpha

    for wrong in (no_mask, multiply_mask, wrong_dim, sum_not_average, alpha_first, padding_convention):
        v = checks.attention_context(wrong)
        assert not v and v.status == "failed", wrong.__name__
    assert "padding" in checks.attention_context(multiply_mask).message
    assert "(c, alpha)" in checks.attention_context(alpha_first).message
    assert "REAL tokens" in checks.attention_context(padding_convention).message
    c, alpha = s2s.attention_context(torch.randn(2, 4), torch.randn(2, 4, 3), s2s.valid_mask_from_lengths(
        torch.tensor([4, 2])))
    assert c.shape == (2, 3) and alpha.shape == (2, 4) and (alpha[1, 2:] == 0).all()


def test_checker_decoder_step():
    assert checks.decoder_step(s2s.decoder_step)

    def late_attention(model, y, s_prev, H, mask):  # attends with s_i instead of s_{i-1}
        emb = model.tgt_embed(y)
        c0, _ = model.attention(s_prev, H, mask)
        s = model.cell(torch.cat([emb, c0], -1), s_prev)
        c, alpha = model.attention(s, H, mask)
        return model.out(torch.cat([s, c, emb], -1)), s, alpha

    def no_context_in_cell(model, y, s_prev, H, mask):
        c, alpha = model.attention(s_prev, H, mask)
        emb = model.tgt_embed(y)
        s = model.cell(torch.cat([emb, torch.zeros_like(c)], -1), s_prev)
        return model.out(torch.cat([s, c, emb], -1)), s, alpha

    def wrong_order(model, y, s_prev, H, mask):
        c, alpha = model.attention(s_prev, H, mask)
        emb = model.tgt_embed(y)
        s = model.cell(torch.cat([emb, c], -1), s_prev)
        return model.out(torch.cat([c, s, emb], -1)), s, alpha

    late = checks.decoder_step(late_attention)
    assert not late and "s_{i-1}" in late.message
    assert "context" in checks.decoder_step(no_context_in_cell).message
    assert not checks.decoder_step(wrong_order)
    assert not checks.decoder_step(lambda model, *a: (1, 2))

    def padding_convention(model, y, s_prev, H, valid):  # attends to the padding only
        alpha = torch.softmax(torch.zeros(valid.shape).masked_fill(valid, float("-inf")), -1)
        c = s2s.context_vector(alpha, H)
        emb = model.tgt_embed(y)
        s = model.cell(torch.cat([emb, c], -1), s_prev)
        return model.out(torch.cat([s, c, emb], -1)), s, alpha

    inverted = checks.decoder_step(padding_convention)
    assert not inverted and "real" in inverted.message
    flipped = checks.decoder_step(lambda model, y, s, H, valid: s2s.decoder_step(model, y, s, H, ~valid))
    assert not flipped and "src_valid" in flipped.message
