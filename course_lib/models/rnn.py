"""Recurrent language models, as the lecture introduces them before attention.

Pre-training objective (lecture: "next-token prediction"): given tokens x_1..x_T, the model
predicts p(x_{t+1} | x_1..x_t) at every position t, and the loss is the mean negative
log-likelihood of the true next token,

    L = -(1/T) sum_t log p(x_{t+1} | x_{<=t})      (nats/token),   perplexity = exp(L).

The vanilla (Elman) RNN keeps one hidden vector and updates it with the *same* weights at every
step (the lecture's "reuses weights"):

    h_t = tanh(x_t W_xh + h_{t-1} W_hh + b_h),     logits_t = h_t W_hy + b_y.

We use row vectors (x_t in R^{1 x d}, weights on the right), as the lecture writes X W_Q for
attention. PyTorch's ``nn.RNN`` stores the transposes (``weight_ih_l0`` is W_xh^T) and two
biases whose sum is b_h; :meth:`RNN.from_torch` converts. GRU (Cho et al., 2014) and LSTM
(Hochreiter & Schmidhuber, 1997) add gates; :class:`RNNLanguageModel` uses PyTorch's modules
for them.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..device import is_compiling
from ..validate import number, shape_of, token_ids

CELLS = ("rnn", "gru", "lstm")



def rnn_cell(x_t: torch.Tensor, h_prev: torch.Tensor, W_xh: torch.Tensor, W_hh: torch.Tensor,
             b_h: torch.Tensor) -> torch.Tensor:
    """One vanilla RNN step: h_t = tanh(x_t W_xh + h_{t-1} W_hh + b_h).

    Shapes: x_t (B, d) or (d,), h_prev (B, H) or (H,), W_xh (d, H), W_hh (H, H), b_h (H,).
    Returns h_t with h_prev's shape.
    """
    for name, t in (("x_t", x_t), ("h_prev", h_prev), ("W_xh", W_xh), ("W_hh", W_hh), ("b_h", b_h)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if W_xh.dim() != 2:
        raise ValueError(f"W_xh must be 2-D (d, H), got shape {shape_of(W_xh)}")
    d, H = W_xh.shape
    if shape_of(W_hh) != (H, H):
        raise ValueError(f"W_hh must have shape (H, H) = ({H}, {H}) to match W_xh {shape_of(W_xh)}, "
                         f"got {shape_of(W_hh)}")
    if shape_of(b_h) != (H,):
        raise ValueError(f"b_h must have shape (H,) = ({H},), got {shape_of(b_h)}")
    if x_t.dim() not in (1, 2) or x_t.shape[-1] != d:
        raise ValueError(f"x_t must have shape (B, d) or (d,) with d = {d}, got {shape_of(x_t)}")
    if h_prev.dim() != x_t.dim() or h_prev.shape[-1] != H or (x_t.dim() == 2 and h_prev.shape[0] != x_t.shape[0]):
        expected = f"({x_t.shape[0]}, {H})" if x_t.dim() == 2 else f"({H},)"
        raise ValueError(f"h_prev must have shape {expected} to match x_t {shape_of(x_t)}, got {shape_of(h_prev)}")
    return torch.tanh(x_t @ W_xh + h_prev @ W_hh + b_h)


class RNN(nn.Module):
    """The vanilla RNN unrolled over time, from scratch, layer by layer.

    ``forward(x (B, T, d), h0 (n_layers, B, H) | None) -> (out (B, T, H), h_T (n_layers, B, H))``,
    the same contract as ``nn.RNN(d, H, n_layers, batch_first=True)`` with tanh, and numerically
    equal to it once its weights are loaded (:meth:`from_torch`). The Python loop over t is the
    point: step t needs h_{t-1}, so the steps run one after another.
    """

    def __init__(self, input_size: int, hidden_size: int, n_layers: int = 1):
        super().__init__()
        if input_size <= 0 or hidden_size <= 0 or n_layers <= 0:
            raise ValueError(f"input_size, hidden_size and n_layers must be positive, "
                             f"got {input_size}, {hidden_size}, {n_layers}")
        self.input_size, self.hidden_size, self.n_layers = input_size, hidden_size, n_layers
        bound = 1.0 / math.sqrt(hidden_size)  # nn.RNN's default initialisation
        self.W_xh = nn.ParameterList()
        self.W_hh = nn.ParameterList()
        self.b_h = nn.ParameterList()
        for layer in range(n_layers):
            d = input_size if layer == 0 else hidden_size
            self.W_xh.append(nn.Parameter(torch.empty(d, hidden_size).uniform_(-bound, bound)))
            self.W_hh.append(nn.Parameter(torch.empty(hidden_size, hidden_size).uniform_(-bound, bound)))
            self.b_h.append(nn.Parameter(torch.empty(hidden_size).uniform_(-bound, bound)))

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"x must have shape (B, T, d) with d = {self.input_size}, got {shape_of(x)}")
        B, T, _ = x.shape
        if T == 0:
            raise ValueError(f"x is an empty sequence (T = 0), shape {shape_of(x)}; need T >= 1")
        expected = (self.n_layers, B, self.hidden_size)
        if h0 is None:
            h0 = x.new_zeros(expected)
        elif shape_of(h0) != expected:
            raise ValueError(f"h0 must have shape (n_layers, B, H) = {expected}, got {shape_of(h0)}")
        layer_in = x
        finals = []
        for layer in range(self.n_layers):
            h = h0[layer]
            outs = []
            for t in range(T):
                h = rnn_cell(layer_in[:, t], h, self.W_xh[layer], self.W_hh[layer], self.b_h[layer])
                outs.append(h)
            layer_in = torch.stack(outs, dim=1)
            finals.append(h)
        return layer_in, torch.stack(finals)

    @torch.no_grad()
    def load_from_torch(self, rnn: nn.RNN) -> RNN:
        """Copy the weights of a tanh ``nn.RNN`` (unidirectional, same sizes) into this module."""
        if not isinstance(rnn, nn.RNN):
            raise ValueError(f"expected a torch.nn.RNN, got {type(rnn).__name__}")
        if rnn.nonlinearity != "tanh" or rnn.bidirectional or rnn.proj_size:
            raise ValueError("only unidirectional tanh nn.RNN without projections is supported, got "
                             f"nonlinearity={rnn.nonlinearity!r}, bidirectional={rnn.bidirectional}")
        got = (rnn.input_size, rnn.hidden_size, rnn.num_layers)
        want = (self.input_size, self.hidden_size, self.n_layers)
        if got != want:
            raise ValueError(f"nn.RNN sizes (input_size, hidden_size, num_layers) = {got} "
                             f"do not match this RNN's {want}")
        for layer in range(self.n_layers):
            self.W_xh[layer].copy_(getattr(rnn, f"weight_ih_l{layer}").T)
            self.W_hh[layer].copy_(getattr(rnn, f"weight_hh_l{layer}").T)
            if rnn.bias:
                self.b_h[layer].copy_(getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}"))
            else:
                self.b_h[layer].zero_()
        return self

    @classmethod
    def from_torch(cls, rnn: nn.RNN) -> RNN:
        """A from-scratch :class:`RNN` holding the weights of ``rnn`` (which must be batch_first)."""
        if not isinstance(rnn, nn.RNN):
            raise ValueError(f"expected a torch.nn.RNN, got {type(rnn).__name__}")
        if not rnn.batch_first:
            raise ValueError("from_torch expects nn.RNN(..., batch_first=True), the course's (B, T, d) layout")
        ref = next(rnn.parameters())
        return cls(rnn.input_size, rnn.hidden_size, rnn.num_layers).to(ref.device, ref.dtype).load_from_torch(rnn)


class RNNLanguageModel(nn.Module):
    """Embedding -> recurrent layers (vanilla RNN, GRU or LSTM) -> linear head over the vocabulary.

    ``forward(x (B, T) token ids) -> logits (B, T, V)``: logits[:, t] scores the token at t + 1.
    :meth:`forward_with_state` also takes and returns the recurrent state, so generation feeds one
    token at a time at constant cost per token.
    """

    def __init__(self, vocab_size: int, d_embed: int, d_hidden: int, n_layers: int = 1, cell: str = "rnn",
                 dropout: float = 0.0):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
        if min(vocab_size, d_embed, d_hidden, n_layers) <= 0:
            raise ValueError(f"vocab_size, d_embed, d_hidden and n_layers must be positive, "
                             f"got {vocab_size}, {d_embed}, {d_hidden}, {n_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.vocab_size, self.cell, self.n_layers, self.d_hidden = vocab_size, cell, n_layers, d_hidden
        self.embed = nn.Embedding(vocab_size, d_embed)
        module = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.rnn = module(d_embed, d_hidden, num_layers=n_layers, batch_first=True,
                          dropout=dropout if n_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d_hidden, vocab_size)

    def _check_ids(self, x: torch.Tensor) -> None:
        # integer (B, T), non-empty; the range check reads values on the host: eager mode only
        token_ids(x, self.vocab_size, "x (a (B, T) tensor of token ids)", dim=2)

    def forward_with_state(self, x: torch.Tensor, state=None, *, checked: bool = True):
        """(logits (B, T, V), state): the state is h (n_layers, B, H), or (h, c) for the LSTM.
        ``checked=False`` skips the check of ``x`` (for ids the model itself just sampled)."""
        if checked:
            self._check_ids(x)
        out, state = self.rnn(self.embed(x), state)
        return self.head(self.drop(out)), state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_state(x)[0]


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token loss over a sequence: L = -(1/(B T)) sum_{b,t} log softmax(logits[b, t])[targets[b, t]].

    ``logits`` (B, T, V) scores the next token at every position; ``targets`` (B, T) are the true
    next tokens (the input shifted by one). Returns the mean in nats/token.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(f"logits must have shape (B, T, V), got "
                         f"{shape_of(logits) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    if not isinstance(targets, torch.Tensor) or shape_of(targets) != shape_of(logits)[:2]:
        raise ValueError(f"targets must have shape (B, T) = {shape_of(logits)[:2]}, got "
                         f"{shape_of(targets) if isinstance(targets, torch.Tensor) else type(targets).__name__}")
    if logits.shape[1] == 0:
        raise ValueError("empty sequence (T = 0): the loss over zero tokens is undefined")
    token_ids(targets, logits.shape[-1], "targets", non_empty=False)
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1).mean()


def perplexity(loss_nats: float | torch.Tensor) -> float:
    """exp(L): the effective number of equally likely choices per token."""
    return float(math.exp(float(loss_nats)))


def sample_with_temperature(logits: torch.Tensor, temperature: float = 1.0,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row from softmax(logits / temperature); temperature 0 means argmax.

    ``logits`` (B, V) or (V,) -> ids (B,) or () (torch.long). Low temperature sharpens the
    distribution towards the most likely token, high temperature flattens it towards uniform.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() not in (1, 2) or logits.shape[-1] == 0:
        got = shape_of(logits) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must have shape (B, V) or (V,) with V >= 1, got {got}")
    number(temperature, "temperature", 0.0)
    # NaN logits would decode as token 0 (argmax) or fail inside multinomial; checked where it
    # costs no device sync (CPU tensors), so generation on a GPU still never waits per token
    if logits.device.type == "cpu" and not is_compiling() and bool(torch.isnan(logits).any()):
        raise ValueError("logits contain NaN: the model produced no distribution to sample from "
                         "(a diverged model, or inputs it cannot handle)")
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    if generator is not None and generator.device != flat.device:  # a CPU generator for GPU logits
        ids = torch.multinomial(flat.cpu(), 1, generator=generator).squeeze(-1).to(flat.device)
    else:
        ids = torch.multinomial(flat, 1, generator=generator).squeeze(-1)
    return ids.reshape(probs.shape[:-1])


@torch.no_grad()
def generate(model: RNNLanguageModel, prompt: torch.Tensor, n_new: int, temperature: float = 1.0,
             generator: torch.Generator | None = None, sampler=None) -> torch.Tensor:
    """Continue ``prompt`` (B, T0) by ``n_new`` sampled tokens, carrying the recurrent state.

    The prompt is read (and its ids checked) once; then each new token costs one recurrent step,
    with no check of the ids the model just sampled (that would wait for the device). ``sampler(logits,
    temperature, generator)`` defaults to :func:`sample_with_temperature`.
    Returns (B, T0 + n_new) ids.
    """
    if n_new < 0:
        raise ValueError(f"n_new must be >= 0, got {n_new}")
    if prompt.dim() == 1:
        prompt = prompt[None]
    sampler = sampler or sample_with_temperature
    was_training = model.training
    model.eval()
    logits, state = model.forward_with_state(prompt)
    out = [prompt]
    for _ in range(n_new):
        nxt = sampler(logits[:, -1], temperature, generator).reshape(-1, 1).to(prompt.dtype)
        out.append(nxt)
        logits, state = model.forward_with_state(nxt, state, checked=False)  # sampled: valid ids
    model.train(was_training)
    return torch.cat(out, dim=1)


def sample_text(model: RNNLanguageModel, tokenizer, prompt: str, n_new: int, temperature: float = 1.0,
                seed: int = 0, sampler=None) -> str:
    """Text in, text out: encode ``prompt`` (unknown characters raise ValueError), generate, decode."""
    if not prompt:
        raise ValueError("prompt is empty; give at least one character (e.g. '\\n') to start from")
    ids = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=next(model.parameters()).device)
    g = torch.Generator(device=ids.device).manual_seed(seed)
    return tokenizer.decode(generate(model, ids, n_new, temperature, g, sampler)[0])


