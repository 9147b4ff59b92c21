"""Write student versions of the chapter notebooks (``make student``).

Hand-written (not exported from a notebook). In the instructor notebooks each exercise's
solution sits between a ``### BEGIN SOLUTION`` line and a ``### END SOLUTION`` line (the
nbgrader / otter-grader convention). The student version replaces those lines, markers included,
with ``raise NotImplementedError`` at the same indentation, clears every output, unfolds the
exercise cell, and writes the chapter number into the notebook's metadata (``{"gptlib":
{"chapter": N}}``), which is how ``tools.grade`` knows a submission's chapter whatever its file is
called. The notebook still runs top to bottom: the check reports "not done" and the rest of
the chapter uses gptlib's reference implementation.

    python -m tools.student [--out _build/student] [NOTEBOOK ...]
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

from tools import ROOT
from tools.course import CHAPTER_KEY, chapter_number

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
# The marker lines, matched here once for all the tooling (export drops them, build_track counts
# what lies between them). BEGIN_RE captures the indentation the placeholder takes.
BEGIN_RE = re.compile(r"^(\s*)### BEGIN SOLUTION\s*$")
END_RE = re.compile(r"^\s*### END SOLUTION\s*$")
_FOLD_TAGS = {"hide-input", "hide-cell", "remove-input"}

__all__ = ["strip_solutions", "solution_blocks", "refill_solutions", "student_notebook",
           "refilled_notebook", "write_student_notebooks"]
PLACEHOLDER = "raise NotImplementedError  # your code here"


def strip_solutions(source: str, placeholder: str = PLACEHOLDER) -> str:
    """Replace every solution block in ``source`` with ``placeholder`` (same indentation)."""
    out, inside = [], False
    for lineno, line in enumerate(source.splitlines(), 1):
        begin = BEGIN_RE.match(line)
        if begin:
            if inside:
                raise ValueError(f"line {lineno}: {BEGIN} inside another solution block")
            inside = True
            out.append(begin.group(1) + placeholder)
            continue
        if END_RE.match(line):
            if not inside:
                raise ValueError(f"line {lineno}: {END} without a {BEGIN}")
            inside = False
            continue
        if not inside:
            out.append(line)
    if inside:
        raise ValueError(f"a {BEGIN} block is never closed by {END}")
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


def solution_blocks(source: str) -> list[list[str]]:
    """The lines of each solution block in ``source``, markers included, in order."""
    blocks, current = [], None
    for line in source.splitlines():
        if BEGIN_RE.match(line):
            current = [line]
        elif current is not None:
            current.append(line)
            if END_RE.match(line):
                blocks.append(current)
                current = None
    return blocks


def refill_solutions(student_source: str, blocks: list[list[str]]) -> str:
    """Put ``blocks`` (from :func:`solution_blocks`) back in place of the placeholders of a student
    cell, in order: what a learner's notebook holds once every exercise is solved as the reference."""
    out, blocks = [], list(blocks)
    for line in student_source.splitlines():
        if line.strip() == PLACEHOLDER:
            if not blocks:
                raise ValueError("more placeholders than solutions")
            out.extend(blocks.pop(0))
        else:
            out.append(line)
    if blocks:
        raise ValueError(f"{len(blocks)} solutions left over: the cells do not correspond")
    return "\n".join(out) + ("\n" if student_source.endswith("\n") else "")


def refilled_notebook(student_nb, instructor_nb):
    """``student_nb`` with every exercise solved as in ``instructor_nb`` (cells matched by id)."""
    nb = copy.deepcopy(student_nb)
    solutions = {c.id: solution_blocks(c.source) for c in instructor_nb.cells if c.cell_type == "code"}
    for cell in nb.cells:
        if cell.cell_type == "code" and PLACEHOLDER in cell.source:
            cell.source = refill_solutions(cell.source, solutions[cell.id])
    return nb


def student_notebook(nb, chapter: int | None = None):
    """A copy of notebook ``nb`` with solutions removed and outputs cleared; ``chapter`` (default:
    the one ``nb``'s metadata names) goes into the copy's metadata."""
    nb = copy.deepcopy(nb)
    if chapter is not None:
        nb.metadata.setdefault(CHAPTER_KEY, {})["chapter"] = chapter
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if BEGIN in cell.source:
            cell.source = strip_solutions(cell.source)
            tags = [t for t in cell.metadata.get("tags", []) if t not in _FOLD_TAGS]
            cell.metadata["tags"] = tags
        cell.outputs = []
        cell.execution_count = None
    return nb


def write_student_notebooks(notebooks: list[Path], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        target = out_dir / path.name
        nbformat.write(student_notebook(nb, chapter_number(path)), target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write student versions of the notebooks.")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "student")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in write_student_notebooks(notebooks, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
