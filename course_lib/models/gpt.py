"""GPT: a decoder-only transformer language model (Radford et al., 2018, "Improving Language
Understanding by Generative Pre-Training"; 2019, "Language Models are Unsupervised Multitask
Learners"; Brown et al., 2020, "Language Models are Few-Shot Learners").

In the lecture's notation: token ids x_1..x_n are embedded, X = E_tok[x] + E_pos[1..n]
(learned position embeddings), passed through L masked (causal) pre-norm blocks -- token t can
only see tokens <= t -- then a final LayerNorm and the LM head, which reuses E_tok
(weight tying, Press & Wolf, 2017): logits = LN(H) E_tok^T. Pre-training minimises the
next-token cross-entropy  L = -1/n sum_t log p(x_{t+1} | x_1..x_t).

Also here: the GPT-1/2/3 configurations and their parameter counts and FLOPs per token, and the
KV cache's attention step. Generation is :mod:`course_lib.models.lm`; OpenAI's GPT-2 weights are
:mod:`course_lib.models.gpt2_weights`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import check_state_fits
from ..device import is_compiling
from .transformer import Block, KVCache, block_param_count


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int  # the context length n_ctx: the most tokens the model ever sees at once
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True
    tie_weights: bool = True

    def __post_init__(self):
        for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            v = getattr(self, k)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"GPTConfig.{k} must be a positive integer, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head={self.n_head} must divide n_embd={self.n_embd}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)


# The lecture's table, plus GPT-2's four sizes. ``published`` is the count the papers state.
# GPT-2's paper lists 117M/345M/762M/1542M; the released small model, counted exactly with tied
# embeddings, has 124,439,808 parameters (the paper's figure excluded something; see notebook 06).
CONFIGS: dict[str, GPTConfig] = {
    "gpt1": GPTConfig(vocab_size=40478, block_size=512, n_layer=12, n_head=12, n_embd=768),
    "gpt2": GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPTConfig(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPTConfig(vocab_size=50257, block_size=1024, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPTConfig(vocab_size=50257, block_size=1024, n_layer=48, n_head=25, n_embd=1600),
    "gpt3": GPTConfig(vocab_size=50257, block_size=2048, n_layer=96, n_head=96, n_embd=12288),
}
PUBLISHED_PARAMS: dict[str, float] = {
    "gpt1": 117e6, "gpt2": 117e6, "gpt2-medium": 345e6, "gpt2-large": 762e6, "gpt2-xl": 1542e6,
    "gpt3": 175e9,
}


class GPT(nn.Module):
    """Token + position embeddings -> L causal blocks -> LayerNorm -> tied LM head -> logits."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(c.n_embd, c.n_head, 4.0, c.dropout, c.bias, causal=True, norm_first=True,
                  activation="gelu_tanh")
            for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases, LayerNorm gains 1 and shifts 0,
        and the two residual output projections of each block scaled by 1/sqrt(2 L) so the residual
        stream's variance does not grow with depth. Every parameter is re-drawn or reset: the model
        afterwards is a freshly initialised one, whatever it learned before."""
        if self.wte.weight.device.type == "meta":
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()
        std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for blk in self.blocks:
            nn.init.normal_(blk.attn.proj.weight, 0.0, std)
            nn.init.normal_(blk.mlp.proj.weight, 0.0, std)

    def new_kv_caches(self) -> list[KVCache]:
        """One empty cache per layer, each holding at most ``block_size`` tokens."""
        return [KVCache(max_len=self.config.block_size) for _ in self.blocks]

    def forward(self, idx: torch.Tensor | None = None, kv_caches: list[KVCache] | None = None, *,
                embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, n, V) for token ids ``idx`` (B, n). With ``kv_caches`` (from
        :meth:`new_kv_caches`) ``idx`` continues the cached tokens: positions start after them.
        ``embeds`` (B, n, d) may stand in for the token embeddings E_tok[x] (see :meth:`hidden_states`)."""
        return self.lm_head(self.hidden_states(idx, kv_caches, embeds=embeds))

    def hidden_states(self, idx: torch.Tensor | None = None, kv_caches: list[KVCache] | None = None, *,
                      embeds: torch.Tensor | None = None) -> torch.Tensor:
        """LN(H) (B, n, d): the forward pass without the LM head (a reward model reads it, notebook
        08). Give token ids ``idx`` or, instead, input embeddings ``embeds`` (B, n, d) that take the
        place of E_tok[x], e.g. projected image patches before the text (notebook 09)."""
        c = self.config
        if (idx is None) == (embeds is None):
            raise ValueError("pass exactly one of idx (token ids) and embeds (input embeddings)")
        if embeds is not None:
            if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3 or embeds.size(-1) != c.n_embd:
                got = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
                raise ValueError(f"embeds must be a (B, n, n_embd={c.n_embd}) tensor, got {got}")
            n = embeds.size(1)
        else:
            if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
                raise ValueError(f"idx must be a (B, n) tensor of token ids, got "
                                 f"{tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__}")
            if idx.dtype not in (torch.long, torch.int, torch.int16, torch.uint8):
                raise ValueError(f"idx must hold integer token ids, got dtype {idx.dtype}")
            n = idx.size(1)
        past = 0
        if kv_caches is not None:
            if len(kv_caches) != c.n_layer:
                raise ValueError(f"need one KV cache per layer ({c.n_layer}), got {len(kv_caches)}")
            past = len(kv_caches[0])
        if n == 0:
            raise ValueError("idx must hold at least one token per sequence, got n = 0")
        if past + n > c.block_size:
            raise ValueError(f"sequence length {past + n} (cached {past} + new {n}) exceeds the context "
                             f"length block_size={c.block_size}; crop the input (generate(..., slide=True) "
                             f"does that for you)")
        if embeds is None:
            # the range check reads values on the host: eager mode only (under torch.compile it would
            # split the graph and, on a GPU, wait for the device), one sync when nothing is wrong
            if not is_compiling() and bool(((idx < 0) | (idx >= c.vocab_size)).any()):
                raise ValueError(f"token ids must be in [0, {c.vocab_size}), got ids in "
                                 f"[{int(idx.min())}, {int(idx.max())}]")
            embeds = self.wte(idx if idx.dtype in (torch.long, torch.int) else idx.long())  # uint8/int16 too
        pos = torch.arange(past, past + n, device=embeds.device)
        x = self.drop(embeds + self.wpe(pos))
        for i, blk in enumerate(self.blocks):
            x = blk(x, kv_cache=None if kv_caches is None else kv_caches[i])
        return self.ln_f(x)

    def load_state_dict_checked(self, state: dict, where: str = "checkpoint") -> None:
        """``load_state_dict`` with an error naming ``where``, the first mismatching key, both shapes
        and this model's config (:func:`course_lib.checkpoint.check_state_fits`)."""
        check_state_fits(self, state, where)
        self.load_state_dict(state)


# ---------------------------------------------------------------------------------------------
# Counting: parameters and FLOPs
# ---------------------------------------------------------------------------------------------

def param_count(config: GPTConfig) -> int:
    """The closed form: V d + n_ctx d (embeddings) + L (12 d^2 + 13 d) (blocks) + 2 d (final LN),
    plus V d more when the LM head is not tied (MLP ratio 4). Without biases a block has
    12 d^2 + 2 d (the two LayerNorms keep only their gains) and the final LayerNorm d."""
    V, T, L, d = config.vocab_size, config.block_size, config.n_layer, config.n_embd
    per_block = block_param_count(d, 4.0, config.bias)  # 12 d^2 + 13 d, or 12 d^2 + 2 d without biases
    total = V * d + T * d + L * per_block + (2 * d if config.bias else d)
    return total if config.tie_weights else total + V * d


def flops_per_token(config: GPTConfig, training: bool = True) -> float:
    """Model FLOPs per token, as in PaLM (Chowdhery et al., 2022, appendix B) and nanoGPT.

    Every weight does one multiply-add per token in the forward pass: 2 N FLOPs (N excludes the
    position table, a lookup). Attention adds the scores Q K^T and the sum A V, 2 n_ctx d FLOPs
    each per layer: 4 L n_ctx d. The backward pass costs about twice the forward, so training is
    3 (2 N + 4 L n_ctx d) = 6 N + 12 L n_ctx d."""
    n = param_count(config) - config.block_size * config.n_embd
    forward = 2 * n + 4 * config.n_layer * config.block_size * config.n_embd
    return float(3 * forward if training else forward)


# ---------------------------------------------------------------------------------------------
# The exercises' references
# ---------------------------------------------------------------------------------------------

def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting tokens[:, t+1] from logits[:, t] (the last position has
    no target): logits (B, n, V) computed on ``tokens`` (B, n) itself."""
    if logits.dim() != 3 or tokens.dim() != 2 or logits.shape[:2] != tokens.shape:
        raise ValueError(f"expected logits (B, n, V) and tokens (B, n) with equal B, n; got "
                         f"{tuple(logits.shape)} and {tuple(tokens.shape)}")
    if tokens.size(1) < 2:
        raise ValueError(f"need at least 2 tokens per sequence to predict a next one, got {tokens.size(1)}")
    pred = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    return F.cross_entropy(pred, tokens[:, 1:].reshape(-1))






def kv_attention_step(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                      k_cache: torch.Tensor | None, v_cache: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoding step of attention with a KV cache, for the newest token only:
    K = [K_cache; k_new], V = [V_cache; v_new], y = softmax(q K^T / sqrt(d)) V.
    Shapes (B, h, 1, d) for q, k_new, v_new and (B, h, n_past, d) for the cache (None: empty).
    Returns (y (B, h, 1, d), K, V). No mask is needed: the newest token may see every key."""
    K = k_new if k_cache is None else torch.cat([k_cache, k_new], dim=2)
    V = v_new if v_cache is None else torch.cat([v_cache, v_new], dim=2)
    scores = q @ K.transpose(-2, -1) / math.sqrt(q.size(-1))
    return torch.softmax(scores, dim=-1) @ V, K, V


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------





# ---------------------------------------------------------------------------------------------
# OpenAI's GPT-2 weights (Hugging Face format)
# ---------------------------------------------------------------------------------------------









