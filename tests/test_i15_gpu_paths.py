"""Issue 15, GPU and measurement: the paths no CPU run takes, emulated on the CPU (mocked device
names and capabilities, a fake device clock, a forced compilation failure, dynamo's explain)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from course_lib import measure
from course_lib import train as T
from course_lib.checkpoint import load_checkpoint
from course_lib.device import autocast_policy, seed_everything
from course_lib.train import OptimConfig, fit


def make_model(dropout: float = 0.0) -> nn.Module:
    seed_everything(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Dropout(dropout), nn.GELU(), nn.Linear(32, 1))


def data(i: int, batch: int = 16):
    g = torch.Generator().manual_seed(i)
    x = torch.randn(batch, 8, generator=g)
    return x, x.sum(1, keepdim=True)


def mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def fake_cuda(monkeypatch, name: str, capability: tuple[int, int]) -> None:
    """This process sees one CUDA GPU called ``name``; torch's own bf16 probe says yes, as it does
    on a T4 or V100, where bf16 is only emulated."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)


# --- autocast policy by compute capability -----------------------------------------------------

@pytest.mark.parametrize("name, capability, dtype, scaler", [
    ("Tesla T4", (7, 5), torch.float16, True),
    ("Tesla V100-SXM2-16GB", (7, 0), torch.float16, True),
    ("NVIDIA A100-SXM4-80GB", (8, 0), torch.bfloat16, False),
    ("NVIDIA H100 80GB HBM3", (9, 0), torch.bfloat16, False),
])
def test_autocast_policy_follows_the_compute_capability(monkeypatch, name, capability, dtype, scaler):
    fake_cuda(monkeypatch, name, capability)
    policy = autocast_policy(torch.device("cuda"))
    assert policy.dtype == dtype and policy.use_grad_scaler is scaler, str(policy)
    assert autocast_policy(torch.device("cuda"), enabled=False).dtype is None


# --- the peak table -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, dtype, peak", [
    ("NVIDIA L40S", torch.bfloat16, 362e12),
    ("NVIDIA L40", torch.bfloat16, 181e12),
    ("NVIDIA L4", torch.bfloat16, 121e12),
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989e12),
    ("NVIDIA H100 PCIe", torch.bfloat16, 756e12),
    ("NVIDIA H100 NVL", torch.bfloat16, 835e12),
    ("NVIDIA H200", torch.bfloat16, 989e12),
    ("NVIDIA H200 NVL", torch.bfloat16, 835e12),
    ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312e12),
    ("NVIDIA A100 80GB PCIe", torch.float16, 312e12),
    ("NVIDIA A10", torch.bfloat16, 125e12),
    ("NVIDIA A10G", torch.bfloat16, None),  # not A10's figure: unknown, pass peak_flops
    ("NVIDIA GeForce RTX 4090", torch.bfloat16, 165e12),
    ("Tesla V100-SXM2-16GB", torch.float16, 125e12),
    ("Tesla V100-SXM2-16GB", torch.bfloat16, None),  # no bf16 tensor cores
    ("Tesla T4", torch.float16, 65e12),
    ("Tesla T4", torch.bfloat16, None),
    ("NVIDIA A100-SXM4-80GB", None, None),  # fp32 (amp off): no tensor-core peak to compare with
])
def test_peak_flops_match_the_most_specific_name_and_the_dtype(monkeypatch, name, dtype, peak):
    fake_cuda(monkeypatch, name, (8, 0))
    assert measure.peak_flops_for(torch.device("cuda"), dtype) == peak
    assert measure.peak_flops_for(torch.device("cpu"), torch.bfloat16) is None


def test_fit_looks_up_the_peak_of_the_dtype_it_trains_in(monkeypatch):
    """MFU compares with the peak of the precision the run uses (fp16 on a T4, bf16 on an A100;
    fp32 on the CPU, where no tensor-core peak applies)."""
    calls = []
    monkeypatch.setattr(measure, "peak_flops_for", lambda dev, dtype: calls.append((dev.type, dtype)) or 1e3)
    h = fit(make_model(), mse, data, steps=2, device="cpu", progress=False, tokens_per_step=16, flops_per_token=2.0)
    assert calls == [("cpu", None)]
    assert h.mfu == pytest.approx(2.0 * h.tokens_per_s / 1e3)


# --- tokens/s counts training time only --------------------------------------------------------

class FakeDevice:
    """A device clock: each micro-batch queues one second of kernels, which the host only waits for
    at a synchronisation; evaluation takes 5 s of its own and a checkpoint write 7 s."""

    def __init__(self):
        self.now, self.queued = 0.0, 0.0

    def clock(self) -> float:
        return self.now

    def synchronize(self, device=None) -> None:
        self.now += self.queued
        self.queued = 0.0

    def loss(self, model, batch):
        self.queued += 1.0
        return mse(model, batch)

    def eval_fn(self, model, step):
        self.synchronize()  # reading a number waits for everything queued
        self.now += 5.0
        return {"val": 1.0}


def test_tokens_per_s_leaves_out_evaluation_and_checkpoints(monkeypatch, tmp_path):
    dev = FakeDevice()
    monkeypatch.setattr(measure, "_now", dev.clock)
    monkeypatch.setattr(measure, "synchronize", dev.synchronize)
    real_save = T.save_training_state

    def slow_save(*args, **kwargs):
        dev.synchronize()  # copying the weights to the host waits for the device
        dev.now += 7.0
        real_save(*args, **kwargs)

    monkeypatch.setattr(T, "save_training_state", slow_save)
    h = fit(make_model(), dev.loss, data, steps=10, device="cpu", progress=False, tokens_per_step=16,
            eval_fn=dev.eval_fn, eval_every=5, checkpoint_path=tmp_path / "ck.pt", checkpoint_every=3)
    assert h.eval_step == [5, 10]
    assert h.eval_seconds == pytest.approx(10.0)  # 2 x 5 s, none of the queued training kernels
    assert h.checkpoint_seconds == pytest.approx(21.0)  # 3 periodic writes (steps 3, 6, 9) x 7 s
    assert h.tokens_per_s == pytest.approx(16.0)  # 10 steps x 16 tokens in 10 s of training


# --- compile falls back to eager ----------------------------------------------------------------

def _eager_params():
    model = make_model()
    fit(model, mse, data, steps=4, device="cpu", progress=False)
    return [p.detach().clone() for p in model.parameters()]


def _our_warnings(caught):
    return [w for w in caught if "eager" in str(w.message) and "compile" in str(w.message)]


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    real_compile = torch.compile

    def broken_backend(gm, example_inputs):
        raise RuntimeError("Cannot find a working triton installation (forced by the test)")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=broken_backend))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = make_model()
        h = fit(model, mse, data, steps=4, device="cpu", progress=False, compile=True,
                eval_fn=lambda m, step: {"val": float(mse(m, data(99)))}, eval_every=2)
    ours = _our_warnings(caught)
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "triton" in str(ours[0].message)
    assert h.steps_done == 4 and h.eval_step == [2, 4]
    for a, b in zip(_eager_params(), model.parameters(), strict=True):
        assert torch.equal(a, b)  # the failed step was redone in eager mode: the same run as eager


def test_compile_unavailable_at_all_falls_back_too(monkeypatch):
    def no_compile(model, **kw):
        raise RuntimeError("Windows not yet supported for torch.compile (forced by the test)")

    monkeypatch.setattr(torch, "compile", no_compile)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = make_model()
        fit(model, mse, data, steps=4, device="cpu", progress=False, compile=True)
    assert len(_our_warnings(caught)) == 1
    for a, b in zip(_eager_params(), model.parameters(), strict=True):
        assert torch.equal(a, b)


# --- the compiled GPT is one graph ---------------------------------------------------------------

def _explain(fn, *args):
    import torch._dynamo

    torch._dynamo.reset()
    try:
        return torch._dynamo.explain(fn)(*args)
    finally:
        torch._dynamo.reset()


def test_gpt_training_forward_compiles_to_one_graph_without_breaks():
    from course_lib.models.gpt import GPT, GPTConfig
    from course_lib.tasks.text import lm_loss

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, bias=False))
    x, y = torch.randint(0, 11, (2, 8)), torch.randint(0, 11, (2, 8))
    ex = _explain(lambda a, b: lm_loss(model, (a, b)), x, y)
    assert ex.graph_break_count == 0 and ex.graph_count == 1, [str(b.reason) for b in ex.break_reasons]
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 11\), got ids in \[0, 11\]"):
        model(torch.tensor([[0, 11]]))  # eager mode still checks


def test_seq2seq_decoder_step_compiles_without_breaks():
    """The attention decoder's step is one graph: the mask the encoder checked is not re-read on
    the host at every step. (Dynamo leaves nn.RNN/GRU/LSTM to eager mode, so the RNN LM's own
    forward is not traced; its generation loop's per-token check is tested below.)"""
    from course_lib.models.seq2seq import Seq2Seq

    torch.manual_seed(0)
    s2s = Seq2Seq(12, 13, d_emb=8, n_h=8, d_s=8, d_a=8)
    mem = s2s.encode(torch.randint(3, 12, (2, 5)), torch.tensor([5, 3]))
    ex = _explain(lambda y, s: s2s.step(y, s, mem), torch.tensor([1, 1]), mem.s0)
    assert ex.graph_break_count == 0 and ex.graph_count == 1, [str(b.reason) for b in ex.break_reasons]
    with pytest.raises(ValueError, match="all padding"):  # a mask given by hand is still checked
        # src_valid all False (True = real token): every row is padding
        s2s.decoder_step(torch.tensor([1, 1]), mem.s0, mem.H, torch.zeros(2, 5, dtype=torch.bool), keys=mem.keys)


def test_rnn_generation_checks_the_prompt_once_not_every_token(monkeypatch):
    from course_lib.models.rnn import RNNLanguageModel, generate

    torch.manual_seed(0)
    model = RNNLanguageModel(11, 8, 8)
    calls = []
    real = RNNLanguageModel._check_ids
    monkeypatch.setattr(RNNLanguageModel, "_check_ids", lambda self, x: calls.append(1) or real(self, x))
    out = generate(model, torch.tensor([[1, 2, 3]]), 20, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 23) and len(calls) == 1
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 11\)"):
        generate(model, torch.tensor([[1, 12]]), 3)


# --- a resumed checkpoint is never relabelled ---------------------------------------------------

def test_a_checkpoint_past_this_call_is_refused_and_left_as_it_is(tmp_path):
    ck = tmp_path / "run.pt"
    kw = dict(steps=30, optim=OptimConfig(lr=1e-2, warmup=5), device="cpu", progress=False, checkpoint_path=ck)
    fit(make_model(), mse, data, stop_at=20, **kw)
    saved = load_checkpoint(ck)
    assert saved["step"] == 20
    fresh = make_model()
    untouched = [p.detach().clone() for p in fresh.parameters()]
    with pytest.raises(ValueError, match=r"step 20.*step 13"):
        fit(fresh, mse, data, stop_at=13, **kw)
    with pytest.raises(ValueError, match=r"step 20.*step 10"):
        fit(fresh, mse, data, **dict(kw, steps=10))
    after = load_checkpoint(ck)
    assert after["step"] == 20
    assert all(torch.equal(after["model"][k], saved["model"][k]) for k in saved["model"])
    assert all(torch.equal(a, b) for a, b in zip(untouched, fresh.parameters(), strict=True))  # nothing loaded
    # resuming a finished run at its end trains nothing and changes nothing
    h = fit(make_model(), mse, data, stop_at=20, **kw)
    assert h.steps_done == 20 and load_checkpoint(ck)["step"] == 20
