"""Course-wide facts kept in one place: the repository url and the notebooks' Colab setup cell.

Hand-written (not exported from a notebook). ``_config.yml`` holds the repository url; every
notebook's first code cell installs gptlib from it on Colab and does nothing elsewhere.
``python -m tools.course configure https://github.com/you/fork`` (``make configure REPO=…``)
rewrites both, so a fork's launch buttons and installs point at the fork.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

from tools import ROOT
CONFIG = ROOT / "_config.yml"
_URL_LINE = re.compile(r"^(\s*url:\s*)(\S+)\s*$", re.M)
_BRANCH_LINE = re.compile(r"^(\s*branch:\s*)(\S+)\s*$", re.M)

__all__ = ["repository_url", "repository_branch", "setup_cell_source", "notebooks", "configure"]


def _repository_block(text: str) -> str:
    m = re.search(r"^repository:\n((?:[ \t]+.*\n?)+)", text, re.M)
    if not m:
        raise ValueError(f"{CONFIG} has no `repository:` section")
    return m.group(1)


def repository_url(config: Path = CONFIG) -> str:
    block = _repository_block(config.read_text(encoding="utf-8"))
    return _URL_LINE.search(block).group(2)


def repository_branch(config: Path = CONFIG) -> str:
    block = _repository_block(config.read_text(encoding="utf-8"))
    return _BRANCH_LINE.search(block).group(2)


def setup_cell_source(url: str | None = None, branch: str | None = None) -> str:
    """The exact first code cell of every chapter notebook."""
    url = url or repository_url()
    branch = branch or repository_branch()
    return (
        "# Setup: on Colab, install gptlib from the course repository; elsewhere this does nothing.\n"
        "import sys\n"
        "if \"google.colab\" in sys.modules:\n"
        f"    %pip install -q \"gptlib[viz,tiktoken] @ git+{url}@{branch}\""
    )


def notebooks(root: Path = ROOT) -> list[Path]:
    """Every notebook of the course: chapters and appendices."""
    return sorted(p for p in (root / "notebooks").glob("*.ipynb"))


def first_code_cell(nb):
    return next((c for c in nb.cells if c.cell_type == "code"), None)


def configure(url: str, branch: str | None = None, root: Path = ROOT) -> list[Path]:
    """Point the book and every notebook's setup cell at ``url`` (e.g. your fork)."""
    if not re.fullmatch(r"https://[\w.-]+/[\w.-]+/[\w.-]+", url):
        raise ValueError(f"{url!r} does not look like https://host/owner/repository")
    config = root / "_config.yml"
    text = config.read_text(encoding="utf-8")
    block = _repository_block(text)
    new_block = _URL_LINE.sub(lambda m: m.group(1) + url, block, count=1)
    if branch:
        new_block = _BRANCH_LINE.sub(lambda m: m.group(1) + branch, new_block, count=1)
    config.write_text(text.replace(block, new_block), encoding="utf-8")
    changed = [config]
    source = setup_cell_source(url, branch or repository_branch(config))
    for path in notebooks(root):
        nb = nbformat.read(path, as_version=4)
        cell = first_code_cell(nb)
        if cell is not None and cell.source.startswith("# Setup: on Colab"):
            cell.source = source
            nbformat.write(nb, path)
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "configure":
        for path in configure(argv[1], argv[2] if len(argv) > 2 else None):
            print(f"updated {path.relative_to(ROOT)}")
        return 0
    if argv == ["setup-cell"]:
        print(setup_cell_source())
        return 0
    print("usage: python -m tools.course configure URL [BRANCH] | setup-cell", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
