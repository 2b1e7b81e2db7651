"""Loading OpenAI's GPT-2 weights (Hugging Face format) into :class:`course_lib.models.gpt.GPT`.

Hugging Face's GPT-2 stores its projections as ``Conv1D`` (weight (in, out), the transpose of
``nn.Linear``) and names them ``c_attn``, ``c_proj``, ``c_fc``; :func:`hf_gpt2_to_ours` renames and
transposes them. The files come through :func:`course_lib.data.fetch_hf` (cache, mirror, hub).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data import fetch_hf
from .gpt import GPT, GPTConfig

_HF_SKIP = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers, not parameters


def hf_gpt2_to_ours(hf_state: dict[str, torch.Tensor], tie_weights: bool = True) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face GPT-2 state dict to ours. HF stores its linear layers as ``Conv1D``
    with weights (in, out), so those are transposed. With ``tie_weights`` (GPT-2's
    ``tie_word_embeddings``, true for OpenAI's models) the LM head is the token table; otherwise
    the checkpoint's own ``lm_head.weight`` is kept."""
    out: dict[str, torch.Tensor] = {}
    transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    rename = {"ln_1": "ln1", "ln_2": "ln2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
              "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}
    for key, t in hf_state.items():
        k = key.removeprefix("transformer.")
        if k.endswith(_HF_SKIP) or k == "lm_head.weight":
            continue
        if k.startswith("h."):
            _, layer, rest = k.split(".", 2)
            new_rest = rest
            for a, b in rename.items():
                if rest.startswith(a + "."):
                    new_rest = b + rest[len(a):]
                    break
            t = t.t().contiguous() if rest in transposed else t
            out[f"blocks.{layer}.{new_rest}"] = t
        elif k.split(".")[0] in ("wte", "wpe", "ln_f"):
            out[k] = t
        else:
            raise ValueError(f"unexpected key {key!r} in a GPT-2 checkpoint")
    if not tie_weights:
        head = hf_state.get("lm_head.weight")
        if head is None:
            raise ValueError("the checkpoint's config says tie_word_embeddings=False, but it holds no lm_head.weight")
        out["lm_head.weight"] = head
    elif "wte.weight" in out:
        out["lm_head.weight"] = out["wte.weight"]
    return out


def config_from_hf(hf_config: dict) -> GPTConfig:
    """Our config from a Hugging Face ``config.json`` of a GPT-2 model."""
    if hf_config.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"expected a GPT-2 config (model_type 'gpt2'), got {hf_config.get('model_type')!r}")
    act = hf_config.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"our GPT uses the tanh GELU ('gelu_new'); this checkpoint uses {act!r}")
    inner = hf_config.get("n_inner")
    if inner not in (None, 4 * hf_config["n_embd"]):
        raise ValueError(f"our GPT has an MLP of 4 * n_embd = {4 * hf_config['n_embd']}, checkpoint has {inner}")
    return GPTConfig(vocab_size=hf_config["vocab_size"], block_size=hf_config["n_positions"],
                     n_layer=hf_config["n_layer"], n_head=hf_config["n_head"], n_embd=hf_config["n_embd"],
                     tie_weights=bool(hf_config.get("tie_word_embeddings", True)))


def from_hf_checkpoint(folder: str | Path | None = None, *, config: dict | None = None,
                       weights: str | Path | None = None) -> GPT:
    """Our GPT with the weights of a Hugging Face GPT-2 checkpoint: a folder with
    ``config.json`` and ``model.safetensors`` (e.g. written by ``save_pretrained``), or the two
    given separately."""
    from safetensors.torch import load_file

    if folder is not None:
        folder = Path(folder)
        if config is None:
            config = json.loads((folder / "config.json").read_text())
        weights = weights or folder / "model.safetensors"
    if config is None or weights is None:
        raise ValueError("give a checkpoint folder, or both config (dict) and weights (path)")
    model = GPT(config_from_hf(config))
    state = hf_gpt2_to_ours(load_file(str(weights)), tie_weights=model.config.tie_weights)
    model.load_state_dict_checked(state, where=f"GPT-2 checkpoint {weights}")
    return model.eval()


def from_pretrained_gpt2(repo_id: str = "openai-community/gpt2") -> GPT:
    """OpenAI's GPT-2 (124M by default) from the Hugging Face hub, cached by the data layer.
    Offline and not cached: ``course_lib.data.DataError`` saying where to put the files."""

    cfg = json.loads(fetch_hf(repo_id, "config.json").read_text())
    return from_hf_checkpoint(config=cfg, weights=fetch_hf(repo_id, "model.safetensors"))
