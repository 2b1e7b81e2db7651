"""InstructGPT's step 2a: comparison data. For a prompt the SFT policy samples K responses, a labeler
ranks them, and every strictly ordered pair becomes a comparison (y_w preferred to y_l). Our
labeler is a program (:func:`labeler_score`): an exact answer first, then character-level
similarity to the right answer followed by the stop token, so that stopping is part of being
right. Also the pairs as tensors and their batches.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..tasks.instructions import STOP, Example
from .sequences import encode_sequences, sample_responses


def labeler_score(response: str, answer: str) -> tuple[int, float]:
    """The programmatic labeler's sort key for one response (higher is better): (1 if the
    response is exactly the answer followed by the stop token else 0, character-level
    similarity of the response as sampled to the answer followed by the stop token, in [0, 1],
    difflib's ratio 2 M / (|a| + |b|)).

    The stop token counts as a character of the target, so an answer that never stops is never
    exact and loses the stop's match: for a one-letter answer "a", a stopped wrong "b\n" (ratio
    2/4) ranks above a 20-character runaway "aaa..." (2/22); compared without the stop, the
    runaway would win (2/21 against 0)."""
    exact = response == answer + STOP
    return int(exact), difflib.SequenceMatcher(None, response, answer + STOP, autojunk=False).ratio()


def rank_responses(responses: Sequence[str], answer: str) -> list[tuple[str, tuple[int, float]]]:
    """Distinct responses ranked best first by :func:`labeler_score`, each with its score (the
    labeler's ranking of InstructGPT's step 2; ties keep their sampling order)."""
    seen: dict[str, tuple[int, float]] = {}
    for r in responses:
        if r not in seen:
            seen[r] = labeler_score(r, answer)
    return sorted(seen.items(), key=lambda kv: kv[1], reverse=True)


def ranking_to_pairs(ranked: Sequence[tuple[str, tuple[int, float]]]) -> list[tuple[str, str]]:
    """Every (chosen, rejected) pair of a ranking where chosen scores strictly higher: K ranked
    responses give up to K (K - 1) / 2 comparisons, as in InstructGPT."""
    pairs = []
    for i in range(len(ranked)):
        for j in range(i + 1, len(ranked)):
            if ranked[i][1] > ranked[j][1]:
                pairs.append((ranked[i][0], ranked[j][0]))
    return pairs


@dataclass(frozen=True)
class Preference:
    """One comparison: for ``prompt``, the labeler prefers ``chosen`` to ``rejected`` (both
    responses as sampled, with the stop token when they stopped)."""

    task: str
    prompt: str
    answer: str
    chosen: str
    rejected: str


def make_preferences(policy, tokenizer, examples: Sequence[Example], *, k: int = 4,
                     temperature: float = 1.0, max_new_tokens: int = 20, seed: int = 0) -> list[Preference]:
    """InstructGPT's comparison data, labeled by program: for each example's prompt, sample ``k``
    responses from ``policy``, rank them with :func:`labeler_score`, keep every strictly ordered
    pair. Deterministic in ``seed``. Prompts whose k samples all score the same give no pair."""
    if k < 2:
        raise ValueError(f"need k >= 2 responses per prompt to compare, got {k}")
    prompts = [e.prompt for e in examples for _ in range(k)]
    samples = sample_responses(policy, tokenizer, prompts, temperature=temperature,
                               max_new_tokens=max_new_tokens, seed=seed)
    out = []
    for i, e in enumerate(examples):
        for chosen, rejected in ranking_to_pairs(rank_responses(samples[i * k:(i + 1) * k], e.answer)):
            out.append(Preference(e.task, e.prompt, e.answer, chosen, rejected))
    return out


def preference_tensors(tokenizer, prefs: Sequence[Preference], block_size: int,
                       pad_id: int) -> dict[str, torch.Tensor]:
    """All pairs encoded once: ``chosen_*`` and ``rejected_*`` ids/prompt_lens/lengths of one width."""
    if not prefs:
        raise ValueError("need at least one preference pair")
    prompts = [p.prompt for p in prefs]
    both = encode_sequences(tokenizer, prompts + prompts, [p.chosen for p in prefs] + [p.rejected for p in prefs],
                            block_size, pad_id)
    n = len(prefs)
    out = {}
    for side, sl in (("chosen", slice(0, n)), ("rejected", slice(n, 2 * n))):
        for k, v in both.items():
            out[f"{side}_{k}"] = v[sl]
    return out


def side(batch: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The ``chosen`` or ``rejected`` sequences of a preference batch, trimmed to their longest."""
    lengths = batch[f"{name}_lengths"]
    T = int(lengths.max())
    return {"ids": batch[f"{name}_ids"][:, :T], "prompt_lens": batch[f"{name}_prompt_lens"], "lengths": lengths}


def subset(tensors: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in tensors.items()}


def preference_batches(tensors: dict[str, torch.Tensor], batch_size: int,
                       seed: int = 0) -> Callable[[int], dict[str, torch.Tensor]]:
    """Deterministic batch function ``i -> batch`` of ``batch_size`` random pairs, for ``fit``."""
    n = len(tensors["chosen_ids"])

    def get(i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        return subset(tensors, torch.randint(n, (min(batch_size, n),), generator=g))

    return get
