"""fit(): exact resume, accumulation, schedule, evaluation, checkpoints, bad input; the checkpoint
module's state-dict check."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from course_lib.checkpoint import check_state_fits, load_checkpoint
from course_lib.device import seed_everything
from course_lib.train import OptimConfig, fit, lr_at


def make_model(dropout: float = 0.1) -> nn.Module:
    seed_everything(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Dropout(dropout), nn.GELU(), nn.Linear(32, 1))


def data(i: int, batch: int = 16):
    g = torch.Generator().manual_seed(i)
    x = torch.randn(batch, 8, generator=g)
    return x, x.sum(1, keepdim=True) + 0.1 * x[:, :1] ** 2


def mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


COMMON = dict(steps=30, optim=OptimConfig(lr=1e-2, warmup=5), device="cpu", progress=False, accum_steps=2)


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_resume_is_exact(tmp_path):
    """A run stopped at step k and resumed ends with the same parameters as an uninterrupted run."""
    full = make_model()
    h_full = fit(full, mse, data, **COMMON)
    ck = tmp_path / "run.pt"
    part = make_model()
    h1 = fit(part, mse, data, checkpoint_path=ck, stop_at=13, **COMMON)
    assert h1.steps_done == 13 and ck.exists()
    torch.manual_seed(999)  # disturb the global RNG; the checkpoint must restore it
    resumed = make_model()  # fresh weights: everything must come from the checkpoint
    h2 = fit(resumed, mse, data, checkpoint_path=ck, **COMMON)
    for a, b in zip(params(full), params(resumed), strict=True):
        assert torch.equal(a, b)
    assert h2.loss == pytest.approx(h_full.loss)
    assert h2.step == list(range(1, 31))


def test_resume_with_an_iterable(tmp_path):
    batches = [data(i) for i in range(7)]  # cycled
    kw = dict(COMMON, accum_steps=1, steps=20)
    full = make_model(0.0)
    fit(full, mse, batches, **kw)
    ck = tmp_path / "it.pt"
    part = make_model(0.0)
    fit(part, mse, batches, checkpoint_path=ck, stop_at=9, **kw)
    resumed = make_model(0.0)
    fit(resumed, mse, batches, checkpoint_path=ck, **kw)
    for a, b in zip(params(full), params(resumed), strict=True):
        assert torch.equal(a, b)


def test_periodic_checkpoints_load_without_unpickling(tmp_path):
    ck = tmp_path / "periodic.pt"
    fit(make_model(), mse, data, checkpoint_path=ck, checkpoint_every=10, stop_at=25, **COMMON)
    state = load_checkpoint(ck)  # weights_only=True
    assert state["step"] == 25
    assert set(state["model"]) == set(make_model().state_dict())
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_of_another_shape_is_a_clear_error(tmp_path):
    ck = tmp_path / "shape.pt"
    fit(make_model(), mse, data, checkpoint_path=ck, stop_at=3, **COMMON)
    other = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.1), nn.GELU(), nn.Linear(16, 1))
    with pytest.raises(ValueError, match=r"shape \(32, 8\).*expects \(16, 8\)"):
        fit(other, mse, data, checkpoint_path=ck, **COMMON)


def test_accumulation_equals_a_bigger_batch():
    """Two micro-batches of 8 give the same update as one batch of 16 (no dropout)."""
    big = make_model(0.0)
    fit(big, mse, lambda i: data(i, 16), steps=5, optim=OptimConfig(lr=1e-2), device="cpu", progress=False)

    def half(i):
        x, y = data(i // 2, 16)
        s = slice(0, 8) if i % 2 == 0 else slice(8, 16)
        return x[s], y[s]

    acc = make_model(0.0)
    fit(acc, mse, half, steps=5, optim=OptimConfig(lr=1e-2), accum_steps=2, device="cpu", progress=False)
    for a, b in zip(params(big), params(acc), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_training_reduces_loss_and_records_history():
    model = make_model(0.0)
    evals = []
    h = fit(model, mse, data, steps=60, optim=OptimConfig(lr=1e-2), device="cpu", progress=False, eval_every=20,
            eval_fn=lambda m, step: evals.append(m.training) or {"val_loss": mse(m, data(10_000)).item()},
            tokens_per_step=16, log_every=7)
    assert len(h.loss) == len(h.step) == len(h.lr) == len(h.grad_norm) == 60
    assert h.eval_step == [20, 40, 60] and evals == [False, False, False]
    assert h.evals("val_loss")[-1] < 0.5 * h.evals("val_loss")[0]
    assert h.tokens_per_s and h.tokens_per_s > 0 and h.mfu is None  # no MFU on CPU
    assert model.training


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, lr=1.0, steps=100, warmup=10, min_lr_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert lr_at(100, lr=1.0, steps=100, warmup=10) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices():
    from course_lib.train import make_optimizer

    opt = make_optimizer(make_model(), lr=1e-3, weight_decay=0.1)
    decayed = {p.dim() for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {p.dim() for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed == {2} and plain == {1}
    model = make_model()
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1, no_decay=("0.weight",))
    plain = [p for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert any(p is model[0].weight for p in plain) and not any(p is model[3].weight for p in plain)


def test_bad_input():
    with pytest.raises(ValueError, match="steps"):
        fit(make_model(), mse, data, steps=0, device="cpu")
    with pytest.raises(ValueError, match="scalar"):
        fit(make_model(), lambda m, b: (m(b[0]) - b[1]) ** 2, data, steps=1, device="cpu", progress=False)
    with pytest.raises(ValueError, match="empty"):
        fit(make_model(), mse, [], steps=1, device="cpu", progress=False)
    with pytest.raises(FloatingPointError, match="learning rate"):
        fit(make_model(), lambda m, b: mse(m, b) * math.inf, data, steps=3, device="cpu", progress=False,
            log_every=1)


def test_time_budget_stops_early_and_still_evaluates():
    h = fit(make_model(), mse, data, steps=10_000, optim=OptimConfig(lr=1e-3), device="cpu", progress=False,
            eval_every=5000, max_seconds=0.3, eval_fn=lambda m, step: {"val_loss": mse(m, data(10_000)).item()})
    assert 0 < h.steps_done < 10_000
    assert h.eval_step == [h.steps_done] and "val_loss" in h.last_eval


def test_timing_skip_leaves_slow_first_steps_out_of_tokens_per_s():
    import time

    calls = [0]

    def slow_first(model, batch):  # the first step stands in for compilation
        calls[0] += 1
        if calls[0] == 1:
            time.sleep(0.5)
        return mse(model, batch)

    runs = {}
    for skip in (0, 1):
        calls[0] = 0
        h = fit(make_model(0.0), slow_first, data, steps=21, device="cpu", progress=False, tokens_per_step=16,
                timing_skip=skip)
        runs[skip] = h.tokens_per_s
    assert runs[1] > 3 * runs[0]
    # a run no longer than the skip is timed whole rather than reporting nothing
    h = fit(make_model(0.0), mse, data, steps=2, device="cpu", progress=False, tokens_per_step=16, timing_skip=5)
    assert h.tokens_per_s and h.tokens_per_s > 0
    with pytest.raises(ValueError, match="timing_skip"):
        fit(make_model(), mse, data, steps=1, device="cpu", progress=False, timing_skip=-1)


def test_check_state_fits_names_where_key_and_both_shapes():
    model = make_model()
    other = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.1), nn.GELU(), nn.Linear(16, 1))
    with pytest.raises(ValueError) as err:
        check_state_fits(model, other.state_dict(), "file run.pt")
    msg = str(err.value)
    assert msg.startswith("file run.pt: ") and "'0.weight'" in msg and "(16, 8)" in msg and "(32, 8)" in msg
    with pytest.raises(ValueError, match=r"run.pt does not fit this model: missing keys \['3.bias', '3.weight'\]"):
        check_state_fits(model, {k: v for k, v in model.state_dict().items() if not k.startswith("3.")}, "run.pt")
    check_state_fits(model, make_model().state_dict(), "run.pt")  # a fitting state passes silently


def test_gpt_load_state_dict_checked_is_check_state_fits(monkeypatch):
    from course_lib.models import gpt

    small = gpt.GPT(gpt.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    wide = gpt.GPT(gpt.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError) as direct:
        check_state_fits(small, wide.state_dict(), "weights.safetensors")
    with pytest.raises(ValueError) as method:
        small.load_state_dict_checked(wide.state_dict(), "weights.safetensors")
    assert str(method.value) == str(direct.value)
    assert "weights.safetensors" in str(direct.value) and "n_embd=8" in str(direct.value)  # names the config
    calls = []
    monkeypatch.setattr(gpt, "check_state_fits", lambda model, state, where: calls.append(where))
    small.load_state_dict_checked(small.state_dict(), "here")
    assert calls == ["here"]
