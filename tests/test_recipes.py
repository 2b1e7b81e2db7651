"""One copy of each recipe, and library wrappers that take the student's function.

* ``recipes``: building is seeded (a fresh process builds the same model), notebook 06's training
  call is the cache's (the same weights, bit for bit), notebooks 06 and 07 take their configuration
  from the recipe, and the cache module knows no recipe.
* The step-loss and batch factories call the function they are given (a spy records the call)
  and, by default, the course's reference.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from course_lib import artifacts
from course_lib.models.gpt import GPT, GPTConfig
from course_lib.models.lm import masked_lm_loss
from course_lib.tasks import instructions
from course_lib.tokenizers import CharTokenizer
from course_lib.tuning import dpo, preferences, recipes, reward, sft

ROOT = Path(__file__).resolve().parent.parent


def _states_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_build_is_seeded():
    cfg = recipes.char_gpt_config("smoke")
    torch.manual_seed(1)
    a = recipes.build_char_gpt(cfg, vocab_size=65)
    torch.manual_seed(2)  # whatever the generator held before, the same weights come out
    b = recipes.build_char_gpt(cfg, vocab_size=65)
    assert _states_equal(a, b)


def test_notebook_training_call_is_the_cached_run(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_ARTIFACT_DIR", str(tmp_path))
    cfg = recipes.char_gpt_config("smoke")
    mine = recipes.build_char_gpt(cfg)
    recipes.pretrain_char_gpt(mine, cfg, device="cpu", progress=False,
                              eval_fn=lambda m, step: {"step": step}, eval_every=20)  # extras change nothing
    cached, meta = artifacts.get(recipes.CHAR_GPT, profile="smoke")
    assert meta["config"] == json.loads(json.dumps(cfg))
    assert _states_equal(mine.cpu(), cached)


def test_config_per_profile_and_sft_config_carries_the_base():
    assert recipes.char_gpt_config("cpu")["model"]["n_layer"] == 4
    assert recipes.char_gpt_config("gpu")["model"]["n_embd"] == 384
    s = recipes.char_sft_config("cpu")
    assert s["base"] == recipes.char_gpt_config("cpu") and s["base_profile"] == "cpu"
    recipes.optim_of(s)  # a valid OptimConfig
    assert artifacts.RECIPES["char_gpt"] is recipes.CHAR_GPT and artifacts.RECIPES["char_sft"] is recipes.CHAR_SFT


def test_the_cache_knows_no_recipe():
    # (tests/test_layout.py holds that artifacts imports nothing from tuning/)
    with pytest.raises(KeyError, match="unknown artifact 'nope'"):
        artifacts.get("nope")
    with pytest.raises(TypeError, match="Recipe"):
        artifacts.get(42)


def _code(nb: str) -> str:
    cells = json.loads((ROOT / "solutions" / nb).read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_notebooks_06_and_07_take_their_run_from_the_recipe():
    six, seven = _code("06_gpt_pretraining.ipynb"), _code("07_instruction_tuning.ipynb")
    assert "RECIPE = recipes.char_gpt_config()" in six and "recipes.pretrain_char_gpt(" in six
    assert "fit(" not in six.replace("pretrain_char_gpt(", "")
    assert "RECIPE = recipes.char_sft_config()" in seven and "recipes.instruction_tune(" in seven
    assert "fit(" not in seven
    for key in ("block_size", "batch_size", "warmup", " lr="):  # no second copy of the configuration
        assert key not in six.split("CFG = profile.pick(")[1].split("\n)\n")[0], key
    for key in ("batch_size", "warmup", " steps=", " lr="):
        assert key not in seven.split("CFG = profile.pick(")[1].split("\n)\n")[0], key


# --- wrappers take the student's function ----------------------------------------------------

class Spy:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args):
        self.calls.append(args)
        return self.fn(*args)


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer("\n ABCDEFGHIJKLMNOPQRSTUVWXYZ:?-abcdefghijklmnopqrstuvwxyz")


def _tiny(tok, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=1, n_head=2, n_embd=16, dropout=0.0))


def test_sft_batches_use_the_given_pad_and_mask(tok):
    pad, mask = Spy(instructions.pad_batch), Spy(instructions.mask_prompt_labels)
    get = instructions.sft_batches(tok, ["rose", "night"], 4, 48, seed=3, pad=pad, mask_labels=mask)
    x, y = get(0)
    assert len(pad.calls) == 1 and len(mask.calls) == 4
    ref_x, ref_y = instructions.sft_batches(tok, ["rose", "night"], 4, 48, seed=3)(0)
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)
    flat = instructions.sft_batches(tok, ["rose"], 2, 48, mask_prompt=False, mask_labels=mask)
    flat(0)
    assert len(mask.calls) == 4  # no masking asked for: the mask function is not called


def test_step_loss_factories_call_the_given_loss(tok):
    model = _tiny(tok)
    x, y = instructions.sft_batches(tok, ["rose", "night"], 4, 48)(0)
    spy = Spy(masked_lm_loss)
    out = sft.sft_step_loss(spy)(model, (x, y))
    assert len(spy.calls) == 1 and spy.calls[0][0].shape == (*x.shape, tok.vocab_size)
    assert torch.equal(out, sft.sft_step_loss()(model, (x, y)))

    prefs = [preferences.Preference("shout", "Q: shout rose\nA: ", "ROSE", "ROSE\n", "rose\n"),
             preferences.Preference("spell", "Q: spell ox\nA: ", "o-x", "o-x\n", "ox\n")]
    tensors = preferences.preference_tensors(tok, prefs, 48, tok.encode("\n")[0])
    rm = reward.RewardModel.from_policy(model)
    spy = Spy(reward.bradley_terry_loss)
    assert torch.equal(reward.rm_step_loss(spy)(rm, tensors), reward.rm_step_loss()(rm, tensors))
    assert len(spy.calls) == 1 and spy.calls[0][0].shape == (2,)

    batch = dpo.add_reference_logprobs(model, tensors)
    spy = Spy(dpo.dpo_loss)
    got = dpo.dpo_step_loss(0.3, loss=spy)(model, batch)
    assert len(spy.calls) == 1 and spy.calls[0][4] == 0.3
    assert torch.equal(got, dpo.dpo_step_loss(0.3)(model, batch))
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo.dpo_step_loss(0.0)


def test_instruction_tune_trains_with_the_students_functions(tok):
    model = _tiny(tok)
    cfg = dict(recipes.char_sft_config("smoke"), batch_size=4)
    loss, pad, mask = Spy(masked_lm_loss), Spy(instructions.pad_batch), Spy(instructions.mask_prompt_labels)
    hist = recipes.instruction_tune(model, cfg, tok, ["rose", "night", "king"], steps=2, lr=1e-3, loss=loss, pad=pad,
                                    mask_labels=mask, device="cpu", progress=False)
    assert hist.steps_done == 2 and len(loss.calls) == 2 and len(pad.calls) == 2 and len(mask.calls) == 8
