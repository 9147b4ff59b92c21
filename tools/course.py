"""Course-wide facts kept in one place: the repository url, the notebooks' Colab setup cell, their
Colab badges and the chapter metadata the grader reads.

Hand-written (not exported from a notebook). ``_config.yml`` holds the repository url; every
notebook's first code cell does nothing where this course's gptlib is installed, and elsewhere
installs the release named by pyproject.toml's version (the tag ``v<version>``) from that url.
``python -m tools.course configure https://github.com/you/fork`` (``make configure REPO=…``)
rewrites both, so a fork's launch buttons and installs point at the fork, and stamps every
notebook (:func:`stamp`): the chapter number in its metadata (``{"gptlib": {"chapter": N}}``,
which ``tools.grade`` reads) and, under the title, two Colab badges: "Exercises" (the student
version, on the ``student`` branch that the student workflow publishes) and "With solutions"
(the repository's branch). ``python -m tools.course stamp`` stamps with the current url; it is
idempotent.
"""
from __future__ import annotations

import copy
import json
import re
import sys
import tomllib
from pathlib import Path

import nbformat

from tools import ROOT
CONFIG = ROOT / "_config.yml"
_URL_LINE = re.compile(r"^(\s*url:\s*)(\S+)\s*$", re.M)
_BRANCH_LINE = re.compile(r"^(\s*branch:\s*)(\S+)\s*$", re.M)

__all__ = ["repository_url", "repository_branch", "setup_cell_source", "notebooks", "configure",
           "CHAPTER_KEY", "STUDENT_BRANCH", "chapter_number", "badges", "stamp_notebook", "stamp"]
CHAPTER_KEY = "gptlib"        # notebook metadata: {"gptlib": {"chapter": 3}}
STUDENT_BRANCH = "student"    # where .github/workflows/student.yml publishes the student notebooks
_BADGE_LINE = re.compile(r"^\[!\[Exercises in Colab\].*$", re.M)


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


DISTRIBUTION = "build-a-gpt"   # the name pip installs; the import name stays `gptlib`


def release() -> str:
    """The version in pyproject.toml, which ``gptlib.__version__`` repeats: the release that every
    notebook's setup cell installs, as the git tag ``v<version>``."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def setup_cell_source(url: str | None = None, version: str | None = None) -> str:
    """The exact first code cell of every notebook: where this course's gptlib is importable it
    does nothing; otherwise (Colab, Kaggle, a JupyterHub) it removes any other package that is
    imported as ``gptlib`` and installs the pinned release from the course repository."""
    url = url or repository_url()
    version = version or release()
    return (
        f"# Setup: use this course's gptlib where it is installed (a clone after `make setup`); anywhere\n"
        f"# else (Colab, Kaggle, a JupyterHub) install release v{version} from the course repository.\n"
        "import importlib.metadata, subprocess, sys\n"
        "providers = importlib.metadata.packages_distributions().get(\"gptlib\", [])\n"
        f"if \"{DISTRIBUTION}\" not in providers:\n"
        "    for other in providers:  # another package that is also imported as `gptlib`\n"
        "        subprocess.run([sys.executable, \"-m\", \"pip\", \"uninstall\", \"-q\", \"-y\", other], check=True)\n"
        "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\",\n"
        f"                    \"{DISTRIBUTION}[viz,tiktoken] @ git+{url}@v{version}\"], check=True)"
    )


def notebooks(root: Path = ROOT) -> list[Path]:
    """Every notebook of the course: chapters and appendices."""
    return sorted(p for p in (root / "notebooks").glob("*.ipynb"))


def first_code_cell(nb):
    return next((c for c in nb.cells if c.cell_type == "code"), None)


def chapter_number(path: Path) -> int | None:
    """The chapter of one of the course's own notebooks, from its name (``03_causal_mask``)."""
    m = re.match(r"(\d+)_", Path(path).name)
    return int(m.group(1)) if m else None


def badges(name: str, url: str | None = None, branch: str | None = None) -> str:
    """The line of two Colab badges for notebook ``name``: exercises, then with solutions."""
    url = url or repository_url()
    branch = branch or repository_branch()
    repo = url.split("://", 1)[1].split("/", 1)[1]
    colab = f"https://colab.research.google.com/github/{repo}/blob"
    # the badge pictures are the book's own (book/images), so an offline book shows them too
    return (f"[![Exercises in Colab](../book/images/badge_exercises.svg)]"
            f"({colab}/{STUDENT_BRANCH}/notebooks/{name}) "
            f"[![With solutions in Colab](../book/images/badge_solutions.svg)]"
            f"({colab}/{branch}/notebooks/{name})")


def stamp_notebook(nb, name: str, url: str | None = None, branch: str | None = None) -> bool:
    """Give ``nb`` (the course's notebook ``name``) its chapter metadata and, in its first markdown
    cell, the badge line under the title (replacing an older one). True when something changed."""
    before = (copy.deepcopy(nb.metadata), [c.source for c in nb.cells])
    chapter = chapter_number(Path(name))
    if chapter is not None:
        nb.metadata.setdefault(CHAPTER_KEY, {})["chapter"] = chapter
    title = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    if title is not None:
        line = badges(name, url, branch)
        if _BADGE_LINE.search(title.source):
            title.source = _BADGE_LINE.sub(lambda m: line, title.source, count=1)
        else:
            lines = title.source.split("\n")
            at = next((i + 1 for i, text in enumerate(lines) if text.startswith("# ")), None)
            if at is None:
                lines = [line, ""] + lines
            else:
                rest = lines[at:]
                lines = lines[:at] + ["", line] + ([""] if rest and rest[0].strip() else []) + rest
            title.source = "\n".join(lines)
    return (nb.metadata, [c.source for c in nb.cells]) != before


def stamp(root: Path = ROOT, url: str | None = None, branch: str | None = None) -> list[Path]:
    """Stamp every notebook of the course (see :func:`stamp_notebook`); return those changed."""
    changed = []
    for path in notebooks(root):
        nb = nbformat.read(path, as_version=4)
        if stamp_notebook(nb, path.name, url or repository_url(root / "_config.yml"),
                          branch or repository_branch(root / "_config.yml")):
            _write_sources(nb, path)
            changed.append(path)
    return changed


def _write_sources(nb, path: Path) -> None:
    """Write ``nb``'s cell sources and metadata into ``path``, keeping the rest of the file as it is
    on disk (json indent=1, ensure_ascii=False, a trailing newline, no keys added)."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    for cell, node in zip(raw["cells"], nb.cells, strict=True):
        if "".join(cell["source"]) != node.source:
            cell["source"] = node.source.splitlines(keepends=True)
    raw["metadata"] = json.loads(json.dumps(dict(sorted(nb.metadata.items()))))
    path.write_text(json.dumps(raw, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


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
    source = setup_cell_source(url)
    for path in notebooks(root):
        nb = nbformat.read(path, as_version=4)
        cell = first_code_cell(nb)
        if cell is not None and cell.source.startswith("# Setup:"):
            cell.source = source
            _write_sources(nb, path)
            changed.append(path)
    changed += [p for p in stamp(root, url, branch or repository_branch(config)) if p not in changed]
    return changed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "configure":
        for path in configure(argv[1], argv[2] if len(argv) > 2 else None):
            print(f"updated {path.relative_to(ROOT)}")
        return 0
    if argv == ["stamp"]:
        for path in stamp():
            print(f"stamped {path.relative_to(ROOT)}")
        return 0
    if argv == ["setup-cell"]:
        print(setup_cell_source())
        return 0
    print("usage: python -m tools.course configure URL [BRANCH] | stamp | setup-cell", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
