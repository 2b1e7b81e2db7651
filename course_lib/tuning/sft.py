"""InstructGPT's step 1: supervised fine-tuning (SFT) of a pretrained LM on demonstrations.

The lecture's "LM != assistant": a pretrained language model continues text; asked a question,
it writes more text *like* the question. Step 1 of InstructGPT (Ouyang et al., 2022) fine-tunes it
on demonstrations, prompt -> desired response, with the next-token cross-entropy on the response
tokens only (:func:`course_lib.models.lm.masked_lm_loss`). The demonstrations are
:mod:`course_lib.tasks.instructions`; this module holds the training loss and the evaluation
(greedy answers, exact match).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..models.lm import continuations, masked_lm_loss
from ..tasks.instructions import FEW_SHOT_TASKS, STOP, Example, few_shot_set
from .sequences import pack_sequences


def sft_step_loss(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = masked_lm_loss
                  ) -> Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """``loss_fn`` for :func:`course_lib.train.fit` on ``(x, y)`` batches: the model's logits, then
    ``loss(logits, y)`` (default :func:`course_lib.models.lm.masked_lm_loss`; notebook 07 passes the
    student's ``sft_loss``)."""

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return loss(model(x), y)

    return loss_fn


# ---------------------------------------------------------------------------------------------
# Answering and scoring
# ---------------------------------------------------------------------------------------------

def respond(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 24,
            batch_size: int = 256) -> list[str]:
    """Greedy responses to ``prompts``, cut at the first newline (the stop token)."""
    was_training = model.training
    model.eval()
    try:  # continuations checks the prompts (a list of str), max_new_tokens and batch_size
        texts = continuations(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size)
    finally:
        model.train(was_training)
    return [t.split(STOP, 1)[0] for t in texts]


def exact_match(model, tokenizer, examples: Sequence[Example]) -> dict[str, float]:
    """Fraction of examples answered exactly, overall (``"all"``) and per task."""
    if not examples:
        raise ValueError("need at least one example")
    answers = respond(model, tokenizer, [e.prompt for e in examples])
    hits: dict[str, list[bool]] = {}
    for e, a in zip(examples, answers, strict=True):
        hits.setdefault(e.task, []).append(a == e.answer)
    scores = {t: sum(h) / len(h) for t, h in hits.items()}
    scores["all"] = sum(sum(h) for h in hits.values()) / len(examples)
    return scores


def greedy_writes(model, tokenizer, examples: Sequence[Example], batch_size: int = 256) -> list[bool]:
    """Whether greedy decoding of each example's prompt writes exactly its response (the answer and
    the stop token) first. Greedy writes it if and only if, fed prompt + response, the model's
    likeliest next token is the response's own at every response position, so one teacher-forced
    forward pass of right-padded sequences answers it for a whole batch, with no token-by-token
    generation (the same verdict as :func:`exact_match`, up to floating-point ties)."""
    if not examples:
        raise ValueError("need at least one example")
    block = model.config.block_size
    seqs = [(tokenizer.encode(e.prompt), tokenizer.encode(e.response)) for e in examples]
    for e, (p, r) in zip(examples, seqs, strict=True):
        if not p or not r or len(p) + len(r) > block:
            raise ValueError(f"prompt and response must be non-empty and fit block_size={block} together, got "
                             f"{len(p)} + {len(r)} tokens ({e.text!r}); use fewer examples (k) or shorter words")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[bool] = []
    try:
        with torch.no_grad():
            for i in range(0, len(seqs), batch_size):
                chunk = seqs[i: i + batch_size]
                ids = pack_sequences([p for p, _ in chunk], [r for _, r in chunk], block, pad_id=0)["ids"]
                pred = model(ids.to(device)).argmax(-1).cpu()  # pred[:, t] is the likeliest token t + 1
                out += [bool((pred[j, len(p) - 1: len(p) + len(r) - 1] == torch.tensor(r)).all())
                        for j, (p, r) in enumerate(chunk)]
    finally:
        model.train(was_training)
    return out


def in_context_scores(model, tokenizer, tasks: Sequence[str], query_words: Sequence[str],
                      demo_words: Sequence[str], ks: Sequence[int], seeds: Sequence[int]
                      ) -> dict[str, dict[int, list[float]]]:
    """Exact match of greedy answers to k-shot prompts (:func:`course_lib.tasks.instructions.few_shot_set`),
    scored by :func:`greedy_writes`: ``{task: {k: [score for each seed]}}``, a seed drawing other
    example words. Every prompt with its answer must fit the model's context (else ValueError)."""
    if isinstance(tasks, str) or not tasks or any(t not in FEW_SHOT_TASKS for t in tasks):
        raise ValueError(f"tasks must be a non-empty list of {list(FEW_SHOT_TASKS)}, got {tasks!r}")
    for what, xs in (("ks", ks), ("seeds", seeds)):
        if isinstance(xs, (str, int)) or not xs or any(isinstance(x, bool) or not isinstance(x, int) for x in xs):
            raise ValueError(f"{what} must be a non-empty list of integers, got {xs!r}")
    grid = {(t, k, s): few_shot_set(t, query_words, demo_words, k, seed=s) for t in tasks for k in ks for s in seeds}
    hits = iter(greedy_writes(model, tokenizer, [e for exs in grid.values() for e in exs]))
    out: dict[str, dict[int, list[float]]] = {t: {k: [] for k in ks} for t in tasks}
    for (t, k, _), exs in grid.items():
        out[t][k].append(sum(next(hits) for _ in exs) / len(exs))
    return out
