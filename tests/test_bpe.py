"""Byte-level BPE: training, round trips, and GPT-2's ranks encoding exactly like tiktoken."""
from __future__ import annotations

import pytest
import regex

from course_lib import checks
from course_lib.data import load_text
from course_lib.tokenizers import R50K_PATTERN, BPETokenizer, get_pair_counts, gpt2_tokenizer, merge

MULTILINGUAL = ("Grüße aus Köln! Ça va? ¿Qué tal? Привет, мир. Γειά σου κόσμε. 你好，世界。こんにちは世界 "
                "안녕하세요 مرحبا بالعالم שלום עולם नमस्ते दुनिया 🤖🎉👍🏽 👩‍👩‍👧‍👦 🇩🇪 e\u0301 \u200b "
                "  tabs\tand\r\nnewlines\n\n\n x'll we've I'M 3.14159 $1,000,000 <|endoftext|> <html>")


@pytest.fixture(scope="module")
def shakespeare():
    return load_text("tiny_shakespeare")


@pytest.fixture(scope="module")
def gpt2_ours():
    return BPETokenizer.gpt2()


def _naive_train(text: str, vocab_size: int) -> dict[bytes, int]:
    """The textbook algorithm: recount every pair after every merge (slow, obviously right)."""
    words = [list(m.encode("utf-8")) for m in regex.findall(R50K_PATTERN, text)]
    vocab = {i: bytes([i]) for i in range(256)}
    for new_id in range(256, vocab_size):
        counts: dict = {}
        for w in words:
            get_pair_counts(w, counts)
        if not counts:
            break
        pair = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
        words = [merge(w, pair, new_id) for w in words]
    return {b: i for i, b in vocab.items()}


def test_merge_step():
    assert merge([1, 2, 3, 1, 2], (1, 2), 99) == [99, 3, 99]
    assert merge([6, 6, 6], (6, 6), 7) == [7, 6]
    assert merge([], (1, 2), 3) == []


def test_incremental_training_equals_naive_training(shakespeare):
    text = shakespeare[:20_000]
    fast = BPETokenizer.train(text, 256 + 120)
    assert fast.ranks == _naive_train(text, 256 + 120)


def test_round_trip_any_unicode(shakespeare):
    tok = BPETokenizer.train(shakespeare[:100_000], 512)
    assert tok.vocab_size == 512
    for s in (MULTILINGUAL, shakespeare[-5000:], "", " ", "\x00\x7f\U0010ffff", "a" * 1000):
        assert tok.decode(tok.encode(s)) == s
    # merges never cross the regex chunks: no learned token holds a letter followed by a space
    assert not any(regex.search(rb"[A-Za-z] ", b) for b in tok.ranks)


def test_compression_grows_with_vocabulary(shakespeare):
    train, held_out = shakespeare[:200_000], shakespeare[-50_000:]
    ratios = [len(held_out) / len(BPETokenizer.train(train, v).encode(held_out)) for v in (256, 512, 1024)]
    assert ratios[0] == pytest.approx(1.0, abs=0.01)  # bytes only: ~1 char per token (ASCII text)
    assert ratios[0] < ratios[1] < ratios[2]
    assert ratios[2] > 2.0


def test_gpt2_ranks_encode_exactly_like_tiktoken(shakespeare, gpt2_ours):
    ref = gpt2_tokenizer()
    for text in (shakespeare[:60_000], shakespeare[-20_000:], MULTILINGUAL):
        ours = gpt2_ours.encode(text)
        assert ours == ref.encode_ordinary(text)
        assert gpt2_ours.decode(ours) == ref.decode(ours) == text
    assert gpt2_ours.encode("hello world") == [31373, 995]
    s = "a<|endoftext|>b"
    assert gpt2_ours.encode(s, allowed_special="all") == ref.encode(s, allowed_special="all")
    assert gpt2_ours.encode(s) == ref.encode_ordinary(s)  # not special unless allowed


def test_serialisation_round_trip(shakespeare):
    tok = BPETokenizer.train(shakespeare[:30_000], 300, special_tokens={"<|eot|>": 300})
    again = BPETokenizer.from_json(tok.to_json())
    assert again.ranks == tok.ranks and again.special_tokens == tok.special_tokens
    assert again.encode("To be, or not<|eot|>", allowed_special="all")[-1] == 300


def test_bad_input(gpt2_ours):
    with pytest.raises(ValueError, match="vocab_size must be >= 256"):
        BPETokenizer.train("abc", 100)
    with pytest.raises(ValueError, match="token id 60000 out of range"):
        gpt2_ours.decode([31373, 60000])
    with pytest.raises(ValueError, match="token id -1 out of range"):
        gpt2_ours.decode([-1])
    with pytest.raises(ValueError, match="unknown special tokens"):
        gpt2_ours.encode("x", allowed_special={"<|im_start|>"})
    with pytest.raises(ValueError, match="expects a str"):
        gpt2_ours.encode(b"bytes")
    with pytest.raises(ValueError, match="all 256 single bytes"):
        BPETokenizer({b"a": 0})


def test_bpe_merge_checker():
    assert checks.bpe_merge(merge)

    def overlapping(ids, pair, new):  # merges [6, 6, 6] into [7, 7]-like overlaps
        out = list(ids)
        for i in range(len(out) - 1):
            if (out[i], out[i + 1]) == pair:
                out[i] = new
        return [x for j, x in enumerate(out) if not (j > 0 and out[j - 1] == new and ids[j] == pair[1]
                                                     and ids[j - 1] == pair[0])]

    def misses_last(ids, pair, new):
        out, i = [], 0
        while i < len(ids):
            if i < len(ids) - 2 and (ids[i], ids[i + 1]) == pair:
                out.append(new)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        return out

    def in_place(ids, pair, new):
        res = merge(ids, pair, new)
        ids[:] = res
        return res

    for wrong in (overlapping, misses_last, in_place):
        v = checks.bpe_merge(wrong)
        assert not v and v.status == "failed"

    def todo(ids, pair, new):
        raise NotImplementedError()

    assert checks.bpe_merge(todo).status == "not implemented"
