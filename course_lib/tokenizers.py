"""Tokenizers: characters (notebooks 01-06), and GPT-2's byte-level BPE through tiktoken.

A trainable byte-level BPE lives here too once notebook 06 builds it.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import torch

R50K_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
GPT2_EOT = "<|endoftext|>"
GPT2_EOT_ID = 50256


class CharTokenizer:
    """Maps each character of a fixed alphabet to an integer id and back.

    Unknown characters are an error naming them (nothing is silently dropped).
    """

    def __init__(self, chars: Iterable[str]):
        alphabet = sorted(set(chars))
        if not alphabet:
            raise ValueError("CharTokenizer needs at least one character, got an empty alphabet")
        for c in alphabet:
            if len(c) != 1:
                raise ValueError(f"CharTokenizer alphabet must hold single characters, got {c!r}")
        self.chars = alphabet
        self.stoi = {c: i for i, c in enumerate(alphabet)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            raise ValueError(
                f"unknown characters {unknown!r} (not in this tokenizer's {self.vocab_size}-character alphabet)"
            ) from None

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if not 0 <= int(i) < self.vocab_size:
                raise ValueError(f"token id {i} out of range; expected 0 <= id < {self.vocab_size}")
            out.append(self.chars[int(i)])
        return "".join(out)

    def to_json(self) -> str:
        return json.dumps({"chars": "".join(self.chars)})

    @classmethod
    def from_json(cls, s: str) -> CharTokenizer:
        return cls(json.loads(s)["chars"])

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def gpt2_tokenizer():
    """tiktoken's GPT-2 encoding, built from the registry's r50k ranks file (works offline
    with a mirror): ``gpt2_tokenizer().encode("hello world") == [31373, 995]``."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from .data import fetch, get_asset

    asset = get_asset("gpt2_bpe_ranks")
    path = fetch("gpt2_bpe_ranks")
    ranks = load_tiktoken_bpe(str(path), expected_hash=asset.sha256)
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=R50K_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={GPT2_EOT: GPT2_EOT_ID},
    )
