"""Tokenizers: characters (notebooks 01-06), a trainable byte-level BPE (notebook 06), and
GPT-2's byte-level BPE through tiktoken (the reference our BPE is tested against).
"""
from __future__ import annotations

import heapq
import json
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

from .validate import InputTypeError, id_list

R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
IGNORE = -100  # label of positions no loss counts (F.cross_entropy's ignore_index)
GPT2_EOT, GPT2_EOT_ID = "<|endoftext|>", 50256
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"  # the special tokens of character tokenizers


def _preview(s: str, n: int = 80) -> str:
    """``repr(s)``, cut to about ``n`` characters (error messages must stay readable)."""
    return repr(s) if len(s) <= n else repr(s[:n]) + f"... ({len(s)} characters)"


class CharTokenizer:
    """Maps each character of a fixed alphabet to an integer id and back, with optional special
    tokens (``<pad>``, ``<bos>``, ``<eos>``, ...) whose ids come first.

    ``CharTokenizer(chars)`` sorts and deduplicates ``chars`` (so ``CharTokenizer.from_text(text)``
    is the sorted set of the text, as nanoGPT does); ``sort=False`` keeps the given order, and the
    characters must then be distinct. ``specials`` take ids ``0 .. len(specials) - 1``; when
    ``<pad>`` is one of them it must be the first (``pad_id == 0``, the value padding fills with).

    ``encode(text, bos=, eos=)`` adds ``<bos>``/``<eos>``; ``decode`` skips the special tokens and
    stops at the first ``<eos>``. Unknown characters and out-of-range ids are a ValueError naming
    them (nothing is silently dropped). A tokenizer with special tokens encodes sequences that are
    padded into batches, so it also rejects the empty string.

    >>> tok = CharTokenizer("0123456789-", specials=(PAD, BOS, EOS), sort=False)
    >>> tok.encode("12", bos=True, eos=True), tok.decode([1, 4, 5, 2, 0, 0])
    ([1, 4, 5, 2], '12')
    """

    def __init__(self, chars: Iterable[str], specials: Sequence[str] = (), *, sort: bool = True):
        if isinstance(specials, str):
            raise ValueError(f"specials must be a sequence of token strings such as ({PAD!r}, {BOS!r}), "
                             f"got the string {specials!r}")
        chars = list(chars)
        distinct = set(chars)
        for c in distinct:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"CharTokenizer alphabet must hold single characters, got {c!r}")
        if sort:
            alphabet = sorted(distinct)
        else:
            repeated = sorted(c for c, n in Counter(chars).items() if n > 1)
            if repeated:
                raise ValueError(f"with sort=False the characters must be distinct (each one's position is its id), "
                                 f"got {repeated!r} more than once")
            alphabet = chars
        if not alphabet:
            raise ValueError("CharTokenizer needs at least one character, got an empty alphabet")
        specials = list(specials)
        for t in specials:
            if not isinstance(t, str) or not t:
                raise ValueError(f"special tokens must be non-empty strings, got {t!r} in {specials}")
        if len(set(specials)) != len(specials):
            raise ValueError(f"special tokens must be distinct, got {specials}")
        clash = [t for t in specials if t in alphabet]
        if clash:
            raise ValueError(f"special tokens {clash} are also characters of the alphabet; a token must have one id")
        if PAD in specials and specials[0] != PAD:
            raise ValueError(f"{PAD!r} must be the first special token (id 0, what padding fills with), "
                             f"got specials {specials}")
        self.specials = specials
        self.chars = alphabet
        self.itos = specials + alphabet
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        self._char_ids = {c: i for i, c in enumerate(alphabet, start=len(specials))}
        self.pad_id = self.stoi.get(PAD)
        self.bos_id = self.stoi.get(BOS)
        self.eos_id = self.stoi.get(EOS)

    @classmethod
    def from_text(cls, text: str, specials: Sequence[str] = ()) -> CharTokenizer:
        """The sorted set of the characters of ``text`` (after ``specials``, if any)."""
        return cls(text, specials)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Character ids of ``text``, after ``<bos>`` and before ``<eos>`` when asked for."""
        if not isinstance(text, str):
            raise InputTypeError(f"expected a string, got {type(text).__name__}")
        if not text and self.specials:
            raise ValueError("expected a non-empty string, got '' (this tokenizer has special tokens, "
                             f"{self.specials}: it encodes sequences to pad into batches, and an empty "
                             "one has nothing to read)")
        try:
            ids = [self._char_ids[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self._char_ids})
            raise ValueError(
                f"unknown characters {unknown!r} in {_preview(text)}; expected only characters of this "
                f"tokenizer's {len(self.chars)}-character alphabet {_preview(''.join(self.chars))}"
            ) from None
        for asked, tid, name in ((bos, self.bos_id, BOS), (eos, self.eos_id, EOS)):
            if asked and tid is None:
                raise ValueError(f"{'bos' if name == BOS else 'eos'}=True needs a {name!r} token; this tokenizer's "
                                 f"special tokens are {self.specials or 'none'}")
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def _ids(self, ids: Sequence[int] | torch.Tensor) -> list[int]:
        out = id_list(ids)
        for i in out:
            if not 0 <= i < len(self.itos):
                raise ValueError(f"token id {i} out of range; expected 0 <= id < {len(self.itos)}")
        return out

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The characters of ``ids``: special tokens are skipped, and the text ends at the first
        ``<eos>`` (when this tokenizer has one)."""
        ids = self._ids(ids)
        if self.eos_id is not None and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return "".join([self.itos[i] for i in ids if i >= len(self.specials)])

    def tokens(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        """Every id as a printable token, special ones included (for the axes of heat maps)."""
        return [self.itos[i] for i in self._ids(ids)]

    def to_json(self) -> str:
        """The alphabet in id order and the special tokens: ``from_json`` gives the same ids."""
        return json.dumps({"chars": "".join(self.chars), "specials": self.specials})

    @classmethod
    def from_json(cls, s: str) -> CharTokenizer:
        d = json.loads(s)
        if not isinstance(d, dict) or "chars" not in d:
            raise ValueError(f"expected a JSON object with 'chars' (and optional 'specials'), got {_preview(s)}")
        return cls(d["chars"], d.get("specials", ()), sort=False)

    def __repr__(self) -> str:
        specials = f", specials={self.specials}" if self.specials else ""
        return f"CharTokenizer(vocab_size={self.vocab_size}{specials}, chars={_preview(''.join(self.chars))})"


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


# --------------------------------------------------------------------------------------------
# Byte-level BPE (Sennrich et al., 2016, "Neural Machine Translation of Rare Words with Subword
# Units"; byte-level with a regex pre-split as in Radford et al., 2019, GPT-2).
# --------------------------------------------------------------------------------------------

def get_pair_counts(ids: Sequence[int], counts: dict | None = None, weight: int = 1) -> dict:
    """How often each adjacent pair (a, b) occurs in ``ids`` (added to ``counts`` if given)."""
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:], strict=False):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """One BPE merge step: replace every non-overlapping occurrence of ``pair``, scanning left to
    right, by ``new_id``. ``merge([5, 6, 6, 6], (6, 6), 9) == [5, 9, 6]``."""
    out: list[int] = []
    i, n = 0, len(ids)
    a, b = pair
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _bpe_pieces(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """Encode one pre-split chunk: start from single bytes and repeatedly merge the adjacent pair
    whose concatenation has the lowest rank (tiktoken's rule), until no pair is a token."""
    if piece in ranks:
        return [ranks[piece]]
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best, best_i = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best is None or r < best):
                best, best_i = r, i
        if best is None:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return [ranks[p] for p in parts]


def _encodable(text: str) -> str:  # each lone surrogate (UTF-8 cannot encode it) as U+FFFD, as tiktoken does
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class BPETokenizer:
    """A byte-level BPE tokenizer: text -> UTF-8 bytes -> regex chunks -> merged byte sequences.

    The vocabulary is ``ranks``: token bytes -> id, where a lower id means an earlier merge.
    Every byte 0..255 is a token, so any Unicode string round-trips exactly. Train one from
    scratch with :meth:`train`, or load GPT-2's merges with :meth:`from_tiktoken_ranks` /
    :meth:`gpt2` (then ``encode`` equals tiktoken's GPT-2 encoding).
    """

    def __init__(self, ranks: dict[bytes, int], pattern: str = R50K_PATTERN,
                 special_tokens: dict[str, int] | None = None):
        import regex

        if not ranks:
            raise ValueError("BPETokenizer needs a non-empty vocabulary (ranks)")
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise ValueError(f"a byte-level vocabulary must contain all 256 single bytes; "
                             f"missing {len(missing)} of them, e.g. byte {missing[0]}")
        self.ranks = dict(ranks)
        self.decoder = {i: b for b, i in self.ranks.items()}
        if len(self.decoder) != len(self.ranks):
            raise ValueError("ranks must map distinct byte strings to distinct ids")
        self.special_tokens = dict(special_tokens or {})
        for s, i in self.special_tokens.items():
            if i in self.decoder:
                raise ValueError(f"special token {s!r} id {i} collides with an ordinary token id")
        self.special_decoder = {i: s for s, i in self.special_tokens.items()}
        self.pattern = pattern
        self._re = regex.compile(pattern)
        self._cache: dict[bytes, list[int]] = {}

    # ---- building a vocabulary ---------------------------------------------------------------
    @classmethod
    def train(cls, text: str, vocab_size: int, pattern: str = R50K_PATTERN,
              special_tokens: dict[str, int] | None = None) -> BPETokenizer:
        """Learn ``vocab_size - 256`` merges from ``text``: repeatedly merge the most frequent
        adjacent pair (ties: the smaller pair of ids) inside regex chunks, never across them."""
        import regex

        if vocab_size < 256:
            raise ValueError(f"vocab_size must be >= 256 (the single bytes), got {vocab_size}")
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        chunk_counts: dict[str, int] = {}
        for m in regex.finditer(pattern, _encodable(text)):
            chunk_counts[m.group()] = chunk_counts.get(m.group(), 0) + 1
        words = [list(c.encode("utf-8")) for c in chunk_counts]
        freqs = list(chunk_counts.values())
        vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        ranks: dict[bytes, int] = {bytes([i]): i for i in range(256)}
        # pair -> count, and pair -> the words it occurs in (updated incrementally)
        counts: dict[tuple[int, int], int] = {}
        where: dict[tuple[int, int], set[int]] = {}
        for w, (ids, f) in enumerate(zip(words, freqs, strict=True)):
            for pair in zip(ids, ids[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + f
                where.setdefault(pair, set()).add(w)
        heap = [(-c, p) for p, c in counts.items()]
        heapq.heapify(heap)
        next_id = 256
        while next_id < vocab_size:
            pair = None
            while heap:  # lazy deletion: skip entries whose count has changed since they were pushed
                neg, p = heapq.heappop(heap)
                if counts.get(p, 0) == -neg and -neg > 0:
                    pair = p
                    break
            if pair is None:
                break  # nothing left to merge: every chunk is a single token
            new_bytes = vocab[pair[0]] + vocab[pair[1]]
            if new_bytes in ranks:  # the same bytes reached by another split: reuse that token
                new_id = ranks[new_bytes]
            else:
                new_id = next_id
                vocab[new_id] = new_bytes
                ranks[new_bytes] = new_id
                next_id += 1
            changed: set[tuple[int, int]] = set()
            for w in where.pop(pair, ()):
                old, f = words[w], freqs[w]
                new = merge(old, pair, new_id)
                if len(new) == len(old):
                    continue
                for p in zip(old, old[1:], strict=False):
                    counts[p] -= f
                    changed.add(p)
                words[w] = new
                for p in zip(new, new[1:], strict=False):
                    counts[p] = counts.get(p, 0) + f
                    where.setdefault(p, set()).add(w)
                    changed.add(p)
            counts.pop(pair, None)
            for p in changed:
                c = counts.get(p, 0)
                if c > 0:
                    heapq.heappush(heap, (-c, p))
                elif p in counts:
                    del counts[p]
        return cls(ranks, pattern, special_tokens)

    @classmethod
    def from_tiktoken_ranks(cls, path, expected_hash: str | None = None, pattern: str = R50K_PATTERN,
                            special_tokens: dict[str, int] | None = None) -> BPETokenizer:
        """Load merge ranks in tiktoken's file format (base64 token, rank per line)."""
        from tiktoken.load import load_tiktoken_bpe

        return cls(load_tiktoken_bpe(str(path), expected_hash=expected_hash), pattern, special_tokens)

    @classmethod
    def gpt2(cls) -> BPETokenizer:
        """GPT-2's tokenizer (r50k ranks from the course's data registry)."""
        from .data import fetch, get_asset

        return cls.from_tiktoken_ranks(fetch("gpt2_bpe_ranks"), get_asset("gpt2_bpe_ranks").sha256,
                                       special_tokens={GPT2_EOT: GPT2_EOT_ID})

    # ---- using it ----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return max(max(self.decoder), max(self.special_decoder, default=-1)) + 1

    def encode(self, text: str, allowed_special: Iterable[str] | str = ()) -> list[int]:
        """Text -> token ids. Special tokens (e.g. ``<|endoftext|>``) are only recognised when
        named in ``allowed_special`` (or ``"all"``); otherwise they are encoded as plain text."""
        if not isinstance(text, str):
            raise InputTypeError(f"encode expects a str, got {type(text).__name__}")
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(f"unknown special tokens {sorted(unknown)}; this tokenizer has "
                             f"{sorted(self.special_tokens) or 'none'}")
        if not allowed:
            return self._encode_ordinary(text)
        import regex

        split = regex.compile("(" + "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")")
        out: list[int] = []
        for i, part in enumerate(split.split(text)):
            if i % 2:
                out.append(self.special_tokens[part])
            elif part:
                out.extend(self._encode_ordinary(part))
        return out

    def _encode_ordinary(self, text: str) -> list[int]:
        out: list[int] = []
        cache = self._cache
        for m in self._re.finditer(_encodable(text)):
            piece = m.group().encode("utf-8")
            ids = cache.get(piece)
            if ids is None:
                ids = _bpe_pieces(piece, self.ranks)
                if len(cache) < 200_000:
                    cache[piece] = ids
            out.extend(ids)
        return out

    def decode_bytes(self, ids: Sequence[int] | torch.Tensor) -> bytes:
        parts = []
        for i in id_list(ids):
            b = self.decoder.get(i)
            if b is None:
                s = self.special_decoder.get(i)
                if s is None:
                    raise ValueError(f"token id {i} out of range; expected an id of this tokenizer's "
                                     f"vocabulary (0 <= id < {self.vocab_size})")
                b = s.encode("utf-8")
            parts.append(b)
        return b"".join(parts)

    def decode(self, ids: Sequence[int] | torch.Tensor, errors: str = "replace") -> str:
        """Token ids -> text. A cut inside a multi-byte character shows as U+FFFD (``errors``)."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def token_bytes(self, i: int) -> bytes:
        return self.decode_bytes([i])

    def to_json(self) -> str:
        import base64

        return json.dumps({"pattern": self.pattern, "special_tokens": self.special_tokens,
                           "ranks": [[base64.b64encode(b).decode(), i] for b, i in
                                     sorted(self.ranks.items(), key=lambda kv: kv[1])]})

    @classmethod
    def from_json(cls, s: str) -> BPETokenizer:
        import base64

        d = json.loads(s)
        return cls({base64.b64decode(b): i for b, i in d["ranks"]}, d["pattern"], d["special_tokens"])

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.ranks) - 256})"
