"""Pictures and widgets for Chapter 1 (tokenization). Hand-written; needs matplotlib/ipywidgets.

* :func:`show_pieces` colours a text by its pieces (tokens or pre-tokenization chunks) as HTML;
* :func:`plot_merge_steps` draws a toy string after several BPE merges (the static twin of
  :func:`merge_stepper`, an ipywidgets slider that steps through merges one at a time);
* :func:`plot_compression` draws bytes per token against vocabulary size.
"""
from __future__ import annotations

import html
from typing import Sequence

import matplotlib.pyplot as plt

__all__ = ["piece_text", "show_pieces", "plot_merge_steps", "merge_stepper", "plot_compression"]

_PALETTE = ["#fde2a7", "#b9e4c9", "#c6d8f5", "#f5c6d8", "#e0d0f5", "#d6eff2", "#f8d3b5", "#e5e5b0"]


def piece_text(piece: bytes | str) -> str:
    """A printable form of one token: its text, or its bytes when they are not whole UTF-8."""
    if isinstance(piece, str):
        return piece
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"\\x{b:02x}" for b in piece)


def _visible(s: str) -> str:
    """Make spaces, newlines and tabs visible inside a coloured box."""
    return s.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5").replace("\r", "\u240d")


def show_pieces(pieces: Sequence[bytes | str], title: str | None = None, ids: Sequence[int] | None = None):
    """Return an HTML view of ``pieces`` in alternating colours (spaces shown as ␣, newlines ↵).

    With ``ids``, hovering a piece shows its token id.
    """
    from IPython.display import HTML

    spans = []
    for k, piece in enumerate(pieces):
        text = piece_text(piece)
        tip = f' title="id {ids[k]}"' if ids is not None else ""
        box = (f'<span{tip} style="background:{_PALETTE[k % len(_PALETTE)]};border-radius:3px;'
               f'padding:1px 1px;margin:0 1px;">{html.escape(_visible(text))}</span>')
        spans.append(box + ("<br>" if text.endswith("\n") else ""))
    head = f"<div style='font-weight:bold;margin-bottom:4px'>{html.escape(title)}</div>" if title else ""
    body = ("<div style='font-family:monospace;line-height:1.9;white-space:normal;"
            "word-break:break-all;color:#111'>" + "".join(spans) + "</div>")
    return HTML(head + body + f"<div style='color:#555;font-size:90%'>{len(pieces)} pieces</div>")


def _draw_row(ax, y: float, pieces: Sequence[str], label: str) -> None:
    x = 0.0
    for k, piece in enumerate(pieces):
        w = max(len(piece), 1)
        ax.add_patch(plt.Rectangle((x + 0.05, y - 0.4), w - 0.1, 0.8, facecolor=_PALETTE[k % len(_PALETTE)],
                                   edgecolor="#444", linewidth=0.8))
        ax.text(x + w / 2, y, _visible(piece), ha="center", va="center", family="monospace", fontsize=10)
        x += w
    ax.text(-0.5, y, label, ha="right", va="center", fontsize=9)


def plot_merge_steps(steps: Sequence[tuple[str, Sequence[str]]], title: str = "BPE merges, one per row"):
    """Draw each ``(label, pieces)`` of ``steps`` as a row of boxes, one box per token."""
    width = max(sum(max(len(p), 1) for p in pieces) for _, pieces in steps)
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(steps) + 0.8), dpi=100)
    for row, (label, pieces) in enumerate(steps):
        _draw_row(ax, -row, pieces, label)
    ax.set_xlim(-9, width + 0.5)
    ax.set_ylim(-len(steps) + 0.4, 0.6)
    ax.axis("off")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def merge_stepper(steps: Sequence[tuple[str, Sequence[str]]]):
    """An ipywidgets slider that shows the string after merge 0, 1, 2, ... (one row at a time)."""
    import ipywidgets as widgets
    from IPython.display import display

    out = widgets.Output()
    slider = widgets.IntSlider(value=0, min=0, max=len(steps) - 1, description="merges")

    def draw(change=None):
        with out:
            out.clear_output(wait=True)
            label, pieces = steps[slider.value]
            display(show_pieces(pieces, title=label))

    slider.observe(draw, names="value")
    draw()
    return widgets.VBox([slider, out])


def plot_compression(vocab_sizes: Sequence[int], bytes_per_token: Sequence[float],
                     references: dict[str, tuple[int, float]] | None = None,
                     title: str = "Compression against vocabulary size"):
    """Bytes per token (higher = shorter sequences) against vocabulary size, log-scaled x."""
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    ax.plot(vocab_sizes, bytes_per_token, "o-", label="BPE trained on Tiny Shakespeare")
    for name, (v, bpt) in (references or {}).items():
        ax.plot([v], [bpt], "s", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("vocabulary size")
    ax.set_ylabel("bytes per token (held-out text)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig
