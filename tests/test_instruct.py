"""Instruction tuning: the synthetic set, labels and masking, padding, the SFT loss, answering,
LoRA (against a dense reference and after merging), the char_gpt artifact, and the checkers."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import checks, tokenizers
from course_lib.measure import count_parameters
from course_lib.models import lm
from course_lib.models.gpt import GPT, GPTConfig
from course_lib.models.lora import LoRALinear, add_lora, merge_lora
from course_lib.tasks import instructions
from course_lib.tokenizers import CharTokenizer
from course_lib.tuning import sft

ALPHABET = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # Tiny Shakespeare's 65


@pytest.fixture
def tok():
    return CharTokenizer(ALPHABET)


def test_examples_are_what_the_tasks_say():
    ex = instructions.make_example("reverse", "night", 1)
    assert ex.prompt == "Q: write night backwards\nA: " and ex.response == "thgin\n" and ex.answer == "thgin"
    assert instructions.make_example("spell", "rose").answer == "r-o-s-e"
    assert instructions.make_example("shout", "rose").answer == "ROSE"
    assert instructions.make_example("twice", "rose").answer == "rose rose"
    assert instructions.make_example("first", "rose").answer == "r"
    assert instructions.make_example("last", "rose").answer == "e"
    with pytest.raises(ValueError, match="unknown task"):
        instructions.make_example("translate", "rose")
    with pytest.raises(ValueError, match="phrasings 0..1"):
        instructions.make_example("spell", "rose", 5)
    with pytest.raises(ValueError, match="letters only"):
        instructions.make_example("spell", "ro se")
    with pytest.raises(ValueError, match="one line"):
        instructions.format_prompt("a\nb")


def test_every_example_fits_the_shakespeare_alphabet_and_a_64_token_context(tok):
    words = ["abcdefgh", "night", "zzz"]
    for task, t in instructions.TASKS.items():
        for k in range(len(t.phrasings)):
            for w in words:
                ex = instructions.make_example(task, w, k)
                assert len(tok.encode(ex.text)) <= 64


def test_words_and_split_are_deterministic_and_disjoint():
    words = instructions.word_list("The rose, the Night; o'er night and Sabbath roses a bb")
    assert words == ["and", "night", "rose", "roses", "the"]  # no capitalised words or fragments
    many = [f"w{'abcdefghij'[i % 10]}{'klmnopqrst'[i // 10 % 10]}{'uvwxyzabcd'[i // 100]}" for i in range(1000)]
    train, test = instructions.split_words(many)
    assert not set(train) & set(test) and len(train) + len(test) == 1000
    assert 150 < len(test) < 250
    assert instructions.split_words(many) == (train, test)
    assert instructions.split_words(many[:500])[1] == [w for w in test if w in set(many[:500])]  # stable
    a = instructions.sample_examples(train, 20, seed=3)
    assert a == instructions.sample_examples(train, 20, seed=3) and a != instructions.sample_examples(train, 20, seed=4)
    ts = instructions.test_set(test, per_task=5)
    assert len(ts) == 30 and {e.task for e in ts} == set(instructions.TASKS)


def test_prompt_masking_counts_only_the_response(tok):
    ex = instructions.make_example("shout", "rose")
    x, y = instructions.encode_example(tok, ex)
    p = len(tok.encode(ex.prompt))
    counted = y != tokenizers.IGNORE
    assert counted.sum() == len(ex.response)
    assert tok.decode(y[counted]) == ex.response  # exactly the response tokens are targets
    assert torch.equal(x, torch.tensor(tok.encode(ex.text))[:-1])
    assert y[p - 2] == tokenizers.IGNORE and y[p - 1] != tokenizers.IGNORE
    x2, y2 = instructions.encode_example(tok, ex, mask_prompt=False)
    assert torch.equal(x, x2) and (y2 != tokenizers.IGNORE).all()
    with pytest.raises(ValueError, match="prompt_len"):
        instructions.mask_prompt_labels(torch.arange(5), 5)


def test_padding_and_its_errors():
    pairs = [(torch.tensor([1, 2, 3]), torch.tensor([-100, 3, 4])), (torch.tensor([5]), torch.tensor([6]))]
    x, y = instructions.pad_batch(pairs, 8, pad_id=0)
    assert x.tolist() == [[1, 2, 3], [5, 0, 0]] and y.tolist() == [[-100, 3, 4], [6, -100, -100]]
    with pytest.raises(ValueError, match="block_size=2"):
        instructions.pad_batch(pairs, 2)
    with pytest.raises(ValueError, match="differ in shape"):
        instructions.pad_batch([(torch.tensor([1, 2]), torch.tensor([1]))], 8)


def test_sft_loss_equals_loss_over_response_tokens_only():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, -100, -100]])
    keep = labels != -100
    manual = F.cross_entropy(logits[keep], labels[keep])
    assert torch.allclose(lm.masked_lm_loss(logits, labels), manual)
    with pytest.raises(ValueError, match="every label is IGNORE"):
        lm.masked_lm_loss(logits, torch.full((2, 5), -100))
    with pytest.raises(ValueError, match="logits must be"):
        lm.masked_lm_loss(logits[0], labels)


def test_right_padding_does_not_change_the_loss_of_the_real_tokens(tok):
    """A causal model never sees the padding after a token: padded and unpadded losses agree."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=len(ALPHABET), block_size=64, n_layer=2, n_head=2, n_embd=32))
    short, long_ = instructions.make_example("first", "rose"), instructions.make_example("spell", "abcdefgh")
    xs, ys = instructions.encode_example(tok, short)
    xb, yb = instructions.pad_batch([instructions.encode_example(tok, long_), (xs, ys)], 64, pad_id=0)
    alone = lm.masked_lm_loss(model(xs[None]), ys[None])
    padded_logits = model(xb)[1:, : len(xs)]
    assert torch.allclose(lm.masked_lm_loss(padded_logits, ys[None]), alone, atol=1e-6)


def test_sft_learns_and_answers_are_cut_at_the_stop_token(tok):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=len(ALPHABET), block_size=64, n_layer=2, n_head=2, n_embd=64))
    words = ["rose", "night", "moon", "king", "love", "fair", "sweet", "death"]
    from course_lib.train import OptimConfig, fit

    h = fit(model, sft.sft_step_loss(), instructions.sft_batches(tok, words, 32, 64, seed=0), steps=250,
            optim=OptimConfig(lr=3e-3, warmup=10, weight_decay=0.0), device="cpu", progress=False)
    assert h.loss[-1] < 0.5 * h.loss[0]
    seen = instructions.test_set(words, per_task=8)
    scores = sft.exact_match(model, tok, seen)
    assert scores["first"] >= 0.75 and scores["shout"] >= 0.5, scores  # memorised training words
    answers = sft.respond(model, tok, [e.prompt for e in seen[:5]])
    assert all("\n" not in a for a in answers)


def test_lora_starts_equal_matches_dense_and_merges():
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    lora = LoRALinear(copy.deepcopy(base), r=2, alpha=4.0)
    x = torch.randn(3, 8)
    assert torch.allclose(lora(x), base(x))  # B = 0 at the start
    with torch.no_grad():
        lora.lora_B.normal_()
    dense = x @ (base.weight + 2.0 * lora.lora_B @ lora.lora_A).T + base.bias
    assert torch.allclose(lora(x), dense, atol=1e-5)
    assert torch.allclose(lora.merged()(x), dense, atol=1e-5)
    lora(x).sum().backward()
    assert lora.base.weight.grad is None and lora.lora_A.grad is not None and lora.lora_B.grad is not None
    with pytest.raises(ValueError, match="rank r"):
        LoRALinear(base, r=0)
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv1d(2, 2, 1))


def test_add_lora_to_gpt_trains_only_adapters_and_merge_keeps_the_function():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32))
    idx = torch.randint(0, 20, (2, 10))
    before = model(idx)
    wrapped = add_lora(model, r=4, alpha=8.0, targets=("qkv", "proj"))
    assert len(wrapped) == 6  # qkv, attn proj, mlp proj in each of 2 blocks
    assert count_parameters(model, trainable_only=True) == sum(4 * (m.in_features + m.out_features)
                                              for m in model.modules() if isinstance(m, LoRALinear))
    assert torch.allclose(model(idx), before, atol=1e-6)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            nn.init.normal_(m.lora_B, std=0.1)
    adapted = model(idx)
    assert not torch.allclose(adapted, before, atol=1e-3)
    assert merge_lora(model) == 6 and not any(isinstance(m, LoRALinear) for m in model.modules())
    assert torch.allclose(model(idx), adapted, atol=1e-5)
    with pytest.raises(ValueError, match="no nn.Linear named"):
        add_lora(model, targets=("nothing",))


def test_char_gpt_artifact_is_cached(tmp_path, monkeypatch):
    from course_lib import artifacts
    from course_lib.tuning import recipes

    monkeypatch.setenv("COURSE_ARTIFACT_DIR", str(tmp_path))
    model, meta = artifacts.get(recipes.CHAR_GPT, profile="smoke")
    assert meta["recipe"] == "char_gpt" and meta["steps"] == 60 and meta["val_loss"] < 4.2
    again, meta2 = artifacts.get("char_gpt", profile="smoke")
    assert meta2 == meta
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(),
                                                  strict=True))
    assert len(list(tmp_path.glob("char_gpt-smoke-*.safetensors"))) == 1


# --- checkers: accept the reference, reject typical mistakes ---------------------------------

def _status(v):
    return v.status


def test_instruct_checkers_accept_references():
    from course_lib.models.lora import LoRALinear as _L  # noqa: F401

    def lora_forward(x, base, A, B, alpha):
        return base(x) + (alpha / A.shape[0]) * (x @ A.T) @ B.T

    assert checks.format_prompt(instructions.format_prompt)
    assert checks.mask_prompt_labels(instructions.mask_prompt_labels)
    assert checks.sft_loss(lm.masked_lm_loss)
    assert checks.pad_batch(instructions.pad_batch)
    assert checks.lora_forward(lora_forward)


def test_instruct_checkers_reject_typical_mistakes():
    def off_by_one(ids, p):  # masks the label that predicts the first response token too
        x, y = ids[:-1].clone(), ids[1:].clone()
        y[:p] = -100
        return x, y

    def in_place(ids, p):
        x, y = ids[:-1], ids[1:]
        y[: p - 1] = -100
        return x, y

    def over_all_positions(logits, labels):
        keep = labels != -100
        logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        return -(logp * keep).sum() / labels.numel()

    def left_pad(pairs, block_size, pad_id=0):
        n = max(len(x) for x, _ in pairs)
        xs = [torch.cat([torch.full((n - len(x),), pad_id), x]) for x, _ in pairs]
        ys = [torch.cat([torch.full((n - len(y),), -100), y]) for _, y in pairs]
        return torch.stack(xs), torch.stack(ys)

    def truncates(pairs, block_size, pad_id=0):
        return instructions.pad_batch([(x[:block_size], y[:block_size]) for x, y in pairs], block_size, pad_id)

    def unscaled(x, base, A, B, alpha):
        return base(x) + (x @ A.T) @ B.T

    def no_space(instruction):
        return f"Q:{instruction}\nA:"

    for check, wrong in ((checks.mask_prompt_labels, off_by_one), (checks.mask_prompt_labels, in_place),
                         (checks.sft_loss, over_all_positions), (checks.pad_batch, left_pad),
                         (checks.pad_batch, truncates), (checks.lora_forward, unscaled),
                         (checks.format_prompt, no_space)):
        v = check(wrong)
        assert not v and v.status == "failed", (check, wrong)

    def unfinished(*a):
        raise NotImplementedError()

    for check in (checks.format_prompt, checks.mask_prompt_labels, checks.sft_loss, checks.pad_batch,
                  checks.lora_forward):
        assert check(unfinished).status == "not implemented"
