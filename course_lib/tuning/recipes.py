"""The one copy of every trained model's recipe: its configuration per profile and its training call.

``char_gpt`` is notebook 06's character-level GPT pretrained on Tiny Shakespeare; instruction
tuning (07) and the multimodal notebook (09) start from it. ``char_sft`` is ``char_gpt`` after
supervised instruction tuning on :mod:`course_lib.tasks.instructions` (notebook 07); RLHF (08)
starts from it.

Notebooks 06 and 07 train with :func:`pretrain_char_gpt` and :func:`instruction_tune` on the
configuration of :func:`char_gpt_config` / :func:`char_sft_config`, and :data:`CHAR_GPT` /
:data:`CHAR_SFT` (registered with :mod:`course_lib.artifacts`) call the same functions, so what a
notebook trains and what the cache holds cannot drift apart. Building seeds the generator first:
a fresh process builds, and therefore trains, the same model.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from torch import nn

from .. import artifacts
from .. import profile as _profile
from ..device import get_device, seed_everything
from ..models.gpt import GPT, GPTConfig, flops_per_token
from ..models.lm import masked_lm_loss
from ..tasks import instructions
from ..tasks.text import CharCorpus, estimate_loss, lm_loss
from ..train import History, OptimConfig, fit
from .sft import exact_match, sft_step_loss

SEED = 1337

# ---------------------------------------------------------------------------------------------
# char_gpt: notebook 06
# ---------------------------------------------------------------------------------------------

_GPT_OPTIM = dict(min_lr_ratio=0.1, betas=[0.9, 0.99], weight_decay=0.1, grad_clip=1.0)
CHAR_GPT_CONFIGS = {
    "smoke": dict(model=dict(n_layer=2, n_head=2, n_embd=32, block_size=64, dropout=0.0, bias=False),
                  batch_size=8, steps=60, compile=False, optim=dict(lr=3e-3, warmup=10, **_GPT_OPTIM)),
    # nanoGPT's CPU configuration with the course's peak learning rate (notebook 06, docs/results.md)
    "cpu": dict(model=dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False),
                batch_size=12, steps=2000, compile=False, optim=dict(lr=3e-3, warmup=100, **_GPT_OPTIM)),
    # nanoGPT's shakespeare_char configuration
    "gpu": dict(model=dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=False),
                batch_size=64, steps=5000, compile=True, optim=dict(lr=1e-3, warmup=100, **_GPT_OPTIM)),
}


def char_gpt_config(profile: str | None = None) -> dict:
    """The JSON-serialisable configuration of ``char_gpt`` for ``profile`` (default: the active one)."""
    return _profile.pick(**CHAR_GPT_CONFIGS, profile=profile)


def optim_of(cfg: dict) -> OptimConfig:
    return OptimConfig(**cfg["optim"])


def build_char_gpt(cfg: dict, vocab_size: int | None = None, seed: int = SEED) -> GPT:
    """The untrained char GPT of ``cfg``, its weights drawn after seeding with ``seed``."""
    vocab_size = vocab_size if vocab_size is not None else CharCorpus.load().vocab_size
    seed_everything(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, **cfg["model"]))


def pretrain_char_gpt(model: GPT, cfg: dict, corpus: CharCorpus | None = None, *, seed: int = SEED,
                      **fit_kwargs) -> History:
    """Notebook 06's pre-training run: next-token loss on random windows of the training split
    (drawn from ``seed``). ``fit_kwargs`` add what does not change the weights (``eval_fn``,
    ``eval_every``, ``device``, ``progress``, ...) or, for benchmarks, a ``max_seconds`` budget."""
    corpus = corpus if corpus is not None else CharCorpus.load()
    block = cfg["model"]["block_size"]
    return fit(model, lm_loss, corpus.batches("train", cfg["batch_size"], block, seed=seed), steps=cfg["steps"],
               optim=optim_of(cfg), compile=cfg["compile"], tokens_per_step=cfg["batch_size"] * block,
               flops_per_token=flops_per_token(model.config), **fit_kwargs)


def _char_gpt_train(model: GPT, cfg: dict) -> dict:
    corpus = CharCorpus.load()
    dev = get_device()
    hist = pretrain_char_gpt(model, cfg, corpus, device=dev)
    model.eval()
    losses = estimate_loss(model, corpus, cfg["batch_size"], cfg["model"]["block_size"], iters=50)
    return {"val_loss": losses["val_loss"], "train_loss": losses["train_loss"], "train_seconds": hist.seconds,
            "steps": hist.steps_done, "device": str(dev)}


CHAR_GPT = artifacts.register(artifacts.Recipe(name="char_gpt", version="2", config=char_gpt_config,
                                               build=build_char_gpt, train=_char_gpt_train))

# ---------------------------------------------------------------------------------------------
# char_sft: notebook 07
# ---------------------------------------------------------------------------------------------

_SFT_OPTIM = dict(min_lr_ratio=0.1, betas=[0.9, 0.99], weight_decay=0.0, grad_clip=1.0)
CHAR_SFT_CONFIGS = {
    "smoke": dict(batch_size=16, steps=40, optim=dict(lr=2e-3, warmup=5, **_SFT_OPTIM)),
    "cpu": dict(batch_size=32, steps=1000, optim=dict(lr=2e-3, warmup=30, **_SFT_OPTIM)),
    "gpu": dict(batch_size=64, steps=2000, optim=dict(lr=1e-3, warmup=50, **_SFT_OPTIM)),
}


def char_sft_config(profile: str | None = None) -> dict:
    """The configuration of ``char_sft``; the base model's is part of it, so a change to
    ``char_gpt`` retrains ``char_sft`` too."""
    prof = profile or _profile.name()
    return dict(_profile.pick(**CHAR_SFT_CONFIGS, profile=prof), base=char_gpt_config(prof), base_profile=prof)


def instruction_tune(model: nn.Module, cfg: dict, tokenizer, words: Sequence[str], *, steps: int | None = None,
                     lr: float | None = None, mask_prompt: bool = True,
                     loss: Callable = masked_lm_loss, pad: Callable = instructions.pad_batch,
                     mask_labels: Callable = instructions.mask_prompt_labels, **fit_kwargs) -> History:
    """Notebook 07's supervised fine-tuning run on demonstrations of ``words``. ``steps`` and
    ``lr`` override the configuration's (the notebook's shorter comparisons and LoRA); ``loss``,
    ``pad`` and ``mask_labels`` let a notebook train with the student's own functions."""
    optim = optim_of(cfg) if lr is None else replace(optim_of(cfg), lr=lr)
    batches = instructions.sft_batches(tokenizer, words, cfg["batch_size"], model.config.block_size, seed=0,
                                       mask_prompt=mask_prompt, pad=pad, mask_labels=mask_labels)
    return fit(model, sft_step_loss(loss), batches, steps=steps or cfg["steps"], optim=optim, **fit_kwargs)


def _char_sft_build(cfg: dict) -> GPT:
    return build_char_gpt(cfg["base"])


def _char_sft_train(model: GPT, cfg: dict) -> dict:
    base, base_meta = artifacts.get(CHAR_GPT, profile=cfg["base_profile"])
    model.load_state_dict(base.state_dict())
    corpus = CharCorpus.load()
    train_words, test_words = instructions.split_words(instructions.word_list(corpus.text))
    dev = get_device()
    seed_everything(SEED)
    hist = instruction_tune(model, cfg, corpus.tokenizer, train_words, device=dev)
    scores = exact_match(model, corpus.tokenizer, instructions.test_set(test_words, per_task=50))
    return {"exact_match": scores, "final_loss": hist.loss[-1], "train_seconds": hist.seconds,
            "steps": hist.steps_done, "base_val_loss": base_meta["val_loss"], "device": str(dev)}


CHAR_SFT = artifacts.register(artifacts.Recipe(name="char_sft", version="2", config=char_sft_config,
                                               build=_char_sft_build, train=_char_sft_train))
