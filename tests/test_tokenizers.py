"""The one character tokenizer: sorted or given alphabets, special tokens, and ids that stay put.

The literal ids below were recorded from the code before ``CharVocab`` (tasks/dates.py) was folded
into :class:`CharTokenizer`: Tiny Shakespeare's and the dates task's ids must not move, or the
notebooks' cached results would no longer match what they recompute.
"""
from __future__ import annotations

import string

import pytest
import torch

from course_lib.tasks.dates import DateTask, pad_sequences
from course_lib.tasks.text import CharCorpus
from course_lib.tokenizers import BOS, EOS, PAD, CharTokenizer

SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def digits():
    return CharTokenizer("0123456789-", specials=(PAD, BOS, EOS), sort=False)


# ---------------------------------------------------------------------------- ids that must not move

def test_tiny_shakespeare_ids_unchanged():
    corpus = CharCorpus.load()
    tok = corpus.tokenizer
    assert "".join(tok.chars) == SHAKESPEARE_CHARS
    assert tok.vocab_size == len(tok) == 65 and tok.specials == []
    assert tok.pad_id is None and tok.bos_id is None and tok.eos_id is None
    assert corpus.text[:20] == "First Citizen:\nBefor"
    assert tok.encode(corpus.text[:20]) == [18, 47, 56, 57, 58, 1, 15, 47, 58, 47, 64, 43, 52, 10, 0, 14, 43, 44,
                                            53, 56]
    assert len(corpus.train) + len(corpus.val) == 1_115_394
    assert int(corpus.train.sum()) == 36_825_035 and int(corpus.val.sum()) == 4_011_099
    # any order of the same characters gives the same (sorted) ids
    assert CharTokenizer(SHAKESPEARE_CHARS[::-1] * 2).chars == tok.chars


def test_dates_ids_unchanged():
    task = DateTask(seed=0)
    src, tgt = task.src_tokenizer, task.tgt_tokenizer
    assert src.itos == ["<pad>"] + list(string.ascii_letters + string.digits + " ,./-'")
    assert tgt.itos == ["<pad>", "<bos>", "<eos>"] + list("0123456789-")
    assert (len(src), src.vocab_size, len(tgt), tgt.vocab_size) == (69, 69, 14, 14)
    assert (src.pad_id, src.bos_id, src.eos_id) == (0, None, None)
    assert (tgt.pad_id, tgt.bos_id, tgt.eos_id) == (0, 1, 2)
    assert src.encode("Tuesday, March 3, 1998") == [46, 21, 5, 19, 4, 1, 25, 64, 63, 39, 1, 18, 3, 8, 63, 56, 64, 63,
                                                    54, 62, 62, 61]
    assert src.encode("Mar 3, '98 03/03/98 3.3.98 03-Mar-1998 zZ") == [
        39, 1, 18, 63, 56, 64, 63, 68, 62, 61, 63, 53, 56, 66, 53, 56, 66, 62, 61, 63, 56, 65, 56, 65, 62, 61, 63, 53,
        56, 67, 39, 1, 18, 67, 54, 62, 62, 61, 63, 26, 52]
    assert tgt.encode("1998-03-03", bos=True, eos=True) == [1, 4, 12, 12, 11, 13, 3, 6, 13, 3, 6, 2]
    assert tgt.encode("2049-12-31") == [5, 3, 7, 12, 13, 4, 5, 13, 6, 4]
    b = task.collate(task.sample(4, "train", seed=0))
    assert b["src"].tolist() == [[32, 18, 9, 63, 55, 60, 63, 39, 1, 25, 63, 53, 58],
                                 [57, 66, 54, 57, 66, 54, 62, 62, 59, 0, 0, 0, 0],
                                 [49, 5, 4, 63, 55, 59, 63, 36, 1, 14, 63, 62, 57],
                                 [55, 59, 65, 60, 65, 58, 61, 0, 0, 0, 0, 0, 0]]
    assert b["src_len"].tolist() == [13, 9, 13, 7]
    assert b["tgt"].tolist() == [[1, 5, 3, 3, 8, 13, 3, 8, 13, 5, 10, 2], [1, 4, 12, 12, 9, 13, 3, 7, 13, 4, 7, 2],
                                 [1, 4, 12, 12, 7, 13, 3, 4, 13, 5, 9, 2], [1, 4, 12, 8, 11, 13, 3, 10, 13, 5, 9, 2]]


# ---------------------------------------------------------------------------- special tokens

def test_specials_come_first_and_bos_eos_wrap(digits):
    assert digits.itos[:3] == [PAD, BOS, EOS] and (digits.pad_id, digits.bos_id, digits.eos_id) == (0, 1, 2)
    assert digits.vocab_size == len(digits) == 14
    assert digits.encode("12") == [4, 5]
    assert digits.encode("12", bos=True) == [1, 4, 5]
    assert digits.encode("12", eos=True) == [4, 5, 2]
    assert digits.encode("12", bos=True, eos=True) == [1, 4, 5, 2]
    assert all(digits.stoi[t] == i for i, t in enumerate(digits.itos))


def test_decode_skips_pad_and_bos_and_stops_at_eos(digits):
    ids = digits.encode("2024-01-31", bos=True, eos=True)
    assert digits.decode(ids) == "2024-01-31"
    assert digits.decode(ids + [0, 0, 0]) == "2024-01-31"
    assert digits.decode(ids[:-1] + [2, 4, 5, 0]) == "2024-01-31"  # nothing after the first <eos>
    assert digits.decode(torch.tensor([0, 1, 4, 0, 5, 2, 6])) == "12"
    assert digits.decode([]) == "" and digits.decode([2, 4]) == ""
    assert digits.tokens([1, 4, 5, 2, 0]) == ["<bos>", "1", "2", "<eos>", "<pad>"]
    assert digits.tokens(torch.tensor([13])) == ["-"]


def test_specials_without_eos_only_skip():
    tok = CharTokenizer("ba", specials=(PAD,))  # sorted: <pad>=0, a=1, b=2
    assert tok.itos == [PAD, "a", "b"] and tok.eos_id is None and tok.bos_id is None
    assert tok.decode([2, 0, 1, 0]) == "ba"
    with pytest.raises(ValueError, match="<bos>"):
        tok.encode("ab", bos=True)
    with pytest.raises(ValueError, match="<eos>"):
        tok.encode("ab", eos=True)


def test_without_specials_behaves_as_before():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == sorted(set("hello world")) and tok.specials == []
    assert tok.decode(tok.encode("hello world")) == "hello world"
    assert tok.encode("") == [] and tok.decode([]) == ""  # no specials: empty text is fine
    assert tok.tokens(tok.encode("lo")) == ["l", "o"]
    with pytest.raises(ValueError, match="<bos>"):
        tok.encode("lo", bos=True)


@pytest.mark.parametrize("make", [
    lambda: CharTokenizer("0123456789-", specials=(PAD, BOS, EOS), sort=False),
    lambda: CharTokenizer("zyx", specials=(PAD, "<sep>")),
    lambda: CharTokenizer("zyx", sort=False),
    lambda: CharTokenizer.from_text("To be, or not to be\n"),
])
def test_json_round_trip_keeps_every_id(make):
    tok = make()
    again = CharTokenizer.from_json(tok.to_json())
    assert again.itos == tok.itos and again.specials == tok.specials
    assert (again.pad_id, again.bos_id, again.eos_id) == (tok.pad_id, tok.bos_id, tok.eos_id)
    assert repr(again) == repr(tok)
    # JSON written before specials existed still loads
    legacy = CharTokenizer.from_json('{"chars": "abc"}')
    assert legacy.itos == ["a", "b", "c"]


# ---------------------------------------------------------------------------- errors name the problem

def test_errors_name_expected_and_received(digits):
    with pytest.raises(ValueError, match=r"unknown characters \['x'\] in '12x'.*11-character alphabet '0123456789-'"):
        digits.encode("12x")
    with pytest.raises(ValueError, match="non-empty string, got ''"):
        digits.encode("")
    with pytest.raises(ValueError, match="non-empty string"):
        digits.encode("", bos=True, eos=True)
    with pytest.raises(ValueError, match="expected a string, got list"):
        digits.encode(["1", "2"])
    with pytest.raises(ValueError, match=r"token id 14 out of range; expected 0 <= id < 14"):
        digits.decode([1, 14])
    with pytest.raises(ValueError, match=r"token id -1 out of range"):
        digits.decode([-1])
    with pytest.raises(ValueError, match="out of range"):
        digits.tokens([99])
    long_text = "a" * 500 + "é"
    with pytest.raises(ValueError, match=r"unknown characters \['é'\].*\(501 characters\)") as e:
        CharTokenizer("a").encode(long_text)
    assert len(str(e.value)) < 300  # a long text is cut, not printed whole


def test_construction_errors():
    with pytest.raises(ValueError, match="empty alphabet"):
        CharTokenizer("")
    with pytest.raises(ValueError, match="single characters, got 'ab'"):
        CharTokenizer(["ab", "c"])
    with pytest.raises(ValueError, match=r"distinct.*\['a'\] more than once"):
        CharTokenizer("aba", sort=False)
    with pytest.raises(ValueError, match=r"'<pad>' must be the first special token.*\['<bos>', '<pad>'\]"):
        CharTokenizer("ab", specials=(BOS, PAD))
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer("ab", specials=(PAD, PAD))
    with pytest.raises(ValueError, match="also characters"):
        CharTokenizer("ab", specials=(PAD, "a"))
    with pytest.raises(ValueError, match="got the string"):
        CharTokenizer("ab", specials=PAD)
    with pytest.raises(ValueError, match="non-empty strings"):
        CharTokenizer("ab", specials=(PAD, ""))
    with pytest.raises(ValueError, match="'chars'"):
        CharTokenizer.from_json('{"alphabet": "ab"}')


def test_pad_sequences_pads_with_the_given_id():
    x, lengths = pad_sequences([[3, 4, 5], [6]], pad_id=7)
    assert x.tolist() == [[3, 4, 5], [6, 7, 7]] and lengths.tolist() == [3, 1]
    with pytest.raises(ValueError, match="empty batch"):
        pad_sequences([])
