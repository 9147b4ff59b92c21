"""Pictures and a widget for Chapter 4 (multi-head attention).

Hand-written. Model code never imports this module; the notebook calls one function per figure
and then ``plt.show()``. :func:`attention_explorer` is the interactive view; :func:`plot_query`
draws the same view as a static figure (its twin in the book).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["plot_weights", "plot_scaling_variance", "plot_saturation", "plot_heads",
           "plot_query", "attention_explorer"]

_VISIBLE = {" ": "␣", "\n": "⏎", "\t": "⇥"}


def _labels(tokens: Sequence[str]) -> list[str]:
    return ["".join(_VISIBLE.get(ch, ch) for ch in str(t)) for t in tokens]


def _as_layers(weights) -> np.ndarray:
    """(n_layer, n_head, T, T) numpy array from a tensor of 2, 3 or 4 dimensions."""
    w = weights.detach().float().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights)
    while w.ndim < 4:
        w = w[None]
    if w.ndim != 4 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"expected attention weights (n_layer, n_head, T, T), got shape {w.shape}")
    return w


def _heatmap(ax, w: np.ndarray, labels: list[str], fontsize: int = 7, ticks: bool = True):
    masked = np.ma.masked_where(np.triu(np.ones_like(w, dtype=bool), k=1) & (w == 0), w)
    im = ax.imshow(masked, cmap="viridis", vmin=0.0, vmax=1.0)
    if ticks:
        T = len(labels)
        ax.set_xticks(range(T), labels, fontsize=fontsize)
        ax.set_yticks(range(T), labels, fontsize=fontsize)
        ax.tick_params(length=0, pad=1)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    return im


def plot_weights(weights, tokens: Sequence[str], title: str = "Attention weights"):
    """One (T, T) weight matrix with its numbers written in the cells (for small T)."""
    w = _as_layers(weights)[0, 0]
    labels = _labels(tokens)
    fig, ax = plt.subplots(figsize=(3.6, 3.2), dpi=100)
    im = _heatmap(ax, w, labels, fontsize=9)
    if len(labels) <= 10:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if j <= i or w[i, j] > 0:
                    ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if w[i, j] < 0.6 else "black")
    ax.set_xlabel("key j")
    ax.set_ylabel("query i")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def plot_scaling_variance(d_ks: Sequence[int], var_raw: Sequence[float],
                          var_scaled: Sequence[float]):
    """Variance of q·k against d_k, with and without dividing by sqrt(d_k) (log-log axes)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=100)
    ax.loglog(d_ks, var_raw, "o-", label=r"$q\cdot k$ (measured)")
    ax.loglog(d_ks, d_ks, ":", color="gray", label=r"$d_k$ (theory)")
    ax.loglog(d_ks, var_scaled, "s-", label=r"$q\cdot k/\sqrt{d_k}$ (measured)")
    ax.set_xlabel(r"head size $d_k$")
    ax.set_ylabel("variance of the score")
    ax.set_title("Scaling keeps the scores at unit variance", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_saturation(d_ks: Sequence[int], stats: Mapping[str, Sequence[Mapping[str, float]]],
                    n_keys: int):
    """Largest weight, entropy and gradient size of the softmax against d_k, raw vs scaled."""
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2), dpi=100)
    panels = [("max_weight", "mean largest weight", False),
              ("entropy", "mean entropy (nats)", False),
              ("grad", "mean |gradient| to the scores", True)]
    for ax, (key, label, logy) in zip(axes, panels):
        for name, marker in (("raw", "o-"), ("scaled", "s-")):
            ax.plot(d_ks, [s[key] for s in stats[name]], marker,
                    label="unscaled" if name == "raw" else r"scaled by $1/\sqrt{d_k}$")
        if key == "max_weight":
            ax.axhline(1 / n_keys, color="gray", ls=":", label="uniform")
        if key == "entropy":
            ax.axhline(np.log(n_keys), color="gray", ls=":", label="uniform")
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(r"$d_k$")
        ax.set_title(label, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Softmax over {n_keys} random keys", fontsize=10)
    fig.tight_layout()
    return fig


def plot_heads(weights, tokens: Sequence[str], title: str = "Attention heads"):
    """A grid of heatmaps: one row per layer, one column per head, characters on the axes.

    Keys are labelled along the bottom row, queries along the first column.
    """
    w = _as_layers(weights)
    n_layer, n_head = w.shape[:2]
    labels = _labels(tokens)
    T = w.shape[-1]
    if len(labels) != T:
        raise ValueError(f"{len(labels)} token labels for weights over {T} positions")
    size = min(2.45, 9.2 / n_head)
    fig, axes = plt.subplots(n_layer, n_head, figsize=(size * n_head + 0.8, size * n_layer + 0.5),
                             dpi=100, squeeze=False)
    fig.subplots_adjust(left=0.05, right=0.9, bottom=0.06, top=0.9, wspace=0.08, hspace=0.2)
    fontsize = 6 if T > 20 else 7
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer, head]
            im = _heatmap(ax, w[layer, head], labels, ticks=False)
            if layer == n_layer - 1:
                ax.set_xticks(range(T), labels, fontsize=fontsize)
            if head == 0:
                ax.set_yticks(range(T), labels, fontsize=fontsize)
            ax.tick_params(length=0, pad=1)
            ax.set_xlim(-0.5, T - 0.5)
            ax.set_ylim(T - 0.5, -0.5)
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.colorbar(im, cax=fig.add_axes([0.92, 0.15, 0.015, 0.7]))
    return fig


def plot_query(weights, tokens: Sequence[str], layer: int = 0, head: int = 0, pos: int = -1):
    """One head's heatmap with the query row ``pos`` outlined, and that row's weights as bars."""
    w = _as_layers(weights)
    n_layer, n_head, T, _ = w.shape
    if not (0 <= layer < n_layer and 0 <= head < n_head):
        raise ValueError(f"layer must be in [0, {n_layer}) and head in [0, {n_head}), "
                         f"got layer={layer}, head={head}")
    pos = pos % T
    labels = _labels(tokens)
    row = w[layer, head, pos]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100,
                                   gridspec_kw={"width_ratios": [1, 1.6]})
    _heatmap(ax0, w[layer, head], labels, fontsize=6)
    ax0.add_patch(plt.Rectangle((-0.5, pos - 0.5), T, 1, fill=False, ec="red", lw=1.5))
    ax0.set_title(f"layer {layer}, head {head}", fontsize=10)
    ax0.set_xlabel("key")
    ax0.set_ylabel("query")
    seen = np.arange(pos + 1)
    ax1.bar(seen, row[: pos + 1], color="tab:blue")
    ax1.set_xticks(seen, labels[: pos + 1], fontsize=7)
    ax1.set_ylim(0, max(0.05, float(row.max()) * 1.1))
    ax1.set_ylabel("attention weight")
    ax1.set_title(f"what position {pos} ({labels[pos]!r}) attends to", fontsize=10)
    ax1.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def attention_explorer(weights, tokens: Sequence[str]):
    """An ipywidgets view: sliders for layer, head and query position, drawing :func:`plot_query`.

    Returns the widget (display it as a cell's last expression). Its static twin is
    :func:`plot_query`.
    """
    import ipywidgets as widgets
    from IPython.display import display

    w = _as_layers(weights)
    n_layer, n_head, T, _ = w.shape
    layer = widgets.IntSlider(0, 0, n_layer - 1, description="layer")
    head = widgets.IntSlider(0, 0, n_head - 1, description="head")
    pos = widgets.IntSlider(T - 1, 0, T - 1, description="position")
    out = widgets.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            plot_query(w, tokens, layer=layer.value, head=head.value, pos=pos.value)
            plt.show()

    for s in (layer, head, pos):
        s.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([widgets.HBox([layer, head, pos]), out])
    display(box)
    return None
