"""Pictures and the mask explorer for Chapter 3 (the causal mask).

Hand-written. Model code never imports this module; the notebook calls one function per figure
and then ``plt.show()``. Every widget here has a static twin drawn by a plain function, so the
rendered book shows the same view.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["plot_mask_table", "plot_weight_panels", "plot_loss_curves", "plot_position_losses",
           "plot_attention_row", "mask_explorer", "plot_padding_masks", "plot_influence"]

_VISIBLE = {" ": "␣", "\n": "⏎", "\t": "⇥"}
_ALLOWED, _BLOCKED, _PAD = "#cfe8cf", "#eeeeee", "#f6d5d5"


def _label(piece: str) -> str:
    return "".join(_VISIBLE.get(ch, ch) for ch in piece)


def _as_numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _square(mask: torch.Tensor, name: str = "mask") -> np.ndarray:
    m = _as_numpy(mask)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{name} must be a square (T, T) matrix, got shape {m.shape}")
    return m


def plot_mask_table(mask: torch.Tensor, tokens: Sequence[str] | None = None,
                    title: str = "Who may attend to whom"):
    """Draw a ``(T, T)`` bool mask as a table of ✓ (may attend) and × (masked).

    Rows are queries (the position doing the looking), columns are keys (the positions looked
    at). ``tokens`` labels both axes.
    """
    m = _square(mask).astype(bool)
    T = m.shape[0]
    tokens = [f"t{i}" for i in range(T)] if tokens is None else [_label(t) for t in tokens]
    if len(tokens) != T:
        raise ValueError(f"{len(tokens)} token labels for a {T}x{T} mask")
    fig, ax = plt.subplots(figsize=(1.0 * T + 2.2, 0.8 * T + 1.4), dpi=100)
    for i in range(T):
        for j in range(T):
            ax.add_patch(plt.Rectangle((j, i), 1, 1, facecolor=_ALLOWED if m[i, j] else _BLOCKED,
                                       edgecolor="white", lw=2))
            ax.text(j + 0.5, i + 0.5, "✓" if m[i, j] else "×", ha="center", va="center",
                    fontsize=18, color="#1b7a1b" if m[i, j] else "#999999")
    ax.set_xlim(0, T)
    ax.set_ylim(T, 0)
    ax.set_xticks(np.arange(T) + 0.5, [f"{t}\n(key {j})" for j, t in enumerate(tokens)])
    ax.set_yticks(np.arange(T) + 0.5, [f"(query {i}) {t}" for i, t in enumerate(tokens)])
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title, pad=12)
    fig.tight_layout()
    return fig


def _panel_figure(panels: Mapping[str, torch.Tensor], width: float, height: float):
    """One row of square panels, one per entry of ``panels``."""
    if len(panels) == 0:
        raise ValueError("nothing to draw")
    return plt.subplots(1, len(panels), figsize=(min(10, width * len(panels)), height), dpi=100,
                        squeeze=False)


def plot_weight_panels(panels: Mapping[str, torch.Tensor], tokens: Sequence[str] | None = None):
    """Side-by-side heatmaps of ``(T, T)`` attention-weight matrices, each row sum written beside it.

    Used to compare the correct recipe (mask with ``-inf``, then softmax) with the usual mistakes.
    """
    fig, axes = _panel_figure(panels, width=3.3, height=3.4)
    for ax, (name, w) in zip(axes[0], panels.items()):
        w = _square(w, name)
        T = w.shape[0]
        labels = [f"t{i}" for i in range(T)] if tokens is None else [_label(t) for t in tokens]
        ax.imshow(w, cmap="Blues", vmin=0, vmax=1)
        for i in range(T):
            for j in range(T):
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if w[i, j] > 0.6 else "black")
            ax.text(T - 0.3, i, f"Σ={w[i].sum():.2f}", ha="left", va="center", fontsize=8,
                    color="#1b7a1b" if abs(w[i].sum() - 1) < 1e-4 else "#c0392b")
        ax.set_xticks(range(T), labels, fontsize=8)
        ax.set_yticks(range(T), labels, fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("key")
    axes[0][0].set_ylabel("query")
    fig.tight_layout()
    return fig


def plot_loss_curves(curves: Mapping[str, Sequence[float]], title: str = "Training loss",
                     xlabel: str = "step"):
    """One line per named loss curve (e.g. with and without the causal mask)."""
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=100)
    for name, values in curves.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_position_losses(losses: Mapping[str, Sequence[float]],
                         title: str = "Loss at each position of the window"):
    """Bar groups: for each named model, the mean loss at positions 0 .. T-1."""
    fig, ax = plt.subplots(figsize=(8, 3.4), dpi=100)
    n = len(losses)
    width = 0.8 / max(n, 1)
    for k, (name, values) in enumerate(losses.items()):
        values = _as_numpy(values)
        ax.bar(np.arange(len(values)) + (k - (n - 1) / 2) * width, values, width=width, label=name)
    ax.set_xlabel("position t in the window (the target is the token at t + 1)")
    ax.set_ylabel("mean cross-entropy (nats)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_attention_row(tokens: Sequence[str], weights: torch.Tensor, position: int,
                       title: str | None = None):
    """What position ``position`` may look at, and how much: the static view of the explorer.

    Left: the ``(T, T)`` attention weights with the chosen query row outlined. Right: that row as
    bars; the keys after ``position`` are marked × (masked, weight exactly 0).
    """
    w = _square(weights, "weights")
    T = w.shape[0]
    if len(tokens) != T:
        raise ValueError(f"{len(tokens)} tokens for a {T}x{T} weight matrix")
    if not 0 <= position < T:
        raise ValueError(f"position must be in 0..{T - 1}, got {position}")
    labels = [_label(t) for t in tokens]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100,
                                      gridspec_kw={"width_ratios": [1, 1.6]})
    left.imshow(w, cmap="Blues", vmin=0, vmax=max(float(w.max()), 1e-6))
    left.add_patch(plt.Rectangle((-0.5, position - 0.5), T, 1, fill=False, edgecolor="#d35400", lw=2))
    left.set_xticks(range(T), labels, fontsize=8)
    left.set_yticks(range(T), labels, fontsize=8)
    left.set_xlabel("key (attended to)")
    left.set_ylabel("query")
    left.set_title("all attention weights", fontsize=10)
    row = w[position]
    colors = ["#2e86c1" if j <= position else "#dddddd" for j in range(T)]
    right.bar(range(T), row, color=colors)
    for j in range(T):
        if j > position:
            right.text(j, 0.02, "×", ha="center", va="bottom", color="#999999", fontsize=12)
        else:
            right.text(j, row[j] + 0.01, f"{row[j]:.2f}", ha="center", va="bottom", fontsize=7)
    right.set_xticks(range(T), labels, fontsize=9)
    right.set_ylim(0, 1.08)
    right.set_ylabel("weight")
    right.set_title(f"query {position} ({labels[position]!r}) may see keys 0..{position}; "
                    f"row sums to {row.sum():.2f}", fontsize=10)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def mask_explorer(attention: Callable[[str], tuple[Sequence[str], torch.Tensor]],
                  sentences: Sequence[str]):
    """An ipywidgets explorer: choose a sentence and a position, see the row it may attend to.

    ``attention(sentence)`` returns ``(tokens, weights)`` with ``weights`` of shape ``(T, T)``.
    Returns the widget (display it as a cell's last expression). :func:`plot_attention_row`
    draws the same view as a static figure.
    """
    import ipywidgets as widgets
    from IPython.display import display

    if not sentences:
        raise ValueError("give at least one sentence")
    cache: dict[str, tuple[Sequence[str], torch.Tensor]] = {}

    def lookup(sentence: str):
        if sentence not in cache:
            cache[sentence] = attention(sentence)
        return cache[sentence]

    choose = widgets.Dropdown(options=list(sentences), description="sentence")
    position = widgets.IntSlider(min=0, max=len(lookup(sentences[0])[0]) - 1, value=0,
                                 description="position", continuous_update=False)
    out = widgets.Output()

    def redraw(*_):
        tokens, weights = lookup(choose.value)
        position.max = len(tokens) - 1
        with out:
            out.clear_output(wait=True)
            fig = plot_attention_row(tokens, weights, min(position.value, len(tokens) - 1))
            display(fig)
            plt.close(fig)

    choose.observe(redraw, names="value")
    position.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([choose, position]), out])


def plot_padding_masks(pad: torch.Tensor, combined: torch.Tensor,
                       tokens: Sequence[Sequence[str]] | None = None,
                       title: str = "Causal mask combined with padding"):
    """One panel per sequence: its ``(T, T)`` slice of a ``(B, 1, T, T)`` combined mask.

    ✓ = may attend, × = masked by causality, ▒ = masked because the key is padding; rows that
    allow nothing (possible with left padding) are labelled "no key".
    """
    pad_np = _as_numpy(pad).astype(bool)
    comb = _as_numpy(combined).astype(bool)
    if pad_np.ndim != 2 or comb.ndim != 4 or comb.shape[0] != pad_np.shape[0] or comb.shape[1] != 1:
        raise ValueError(f"expected pad (B, T) and combined (B, 1, T, T), got {pad_np.shape} and {comb.shape}")
    B, T = pad_np.shape
    fig, axes = plt.subplots(1, B, figsize=(min(10, 3.3 * B), 3.6), dpi=100, squeeze=False)
    for b, ax in enumerate(axes[0]):
        labels = ([_label(t) for t in tokens[b]] if tokens is not None else
                  [("tok" if pad_np[b, j] else "pad") for j in range(T)])
        for i in range(T):
            for j in range(T):
                ok = comb[b, 0, i, j]
                color = _ALLOWED if ok else (_PAD if not pad_np[b, j] else _BLOCKED)
                mark = "✓" if ok else ("▒" if not pad_np[b, j] else "×")
                ax.add_patch(plt.Rectangle((j, i), 1, 1, facecolor=color, edgecolor="white", lw=1.5))
                ax.text(j + 0.5, i + 0.5, mark, ha="center", va="center", fontsize=10,
                        color="#1b7a1b" if ok else "#888888")
            if not comb[b, 0, i].any():
                ax.text(T + 0.1, i + 0.5, "no key", va="center", fontsize=7, color="#c0392b")
        ax.set_xlim(0, T)
        ax.set_ylim(T, 0)
        ax.set_xticks(np.arange(T) + 0.5, labels, fontsize=8)
        ax.set_yticks(np.arange(T) + 0.5, labels, fontsize=8)
        ax.xaxis.tick_top()
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_xlabel(f"sequence {b}: {int(pad_np[b].sum())} tokens, {int((~pad_np[b]).sum())} padding",
                      fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_influence(panels: Mapping[str, torch.Tensor], title: str | None = None):
    """Side-by-side heatmaps of ``(T, T)`` influence matrices (``gptlib.masking.future_influence``).

    Entry ``[t, s]``: how much the output at position ``t`` moves when the token at ``s`` changes.
    Each panel has its own colour scale; the dashed line is the diagonal, above it is the future.
    """
    fig, axes = _panel_figure(panels, width=3.6, height=3.6)
    for ax, (name, m) in zip(axes[0], panels.items()):
        m = _square(m, name)
        T = m.shape[0]
        image = ax.imshow(m, cmap="Reds", vmin=0, vmax=max(float(m.max()), 1e-12))
        ax.plot([-0.5, T - 0.5], [-0.5, T - 0.5], color="#555555", linestyle="--", linewidth=1)
        above = float(np.triu(m, k=1).max()) if T > 1 else 0.0
        ax.set_title(f"{name}\nlargest above the diagonal: {above:.2g}", fontsize=10)
        ax.set_xlabel("changed token s")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    axes[0][0].set_ylabel("output position t")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
