"""The artifact recipes later notebooks start from (see :mod:`course_lib.artifacts`).

``char_gpt``: notebook 06's character-level GPT pretrained on Tiny Shakespeare, with the same
configuration per profile as that notebook; instruction tuning (07) starts from it.

``char_sft``: ``char_gpt`` after supervised instruction tuning on :mod:`course_lib.instruct`
(notebook 07); RLHF (08) starts from it.
"""
from __future__ import annotations

from . import artifacts
from . import profile as _profile

CHAR_GPT = {
    "smoke": dict(model=dict(n_layer=2, n_head=2, n_embd=32, block_size=64, dropout=0.0, bias=False),
                  batch_size=8, steps=60, lr=3e-3, warmup=10, compile=False),
    # nanoGPT's CPU configuration with the course's peak learning rate (notebook 06, docs/results.md)
    "cpu": dict(model=dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False),
                batch_size=12, steps=2000, lr=3e-3, warmup=100, compile=False),
    # nanoGPT's shakespeare_char configuration
    "gpu": dict(model=dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=False),
                batch_size=64, steps=5000, lr=1e-3, warmup=100, compile=True),
}


def _char_gpt_config(profile: str) -> dict:
    return _profile.pick(**CHAR_GPT, profile=profile)


def _char_gpt_build(cfg: dict):
    from .models.gpt import GPT, GPTConfig
    from .text import CharCorpus

    return GPT(GPTConfig(vocab_size=CharCorpus.load().vocab_size, **cfg["model"]))


def _char_gpt_train(model, cfg: dict) -> dict:
    from .device import get_device, seed_everything
    from .text import CharCorpus, estimate_loss, lm_loss
    from .train import fit

    seed_everything(1337)
    corpus = CharCorpus.load()
    dev = get_device()
    block = cfg["model"]["block_size"]
    hist = fit(model, lm_loss, corpus.batches("train", cfg["batch_size"], block, seed=1337), steps=cfg["steps"],
               lr=cfg["lr"], warmup=cfg["warmup"], min_lr_ratio=0.1, betas=(0.9, 0.99), weight_decay=0.1,
               grad_clip=1.0, device=dev, compile=cfg["compile"], tokens_per_step=cfg["batch_size"] * block)
    model.eval()
    losses = estimate_loss(model, corpus, cfg["batch_size"], block, iters=50)
    return {"val_loss": losses["val_loss"], "train_loss": losses["train_loss"], "train_seconds": hist.seconds,
            "steps": hist.steps_done, "device": str(dev)}


artifacts.register(artifacts.Recipe(name="char_gpt", version="1", config=_char_gpt_config,
                                    build=_char_gpt_build, train=_char_gpt_train))


# ---------------------------------------------------------------------------------------------
# char_sft: char_gpt after supervised instruction tuning (notebook 07); RLHF (08) starts from it.
# ---------------------------------------------------------------------------------------------

CHAR_SFT = {
    "smoke": dict(batch_size=16, steps=40, lr=2e-3, warmup=5),
    "cpu": dict(batch_size=32, steps=1000, lr=2e-3, warmup=30),
    "gpu": dict(batch_size=64, steps=2000, lr=1e-3, warmup=50),
}


def _char_sft_config(profile: str) -> dict:
    # the base model's config is part of this one, so a change to char_gpt retrains char_sft too
    return dict(_profile.pick(**CHAR_SFT, profile=profile), base=_char_gpt_config(profile), base_profile=profile)


def _char_sft_build(cfg: dict):
    return _char_gpt_build(cfg["base"])


def _char_sft_train(model, cfg: dict) -> dict:
    from . import instruct
    from .device import get_device, seed_everything
    from .text import CharCorpus
    from .train import fit

    base, base_meta = artifacts.get("char_gpt", profile=cfg["base_profile"])
    model.load_state_dict(base.state_dict())
    seed_everything(1337)
    corpus = CharCorpus.load()
    train_words, test_words = instruct.split_words(instruct.word_list(corpus.text))
    dev = get_device()
    block = cfg["base"]["model"]["block_size"]
    hist = fit(model, instruct.sft_step_loss,
               instruct.sft_batches(corpus.tokenizer, train_words, cfg["batch_size"], block, seed=0),
               steps=cfg["steps"], lr=cfg["lr"], warmup=cfg["warmup"], min_lr_ratio=0.1, betas=(0.9, 0.99),
               weight_decay=0.0, grad_clip=1.0, device=dev)
    scores = instruct.exact_match(model, corpus.tokenizer, instruct.test_set(test_words, per_task=50))
    return {"exact_match": scores, "final_loss": hist.loss[-1], "train_seconds": hist.seconds,
            "steps": hist.steps_done, "base_val_loss": base_meta["val_loss"], "device": str(dev)}


artifacts.register(artifacts.Recipe(name="char_sft", version="1", config=_char_sft_config,
                                    build=_char_sft_build, train=_char_sft_train))
