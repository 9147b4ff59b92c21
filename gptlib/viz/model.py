"""Pictures for Chapter 5 (the transformer block and the GPT model).

Hand-written. Model code never imports this module; the notebook calls one function per figure.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

__all__ = ["plot_activations", "plot_layernorm_effect", "plot_per_layer", "plot_parameter_breakdown",
           "plot_loss_curves", "plot_token_losses", "plot_lines"]


def plot_activations(lo: float = -4.0, hi: float = 4.0):
    """ReLU, exact GELU and GPT-2's tanh GELU, with their slopes."""
    x = torch.linspace(lo, hi, 801, requires_grad=True)
    curves = {
        "ReLU": F.relu,
        "GELU (exact, erf)": lambda t: F.gelu(t),
        "GELU (tanh, GPT-2)": lambda t: F.gelu(t, approximate="tanh"),
    }
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for (label, fn), style in zip(curves.items(), ["-", "-", "--"]):
        y = fn(x)
        (g,) = torch.autograd.grad(y.sum(), x)
        ax1.plot(x.detach(), y.detach(), style, label=label)
        ax2.plot(x.detach(), g, style, label=label)
    ax1.set(title="activation", xlabel="x")
    ax2.set(title="slope (derivative)", xlabel="x")
    for ax in (ax1, ax2):
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_layernorm_effect(before: torch.Tensor, after: torch.Tensor, n_tokens: int = 4):
    """Values of a few token vectors before and after LayerNorm, one colour per token."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), dpi=100, sharey=True)
    for ax, data, title in zip(axes, (before, after), ("before LayerNorm", "after LayerNorm")):
        for t in range(min(n_tokens, data.shape[0])):
            v = data[t].detach().float()
            ax.hist(v.numpy(), bins=30, alpha=0.5,
                    label=f"token {t}: mean {v.mean():+.2f}, std {v.std(unbiased=False):.2f}")
        ax.set(title=title, xlabel="feature value")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("count")
    fig.tight_layout()
    return fig


def plot_per_layer(series: Mapping[str, Sequence[float]], title: str, ylabel: str, log: bool = True):
    """One line per variant, one point per layer (e.g. gradient norm per layer at init)."""
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    for label, values in series.items():
        ax.plot(range(len(values)), list(values), marker="o", ms=3, label=label)
    ax.set(title=title, xlabel="layer (0 = nearest the input)", ylabel=ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_parameter_breakdown(table: Mapping[str, Mapping[str, int]]):
    """Stacked bars: the share of each parameter group in each model."""
    names = list(table)
    groups = [g for g in next(iter(table.values())) if any(table[n][g] for n in names)]
    fig, ax = plt.subplots(figsize=(9, 3.4), dpi=100)
    left = [0.0] * len(names)
    for g in groups:
        shares = [100 * table[n][g] / sum(table[n].values()) for n in names]
        ax.barh(names, shares, left=left, label=g)
        for i, (s, l) in enumerate(zip(shares, left)):
            if s > 6:
                ax.text(l + s / 2, i, f"{s:.0f}%", ha="center", va="center", fontsize=8, color="white")
        left = [l + s for l, s in zip(left, shares)]
    ax.set(xlabel="share of parameters (%)", xlim=(0, 100), title="Where GPT-2's parameters sit")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=len(groups))
    fig.tight_layout()
    return fig


def plot_loss_curves(curves: Mapping[str, Sequence[float]], title: str, reference: float | None = None):
    """Training loss per step for several runs; an optional horizontal reference line."""
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    for label, losses in curves.items():
        ax.plot(range(len(losses)), list(losses), label=label)
    if reference is not None:
        ax.axhline(reference, color="grey", ls="--", lw=1, label=f"ln(vocab) = {reference:.2f}")
    ax.set(title=title, xlabel="step", ylabel="loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_token_losses(losses: Mapping[str, torch.Tensor], reference: float):
    """Histograms of per-token losses of untrained models, with ln(vocab_size) marked."""
    fig, ax = plt.subplots(figsize=(8, 3.4), dpi=100)
    for label, values in losses.items():
        ax.hist(values.detach().float().numpy(), bins=60, alpha=0.6, label=label)
    ax.axvline(reference, color="black", ls="--", lw=1, label=f"ln(vocab_size) = {reference:.2f}")
    ax.set(title="Loss of each token, untrained model", xlabel="cross-entropy (nats)", ylabel="tokens")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig



def plot_lines(x: Sequence[float], series: Mapping[str, Sequence[float]], title: str, xlabel: str,
               ylabel: str, log: bool = False, marker: str | None = "o"):
    """One line per variant against a shared x axis (e.g. gradient norm against depth);
    ``marker=None`` draws plain lines (long curves such as losses per step)."""
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    for label, values in series.items():
        ax.plot(list(x), list(values), marker=marker, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
