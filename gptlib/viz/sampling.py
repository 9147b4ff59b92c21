"""Pictures and the sampling playground of Chapter 7 (matplotlib and ipywidgets live here).

Hand-written. The notebook computes every number; these helpers only draw them.
"""
from __future__ import annotations

import html
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import torch

__all__ = ["show_token", "plot_filters", "plot_temperature_sweep", "plot_repetition",
           "samples_table", "plot_cache_timing", "playground"]


def show_token(text: str) -> str:
    """A printable label for a token: newlines and spaces made visible."""
    return text.replace("\n", "\\n").replace(" ", "␣") if text.strip() == "" or "\n" in text else text


def plot_filters(panels: Sequence[tuple[str, torch.Tensor]], labels: Sequence[str], top: int = 20,
                 ncols: int = 3):
    """Bar charts of one next-token distribution reshaped several ways.

    ``panels`` are ``(title, probs)`` pairs, probs a 1-D tensor over the vocabulary; the first
    is the model's own distribution and fixes the order of the ``top`` tokens shown in every
    panel. ``labels[i]`` is the text of token i. Removed tokens (probability 0) are drawn as a
    grey tick at zero.
    """
    base = panels[0][1]
    order = torch.argsort(base, descending=True)[:top].tolist()
    names = [show_token(labels[i]) for i in order]
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(10, 2.6 * nrows), dpi=100, sharey=True,
                             squeeze=False)
    for ax, (title, probs) in zip(axes.flat, panels):
        p = probs[order].tolist()
        kept = int((probs > 0).sum())
        colors = ["tab:blue" if v > 0 else "lightgrey" for v in p]
        ax.bar(range(len(order)), p, color=colors)
        ax.scatter([i for i, v in enumerate(p) if v == 0], [0] * sum(v == 0 for v in p),
                   marker="_", color="grey")
        ax.set_title(f"{title}\n{kept} of {len(probs)} tokens kept", fontsize=9)
        ax.set_xticks(range(len(order)), names, fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("probability")
    fig.tight_layout()
    return fig


def plot_temperature_sweep(temperatures: Sequence[float], top_prob: Sequence[float],
                           entropy_bits: Sequence[float]):
    """Probability of the most likely token and entropy of the distribution against temperature."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3), dpi=100)
    a.plot(temperatures, top_prob, "o-")
    a.set_xscale("log")
    a.set_xlabel("temperature T")
    a.set_ylabel("p(most likely token)")
    a.set_ylim(0, 1.05)
    b.plot(temperatures, entropy_bits, "o-", color="tab:orange")
    b.set_xscale("log")
    b.set_xlabel("temperature T")
    b.set_ylabel("entropy (bits)")
    fig.tight_layout()
    return fig


def plot_repetition(settings: Sequence[str], repeated: Sequence[float], real_words: Sequence[float],
                    n: int):
    """Two bar charts per setting: the fraction of a sample's n-grams already seen earlier in
    it (repetition), and the fraction of its words that are real words (spelling)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 2.8), dpi=100, sharey=True)
    panels = [(repeated, f"fraction of {n}-character chunks seen before", "tab:purple"),
              (real_words, "fraction of words found in the training text", "tab:green")]
    for ax, (values, label, color) in zip(axes, panels):
        ax.barh(range(len(settings)), values, color=color)
        ax.set_xlim(0, 1.1)
        ax.set_xlabel(label)
        for i, v in enumerate(values):
            ax.text(v + 0.01, i, f"{v:.2f}", va="center", fontsize=9)
    axes[0].set_yticks(range(len(settings)), settings)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig


def samples_table(rows: Sequence[tuple[str, str]]):
    """An HTML table of (setting, sample text) rows, the text shown as written."""
    from IPython.display import HTML
    cells = "".join(
        f"<tr><td style='white-space:nowrap;vertical-align:top;text-align:left'><code>"
        f"{html.escape(setting)}</code></td><td style='text-align:left'><pre style='margin:0;"
        f"white-space:pre-wrap'>{html.escape(text)}</pre></td></tr>"
        for setting, text in rows)
    return HTML(f"<table><tr><th>setting</th><th>sample</th></tr>{cells}</table>")


def plot_cache_timing(lengths: Sequence[int], seconds_plain: Sequence[float],
                      seconds_cache: Sequence[float]):
    """Wall time to generate n tokens with and without the KV cache, and their ratio."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3), dpi=100)
    a.plot(lengths, seconds_plain, "o-", label="no cache")
    a.plot(lengths, seconds_cache, "o-", label="KV cache")
    a.set_xlabel("new tokens")
    a.set_ylabel("seconds")
    a.legend()
    b.plot(lengths, [p / c for p, c in zip(seconds_plain, seconds_cache)], "o-", color="tab:green")
    b.set_xlabel("new tokens")
    b.set_ylabel("speed-up (no cache / cache)")
    b.set_ylim(bottom=0)
    fig.tight_layout()
    return fig


def playground(model, encode: Callable[[str], list], decode: Callable[[list], str],
               prompt: str = "ROMEO:\n", max_new_tokens: int = 200):
    """An ipywidgets sampling playground: prompt, temperature, top-k, top-p, length and seed;
    the output is streamed into the box token by token."""
    import ipywidgets as w
    from IPython.display import display

    from gptlib.sampling import stream

    text = w.Textarea(value=prompt, description="prompt", layout=w.Layout(width="95%"))
    temperature = w.FloatSlider(value=0.8, min=0.0, max=2.0, step=0.05, description="temperature")
    top_k = w.IntSlider(value=0, min=0, max=model.config.vocab_size, description="top-k (0: off)")
    top_p = w.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="top-p")
    length = w.IntSlider(value=max_new_tokens, min=1, max=1000, description="new tokens")
    seed = w.IntText(value=0, description="seed")
    button = w.Button(description="Generate", button_style="primary")
    out = w.Textarea(layout=w.Layout(width="95%", height="260px"))

    def run(_=None):
        try:
            ids = encode(text.value)
        except (KeyError, ValueError) as err:
            out.value = f"the prompt cannot be encoded ({err}): use characters the model knows"
            return
        if not ids:
            out.value = "(the prompt is empty: type at least one character)"
            return
        g = torch.Generator().manual_seed(int(seed.value))
        out.value = text.value
        try:
            for tok in stream(model, ids, length.value, temperature=temperature.value,
                              top_k=top_k.value or None, top_p=top_p.value, generator=g):
                out.value += decode([tok])
        except ValueError as err:
            out.value = f"error: {err}"

    button.on_click(run)
    ui = w.VBox([text, w.HBox([temperature, top_k]), w.HBox([top_p, length]),
                 w.HBox([seed, button]), out])
    display(ui)
    return ui
