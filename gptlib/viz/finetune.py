"""Pictures for Chapter 8 (fine-tuning).

Hand-written. Model code never imports this module; the notebook calls one function per figure.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import torch

from gptlib.model import IGNORE_INDEX

__all__ = ["plot_losses", "plot_confusion", "plot_results", "plot_loss_mask", "plot_forgetting"]


def _smooth(values: Sequence[float], k: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= k:
            total -= values[i - k]
        out.append(total / min(i + 1, k))
    return out


def plot_losses(curves: Mapping[str, Sequence[float]], title: str = "training loss",
                smooth: int = 5, ylabel: str = "loss"):
    """One (smoothed) loss curve per run, against the optimizer step."""
    fig, ax = plt.subplots(figsize=(8, 3.4), dpi=100)
    for name, values in curves.items():
        ax.plot(_smooth(list(values), smooth), label=name)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_confusion(cm: torch.Tensor, labels: Sequence[str], title: str = "confusion matrix"):
    """Counts per (true class, predicted class), with each cell's count written in it."""
    cm = torch.as_tensor(cm)
    fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=100)
    ax.imshow(cm.numpy(), cmap="Blues")
    n = len(labels)
    ax.set_xticks(range(n), labels, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    top = cm.max().item() or 1
    for i in range(n):
        for j in range(n):
            v = cm[i, j].item()
            ax.text(j, i, str(v), ha="center", va="center", fontsize=9,
                    color="white" if v > 0.6 * top else "black")
    fig.tight_layout()
    return fig


def plot_results(rows: Sequence[Mapping], chance: float | None = None):
    """Held-out accuracy of each run (bars), labelled with the share of parameters it trained."""
    fig, ax = plt.subplots(figsize=(9, 3.4), dpi=100)
    names = [r["run"] for r in rows]
    accs = [100 * r["accuracy"] for r in rows]
    bars = ax.bar(range(len(rows)), accs, color="tab:blue")
    for bar, r in zip(bars, rows):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 1,
                f"{100 * r['accuracy']:.1f}%\n({100 * r['trainable_fraction']:.1f}% trained)",
                ha="center", va="bottom", fontsize=7)
    if chance is not None:
        ax.axhline(100 * chance, color="grey", ls="--", lw=1, label="chance")
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xticks(range(len(rows)), names, fontsize=8, rotation=15)
    ax.set(ylabel="held-out accuracy (%)", ylim=(0, 115), title="held-out accuracy by method")
    fig.tight_layout()
    return fig


def plot_loss_mask(tokens: Sequence[str], targets: Sequence[int], width: int = 48):
    """The characters of a prompt + response, each box coloured by whether its target is learned
    (blue) or masked with ``IGNORE_INDEX`` (-100, grey). Box t shows input token t; its target is token t + 1."""
    rows = (len(tokens) + width - 1) // width
    fig, ax = plt.subplots(figsize=(10, 0.45 * rows + 0.8), dpi=100)
    for t, (tok, tgt) in enumerate(zip(tokens, targets)):
        r, c = divmod(t, width)
        colour = "#d0d0d0" if tgt == IGNORE_INDEX else "#7fb2e5"
        ax.add_patch(plt.Rectangle((c, -r), 0.95, 0.9, color=colour))
        ax.text(c + 0.47, -r + 0.45, {"\n": "⏎", " ": "␣"}.get(tok, tok), ha="center",
                va="center", fontsize=8, family="monospace")
    ax.set_xlim(0, width)
    ax.set_ylim(-rows + 0.9, 1)
    ax.axis("off")
    ax.set_title("grey: target masked (-100, prompt)   blue: target learned (response)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_forgetting(losses: Mapping[str, float], before: str):
    """Held-out language-model loss of each run's backbone (horizontal bars), the pretrained
    model's (``losses[before]``) as a dashed line, each bar labelled with its change."""
    names = list(losses)
    base = losses[before]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(names) + 1.2), dpi=100)
    ax.barh(range(len(names)), [losses[n] for n in names],
            color=["grey" if n == before else "tab:orange" for n in names])
    for i, n in enumerate(names):
        if n != before:
            ax.text(losses[n], i, f" {losses[n] - base:+.3f}", va="center", fontsize=8)
    ax.axvline(base, color="black", ls="--", lw=1)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    lo, hi = min(losses.values()), max(losses.values())
    ax.set_xlim(max(0.0, lo - 0.3 * (hi - lo + 0.05)), hi + 0.3 * (hi - lo + 0.05))
    ax.set(xlabel="held-out LM loss (nats per character)",
           title="forgetting: the language-model loss after each fine-tuning mode")
    fig.tight_layout()
    return fig
