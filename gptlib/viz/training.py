"""Pictures for Chapter 6 (training): the learning-rate schedule, loss curves, gradient norms,
overfitting runs side by side, a scaling sweep on log-log axes, and a live loss plot for
interactive notebooks.

Hand-written. Model and training code never import this module; the notebook calls one function
per figure and then ``plt.show()``. A ``History`` is anything with the fields of
:class:`gptlib.training.History` (``step``, ``lr``, ``train_loss``, ``grad_norm``, ``eval_step``,
``val_loss``, ``eval_train_loss``).
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FormatStrFormatter

__all__ = ["plot_lr_schedule", "plot_history", "plot_grad_norms", "plot_overfitting", "plot_scaling",
           "LivePlot", "is_interactive"]


def _smooth(values, window: int) -> np.ndarray:
    """Moving average over ``window`` points (shorter at the start), so noisy losses read well."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_lr_schedule(lr_fn: Callable[..., float], max_lr: float, min_lr: float, warmup_steps: int,
                     max_steps: int, title: str = "Linear warmup, then cosine decay"):
    """Plot ``lr_fn(step, max_lr, min_lr, warmup_steps, max_steps)`` over the whole run, with a
    zoom on the warmup."""
    steps = np.arange(0, int(max_steps * 1.05) + 1)
    lrs = [lr_fn(int(s), max_lr, min_lr, warmup_steps, max_steps) for s in steps]
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=100, gridspec_kw={"width_ratios": [2, 1]})
    ax.plot(steps, lrs, color="#1f77b4")
    for a in (ax, zoom):
        a.axhline(max_lr, color="grey", lw=0.8, ls=":")
        a.axhline(min_lr, color="grey", lw=0.8, ls=":")
        a.axvline(warmup_steps, color="#d62728", lw=0.8, ls="--")
        a.set_xlabel("optimizer step")
    ax.axvline(max_steps, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.text(max_steps, min_lr, "  min_lr", va="bottom", fontsize=8)
    ax.text(0, max_lr, " max_lr", va="bottom", fontsize=8)
    n = min(len(steps), 2 * max(warmup_steps, 1) + 1)
    zoom.plot(steps[:n], lrs[:n], marker=".", color="#1f77b4")
    zoom.set_title("the warmup, step by step")
    fig.tight_layout()
    return fig


def plot_history(history, title: str = "Training run", smooth: int = 20, ax=None):
    """Training loss per step (faint, and smoothed) with the periodic estimates of the train and
    validation loss (markers)."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    if history.train_loss:
        steps = history.step[: len(history.train_loss)]
        ax.plot(steps, history.train_loss, color="#1f77b4", alpha=0.25, lw=0.8)
        ax.plot(steps, _smooth(history.train_loss, smooth), color="#1f77b4", lw=1.2,
                label=f"train (batch loss, {smooth}-step mean)")
    if history.eval_step:
        ax.plot(history.eval_step, history.eval_train_loss, "o-", color="#2ca02c", ms=4, label="train (estimate)")
        ax.plot(history.eval_step, history.val_loss, "s-", color="#d62728", ms=4, label="validation (estimate)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if fig is not None:
        fig.tight_layout()
    return fig if fig is not None else ax.figure


def plot_grad_norms(history, clip: float | None = None, title: str = "Global gradient norm before clipping"):
    """The global gradient norm at every step (log scale) and the clipping threshold."""
    fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
    steps = history.step[: len(history.grad_norm)]
    ax.plot(steps, history.grad_norm, color="#9467bd", lw=0.8)
    if clip:
        ax.axhline(clip, color="#d62728", ls="--", lw=1, label=f"clip at {clip:g}")
        clipped = np.mean(np.asarray(history.grad_norm) > clip) if history.grad_norm else 0.0
        ax.set_title(f"{title} ({clipped:.0%} of steps clipped)")
        ax.legend(fontsize=8)
    else:
        ax.set_title(title)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("‖g‖₂")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def plot_overfitting(runs: Mapping[str, object], title: str = "Train vs validation loss"):
    """One panel per run: the train and validation estimates, with the gap at the end."""
    fig, axes = plt.subplots(1, len(runs), figsize=(min(10, 3.4 * len(runs)), 3.3), dpi=100,
                             sharey=True, squeeze=False)
    for ax, (label, h) in zip(axes[0], runs.items()):
        ax.plot(h.eval_step, h.eval_train_loss, "o-", ms=3, color="#2ca02c", label="train")
        ax.plot(h.eval_step, h.val_loss, "s-", ms=3, color="#d62728", label="validation")
        gap = h.val_loss[-1] - h.eval_train_loss[-1]
        ax.set_title(f"{label}\nfinal gap {gap:+.2f}, best val {min(h.val_loss):.2f}", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss (nats per token)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_scaling(sizes, losses, exponent: float, intercept: float, labels=None,
                 title: str = "Loss against model size, same number of training tokens"):
    """Loss against non-embedding parameters on log-log axes, one marker per model (annotated with
    ``labels``, e.g. the widths), and the fitted power law ``exp(intercept) * N ** exponent``."""
    sizes, losses = np.asarray(sizes, dtype=float), np.asarray(losses, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(sizes, losses, "o", color="#1f77b4", label="trained models")
    grid = np.geomspace(sizes.min() / 1.5, sizes.max() * 1.5, 50)
    ax.plot(grid, np.exp(intercept) * grid ** exponent, "--", color="#d62728",
            label=f"fit: loss ∝ N$^{{{exponent:.3f}}}$")
    for n, loss, label in zip(sizes, losses, labels if labels is not None else []):
        ax.annotate(str(label), (n, loss), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FormatStrFormatter("%.1f"))                   # 2.6, not 2.6 x 10^0
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("validation loss (nats per character)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def is_interactive() -> bool:
    """True in a notebook a person is looking at (JupyterLab/Notebook, VS Code, Colab, Kaggle),
    False when a notebook is executed in batch (nbval, nbconvert, the book build) or in a terminal.
    ``GPTLIB_LIVE=1`` / ``0`` overrides.

    A notebook kernel's shell is a ``ZMQInteractiveShell`` or, in hosted notebooks (Colab's
    ``google.colab._shell.Shell``, Kaggle's), a subclass of it under another name: the test is
    ``isinstance``, never the class name. A batch run uses the same kernel, so the front end is
    told apart by what it leaves behind (Colab's module, Kaggle's, Jupyter's or VS Code's variables).
    """
    forced = os.environ.get("GPTLIB_LIVE")
    if forced is not None:
        return forced.strip() not in ("", "0", "false", "no")
    try:
        from IPython import get_ipython
        from ipykernel.zmqshell import ZMQInteractiveShell
    except ImportError:
        return False
    if not isinstance(get_ipython(), ZMQInteractiveShell):
        return False
    return ("google.colab" in sys.modules or "KAGGLE_KERNEL_RUN_TYPE" in os.environ
            or "JPY_SESSION_NAME" in os.environ or "VSCODE_PID" in os.environ)


class LivePlot:
    """A training callback that redraws the loss curves after every evaluation.

    Pass it to ``train(..., callbacks=[LivePlot()])``. It draws only when :func:`is_interactive`
    (a batch run keeps its output clean; draw a static figure with :func:`plot_history` after
    training instead).
    """

    def __init__(self, title: str = "Training (live)", enabled: bool | None = None, smooth: int = 20):
        self.title, self.smooth = title, smooth
        self.enabled = is_interactive() if enabled is None else enabled
        self.handle = None

    def __call__(self, step, history, model=None) -> None:
        if not self.enabled:
            return
        from IPython.display import display
        fig = plot_history(history, title=f"{self.title}: step {step}", smooth=self.smooth)
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        plt.close(fig)
