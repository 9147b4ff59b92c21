"""Pictures for Chapter 2 (embeddings and batches): batches, one-hot lookups, position tables.

Hand-written. Model code never imports this module; the notebook calls one function per figure
and then ``plt.show()``.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["plot_batch", "plot_one_hot_lookup", "plot_position_heatmap",
           "plot_position_similarity", "plot_loss_curves"]

_VISIBLE = {" ": "␣", "\n": "⏎", "\t": "⇥"}


def _label(piece: str, width: int = 6) -> str:
    shown = "".join(_VISIBLE.get(ch, ch) for ch in piece)
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def plot_batch(x: torch.Tensor, y: torch.Tensor, decode_token: Callable[[int], str],
               title: str = "One batch (inputs over targets)", max_rows: int = 4):
    """Draw each sequence of a batch as two rows of cells: inputs ``x`` on top, targets ``y`` below.

    ``decode_token`` turns one id into its text; each cell shows that text and the id.
    """
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"x and y must be (B, T) tensors of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    rows = min(max_rows, x.shape[0])
    T = x.shape[1]
    fig, ax = plt.subplots(figsize=(min(10, 1.1 * T + 1.5), 0.75 * 2 * rows + 0.6), dpi=100)
    colors = {"x": "#dbe9f6", "y": "#fde3c8"}
    for b in range(rows):
        for kind, seq, r in (("x", x[b], 2 * b), ("y", y[b], 2 * b + 1)):
            top = -(r + 0.3 * b)
            for t in range(T):
                tid = int(seq[t])
                ax.add_patch(plt.Rectangle((t, top - 1), 1, 1, facecolor=colors[kind], edgecolor="white", lw=2))
                ax.text(t + 0.5, top - 0.42, _label(decode_token(tid)), ha="center", va="center", fontsize=11,
                        family="monospace")
                ax.text(t + 0.5, top - 0.85, str(tid), ha="center", va="center", fontsize=7, color="#555555")
            ax.text(-0.15, top - 0.5, f"{kind}[{b}]", ha="right", va="center", fontsize=10)
    ax.set_xlim(-1.2, T)
    ax.set_ylim(-(2 * rows + 0.3 * (rows - 1)) - 0.1, 0.1)
    ax.set_xticks(np.arange(T) + 0.5, [f"t={t}" for t in range(T)], fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    for side in ("left", "right", "bottom", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, pad=20)
    fig.tight_layout()
    return fig


def plot_one_hot_lookup(one_hot: torch.Tensor, weight: torch.Tensor, out: torch.Tensor,
                        token_labels: Sequence[str] | None = None):
    """Three heatmaps side by side: ``one_hot (T, V) @ W (V, C) = E (T, C)``."""
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6), dpi=100,
                             gridspec_kw={"width_ratios": [3, 1.2, 1.2]})
    panels = [(one_hot, f"one-hot  {tuple(one_hot.shape)}", "Greys"),
              (weight, f"W  {tuple(weight.shape)}", "RdBu_r"),
              (out, f"one-hot @ W  {tuple(out.shape)}", "RdBu_r")]
    lim = float(max(weight.abs().max(), out.abs().max()))
    for ax, (mat, name, cmap) in zip(axes, panels):
        mat = mat.detach().float().cpu().numpy()
        kwargs = {"vmin": 0, "vmax": 1} if cmap == "Greys" else {"vmin": -lim, "vmax": lim}
        ax.imshow(mat, aspect="auto", cmap=cmap, interpolation="nearest", **kwargs)
        ax.set_title(name, fontsize=10)
    for ax, label in zip(axes, ("token id (column)", "dimension", "dimension")):
        ax.set_xlabel(label)
    axes[1].set_ylabel("token id (row)")
    if token_labels is not None:
        for ax in (axes[0], axes[2]):
            ax.set_yticks(range(len(token_labels)), [repr(t) for t in token_labels])
        ids = one_hot.argmax(dim=-1).tolist()
        for r, c in enumerate(ids):
            axes[0].add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
            axes[1].add_patch(plt.Rectangle((-0.5, c - 0.5), weight.shape[1], 1, fill=False,
                                            edgecolor="red", lw=1.5))
    fig.tight_layout()
    return fig


def plot_position_heatmap(weight: torch.Tensor, title: str = "Position table"):
    """Heatmap of a ``(positions, n_embd)`` table: one row per position."""
    mat = weight.detach().float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=100)
    lim = float(np.abs(mat).max()) or 1.0
    im = ax.imshow(mat, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_xlabel("embedding dimension")
    ax.set_ylabel("position")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def plot_position_similarity(weight: torch.Tensor, title: str = "Cosine similarity between positions",
                             anchors: Sequence[int] | None = None):
    """Left: the (T, T) cosine-similarity matrix. Right: similarity of a few positions to all others."""
    w = weight.detach().float().cpu()
    w = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sim = (w @ w.T).numpy()
    T = sim.shape[0]
    anchors = anchors if anchors is not None else sorted({0, T // 4, T // 2, T - 1})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    im = ax1.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax1.set_xlabel("position")
    ax1.set_ylabel("position")
    ax1.set_title("cosine similarity")
    fig.colorbar(im, ax=ax1)
    for a in anchors:
        ax2.plot(range(T), sim[a], label=f"position {a}")
    ax2.set_xlabel("other position")
    ax2.set_ylabel("cosine similarity")
    ax2.set_title("similarity to a few positions")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_loss_curves(curves: Mapping[str, Sequence[float]], title: str = "Training loss",
                     smooth: int = 25):
    """Training-loss curves (moving average over ``smooth`` steps), one line per run."""
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    for name, losses in curves.items():
        values = np.asarray(losses, dtype=float)
        k = max(1, min(smooth, len(values) // 5 or 1))
        avg = np.convolve(values, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(len(avg)) + k - 1, avg, label=f"positions: {name}")
    ax.set_xlabel("step")
    ax.set_ylabel(f"cross-entropy (moving average of {k})" if curves else "cross-entropy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
