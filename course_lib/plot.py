"""Plots the notebooks share: loss curves, attention heat maps, image grids."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch


def loss_curves(histories, *, keys: Sequence[str] = ("val_loss",), title: str = "loss", ax=None,
                logy: bool = False):
    """Training loss (and evaluation metrics ``keys``) of one History or a {label: History} dict."""
    if not isinstance(histories, Mapping):
        histories = {"": histories}
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    for label, h in histories.items():
        prefix = f"{label} " if label else ""
        if h.loss:
            line, = ax.plot(h.step, h.loss, alpha=0.6, label=f"{prefix}train")
            color = line.get_color()
        else:
            color = None
        for k in keys:
            if h.eval and k in h.eval[0]:
                ax.plot(h.eval_step, h.evals(k), "o-", color=color, label=f"{prefix}{k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def attention(weights, *, x_labels: Sequence[str] | None = None, y_labels: Sequence[str] | None = None,
              title: str = "", ax=None, cmap: str = "viridis", colorbar: bool = True):
    """Heat map of an attention matrix (rows: queries/outputs, columns: keys/inputs)."""
    w = weights.detach().float().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights)
    if w.ndim != 2:
        raise ValueError(f"attention weights must be 2-D (queries x keys), got shape {w.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(max(3, w.shape[1] * 0.35 + 1), max(3, w.shape[0] * 0.35 + 1)))
    im = ax.imshow(w, cmap=cmap, aspect="auto", vmin=0.0)
    if x_labels is not None:
        ax.set_xticks(range(len(x_labels)), list(x_labels), rotation=90)
    if y_labels is not None:
        ax.set_yticks(range(len(y_labels)), list(y_labels))
    ax.set_xlabel("key / input position")
    ax.set_ylabel("query / output position")
    if title:
        ax.set_title(title)
    if colorbar:
        plt.colorbar(im, ax=ax, fraction=0.046)
    return ax


def attention_grid(maps, *, title: str = "", row_label: str = "layer", col_label: str = "head"):
    """A grid of heat maps from a (rows, cols, n, n) tensor, e.g. layers x heads."""
    m = maps.detach().float().cpu() if isinstance(maps, torch.Tensor) else torch.as_tensor(maps)
    if m.dim() != 4:
        raise ValueError(f"expected maps of shape (rows, cols, n, n), got {tuple(m.shape)}")
    rows, cols = m.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(m[r, c].numpy(), cmap="viridis", vmin=0.0)
            ax.set_xticks([]); ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{col_label} {c}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{row_label} {r}", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def image_grid(images, *, labels: Sequence[str] | None = None, ncols: int = 8, title: str = "", cmap=None):
    """Show (N, C, H, W) or (N, H, W) images in a grid, optionally labelled."""
    x = images.detach().float().cpu() if isinstance(images, torch.Tensor) else torch.as_tensor(images).float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W) or (N, H, W), got {tuple(x.shape)}")
    n = x.shape[0]
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.4 * ncols, 1.5 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = x[i]
        lo, hi = img.min(), img.max()
        img = (img - lo) / (hi - lo + 1e-8)
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap=cmap or "gray")
        else:
            ax.imshow(img.permute(1, 2, 0).numpy())
        if labels is not None:
            ax.set_title(str(labels[i]), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
