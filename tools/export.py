"""Export the chapter notebooks into gptlib (``make export``) and check they are in sync.

Hand-written (not exported from a notebook). The notebooks are the source of truth: cells that
start with ``#| export`` go into the module named by the notebook's ``#| default_exp`` cell,
through nbdev's ``nb_export``. A notebook may own more than one module: each ``#| default_exp``
cell starts a new section, and the ``#| export`` cells after it go into that module.

    python -m tools.export            # rewrite gptlib/<module>.py from notebooks/*.ipynb
    python -m tools.export --check    # exit 1 and name the modules that differ
"""
from __future__ import annotations

import argparse
import copy
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat

from tools import ROOT
_DIRECTIVE = re.compile(r"^\s*#\|\s*(\w+)(.*)$")

__all__ = ["chapter_notebooks", "module_sections", "export_notebook", "export_all", "out_of_sync"]


def chapter_notebooks(root: Path = ROOT) -> list[Path]:
    """The chapter notebooks, in order (``notebooks/NN_topic.ipynb``)."""
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _directives(cell) -> list[tuple[str, str]]:
    found = []
    for line in cell.source.splitlines():
        m = _DIRECTIVE.match(line)
        if not m:
            if line.strip():
                break
            continue
        found.append((m.group(1), m.group(2).strip()))
    return found


def module_sections(nb) -> dict[str, list[int]]:
    """Map each module a notebook exports to the indices of its ``#| export`` cells."""
    sections: dict[str, list[int]] = {}
    current = None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for name, arg in _directives(cell):
            if name == "default_exp":
                current = arg
                sections.setdefault(current, [])
            elif name in ("export", "exports", "exporti"):
                if arg:
                    raise ValueError(f"cell {i}: use a `#| default_exp {arg}` cell before the "
                                     f"cells for {arg}, not `#| {name} {arg}`")
                if current is None:
                    raise ValueError(f"cell {i}: `#| {name}` before any `#| default_exp` cell")
                sections[current].append(i)
    return sections


def export_notebook(notebook: Path, lib_path: Path) -> list[Path]:
    """Export one notebook into ``lib_path``; return the module files written."""
    from nbdev.export import nb_export

    nb = nbformat.read(notebook, as_version=4)
    written = []
    sections = module_sections(nb)
    for module, cells in sections.items():
        keep = set(cells)
        part = copy.deepcopy(nb)
        part.cells = []
        for i, cell in enumerate(nb.cells):
            names = [n for n, _ in _directives(cell)] if cell.cell_type == "code" else []
            if "default_exp" in names:
                continue
            if any(n in ("export", "exports", "exporti") for n in names) and i not in keep:
                continue
            part.cells.append(cell)
        header = nbformat.v4.new_code_cell(f"#| default_exp {module}")
        part.cells.insert(0, header)
        # nb_export names the notebook in each module's header, relative to lib_path: write the
        # section beside the real one, under a temporary name, then rename the references.
        with tempfile.TemporaryDirectory(dir=notebook.parent) as tmp:
            tmp_nb = Path(tmp) / notebook.name
            nbformat.write(part, tmp_nb)
            out = Path(tmp) / "lib"
            out.mkdir()
            nb_export(str(tmp_nb), lib_path=str(out))
            produced = out / f"{module.replace('.', '/')}.py"
            text = produced.read_text(encoding="utf-8")
            rel_tmp_from_out = Path("..") / notebook.name
            rel_real = Path(_relpath(notebook, lib_path / produced.relative_to(out)))
            text = text.replace(f"File to edit: {rel_tmp_from_out}.", f"File to edit: {rel_real}.")
            text = text.replace(f"# %% {rel_tmp_from_out} ", f"# %% {rel_real} ")
            target = lib_path / produced.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not text.endswith("\n"):
                text += "\n"
            target.write_text(text, encoding="utf-8")
            written.append(target)
    return written


def _relpath(path: Path, start_file: Path) -> str:
    import os
    return os.path.relpath(path.resolve(), start_file.resolve().parent)


def export_all(root: Path = ROOT, lib_path: Path | None = None) -> list[Path]:
    """Export every chapter notebook under ``root`` into ``lib_path`` (default: root/gptlib)."""
    lib_path = lib_path or root / "gptlib"
    written = []
    for nb in chapter_notebooks(root):
        written += export_notebook(nb, lib_path)
    return written


def out_of_sync(root: Path = ROOT) -> list[str]:
    """Modules whose committed text differs from a fresh export (empty when all agree)."""
    with tempfile.TemporaryDirectory() as tmp:
        mirror = Path(tmp)
        shutil.copytree(root / "notebooks", mirror / "notebooks")
        (mirror / "gptlib").mkdir()
        fresh = export_all(mirror, mirror / "gptlib")
        problems = []
        seen: set[str] = set()
        for path in fresh:
            rel = path.relative_to(mirror)
            committed = root / rel
            if str(rel) in seen:
                problems.append(f"{rel} is exported by more than one notebook")
            seen.add(str(rel))
            if not committed.exists():
                problems.append(f"{rel} is missing: run `make export`")
            elif not filecmp.cmp(path, committed, shallow=False):
                problems.append(f"{rel} differs from its notebook: run `make export`")
        return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report modules out of sync")
    args = parser.parse_args(argv)
    if args.check:
        problems = out_of_sync()
        for p in problems:
            print(p)
        return 1 if problems else 0
    for path in export_all():
        print(f"exported {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
