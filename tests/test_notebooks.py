"""What every committed notebook must look like (no execution here: the smoke book build runs them)."""
import re

import nbformat
import pytest
import yaml

from gptlib import exercises
from tools import ROOT, citations, course, export

NOTEBOOKS = course.notebooks(ROOT)
CHAPTERS = export.chapter_notebooks(ROOT)
BIB = citations.load_bib()
CHECK_CALL = re.compile(r"""(?:check|build)\(\s*["'](\d+\.\d+)["']""")  # build() checks, then picks


def _nb(path):
    return nbformat.read(path, as_version=4)


def _ids(nbs):
    return [p.name for p in nbs]


def test_there_are_chapters():
    assert CHAPTERS, "no chapter notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_without_outputs(path):
    for i, cell in enumerate(_nb(path).cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name} cell {i} has outputs: clear them before committing")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_starts_with_title_and_colab_setup_cell(path):
    nb = _nb(path)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), (
        f"{path.name} must open with a `# Title` markdown cell")
    titles = [c for c in nb.cells if c.cell_type == "markdown"
              and re.search(r"^# ", c.source, re.M)]
    assert len(titles) == 1, f"{path.name} must have exactly one H1 title"
    setup = course.first_code_cell(nb)
    assert setup.source == course.setup_cell_source(), (
        f"{path.name}: the first code cell must be the Colab setup cell for "
        f"{course.repository_url()} (python -m tools.course setup-cell prints it)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_solution_cells_are_folded_and_checked(path):
    cells = _nb(path).cells
    for i, cell in enumerate(cells):
        if cell.cell_type == "code" and "### BEGIN SOLUTION" in cell.source:
            assert "### END SOLUTION" in cell.source
            assert "hide-input" in cell.metadata.get("tags", []), (
                f"{path.name} cell {i}: a solution cell must carry the `hide-input` tag")
            # the next code cell that is not itself exported (a component may span several
            # exported cells, e.g. a loop and the function that wraps it) checks the work
            following = next((c for c in cells[i + 1:] if c.cell_type == "code"
                              and not c.source.lstrip().startswith("#| export")), None)
            assert following is not None and CHECK_CALL.search(following.source), (
                f"{path.name} cell {i}: a solution cell must be followed by its check(...) or "
                f"build(...) cell")


@pytest.mark.parametrize("path", CHAPTERS, ids=_ids(CHAPTERS))
def test_chapter_exercises_are_registered_and_tested(path):
    chapter = int(path.name[:2])
    source = "\n".join(c.source for c in _nb(path).cells if c.cell_type == "code")
    called = set(CHECK_CALL.findall(source))
    registered = {e for e in exercises.registry() if e.split(".")[0] == str(chapter)}
    assert len(registered) >= 3, f"chapter {chapter} needs at least 3 exercises with checks"
    assert called == registered, (
        f"{path.name} checks {sorted(called)} but gptlib registers {sorted(registered)}")
    tests = ROOT / "tests" / f"test_checks_ch{chapter:02d}.py"
    assert tests.exists(), f"{tests.name} must feed each check known-wrong implementations"
    text = tests.read_text(encoding="utf-8")
    for eid in registered:
        assert f'"{eid}"' in text or f"'{eid}'" in text, f"{tests.name} never tests {eid}"


@pytest.mark.parametrize("path", CHAPTERS, ids=_ids(CHAPTERS))
def test_chapter_has_the_template_sections(path):
    text = "\n".join(c.source for c in _nb(path).cells if c.cell_type == "markdown")
    for needed in ("Objectives", "Prerequisites", "Time estimate", "Review questions",
                   "Summary", "References", "{exercise}"):
        assert needed in text, f"{path.name} lacks a '{needed}' part"
    assert citations.BEGIN in text and "{footbibliography}" not in text and "{footcite}" not in text, (
        f"{path.name}: citations must be links and References the generated list: "
        f"run `python -m tools.citations {path.relative_to(ROOT)}`")
    assert not citations.process(path, BIB, write=False), (
        f"{path.name}: its References list is out of date with book/references.bib: "
        f"run `python -m tools.citations {path.relative_to(ROOT)}`")
    source = "\n".join(c.source for c in _nb(path).cells if c.cell_type == "code")
    assert "by_profile(" in source, f"{path.name} should choose its sizes with by_profile"


def test_every_notebook_and_page_is_in_the_toc():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = set()
    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.add(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(toc)
    files.add(toc["root"])
    for path in NOTEBOOKS:
        assert f"notebooks/{path.stem}" in files, f"{path.name} is missing from _toc.yml"
    for page in (ROOT / "book").glob("*.md"):
        assert f"book/{page.stem}" in files, f"book/{page.name} is missing from _toc.yml"
    for f in files:
        assert any((ROOT / f"{f}{ext}").exists() for ext in (".md", ".ipynb")), f"{f} does not exist"


_TIME = re.compile(r"\*\*Time estimate\*\*: about (\d+) h(?: (\d+) min)? in all")
_ROW = re.compile(r"^\| (\d) [^|]+\|[^|]*\| (\d+) h(?: (\d+) min)? \|", re.M)


def test_time_estimates_are_stated_once_and_agree_with_the_instructor_guide():
    guide = {int(c): int(h) * 60 + int(m or 0)
             for c, h, m in _ROW.findall((ROOT / "book" / "instructors.md").read_text())}
    for path in CHAPTERS:
        text = "\n".join(c.source for c in _nb(path).cells if c.cell_type == "markdown")
        stated = _TIME.findall(text)
        assert len(stated) == 1, f"{path.name}: state the time once, as '**Time estimate**: about N h M min in all'"
        h, m = stated[0]
        assert guide.get(int(path.name[:2])) == int(h) * 60 + int(m or 0), (
            f"{path.name} says {h} h {m or 0} min, book/instructors.md says {guide.get(int(path.name[:2]))} min")


_EXERCISE_TITLE = re.compile(r"^:::\{exercise\} Exercise (\d+\.\d+) · (.+?) · (warm-up|core|stretch) · "
                             r"difficulty ([★☆]{3}) · importance ([★☆]{3})\s*$", re.M)


@pytest.mark.parametrize("path", CHAPTERS, ids=_ids(CHAPTERS))
def test_exercise_titles_carry_the_checks_id_tier_and_ratings(path):
    text = "\n".join(c.source for c in _nb(path).cells if c.cell_type == "markdown")
    assert text.count(":::{exercise}") == len(_EXERCISE_TITLE.findall(text)), (
        f"{path.name}: every exercise title reads 'Exercise N.M · title · tier · difficulty ★★☆ · "
        "importance ★★★'")
    registry = exercises.registry()
    for ex_id, title, tier, difficulty, importance in _EXERCISE_TITLE.findall(text):
        spec = registry[ex_id]
        assert (tier, difficulty.count("★"), importance.count("★")) == (
            spec.tier, spec.difficulty, spec.importance), f"{path.name} {ex_id}: title and check disagree"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_carries_its_chapter_and_both_colab_badges(path):
    """The grader reads the chapter from the metadata, and the title cell opens the student copy
    and the solved one in Colab: `python -m tools.course stamp` writes both (and changes nothing
    on a stamped notebook)."""
    nb = _nb(path)
    assert not course.stamp_notebook(nb, path.name), f"{path.name}: run `python -m tools.course stamp`"


# A sentence that says another chapter uses a name ("Chapter 8 uses `generate`", "Chapter 3's
# `masked_softmax`", "`train_val_split`, used again in Chapter 6") must be true: the named
# chapter's notebook code mentions the name.
_NAMES = r"((?:`[^`\n]+`(?:,? and |, | or )?)+)"
_VERB = r"(?:uses|use|calls|call|imports|import|reuses|reuse|relies on|loads|passes|builds|defines|exports)"
_CLAIMS = [
    re.compile(r"\bChapter (\d+)(?:'s \w+)? " + _VERB + r" (?:the |its |a |an )?(?:[\w-]+ ){0,3}?" + _NAMES),
    re.compile(r"\bChapter (\d+)'s " + _NAMES),
    re.compile(_NAMES + r",? (?:is |are )?(?:used|called|imported|reused|defined|built) (?:again )?"
               r"(?:in|by) Chapter (\d+)\b"),
]


def cross_references(text: str) -> list[tuple[int, str]]:
    """(chapter, name) for each claim in ``text`` that chapter ``chapter`` uses ``name``."""
    flat = " ".join(text.split())
    found = []
    for i, pattern in enumerate(_CLAIMS):
        for m in pattern.finditer(flat):
            chapter, names = (m.group(2), m.group(1)) if i == 2 else (m.group(1), m.group(2))
            found += [(int(chapter), name) for name in re.findall(r"`([^`]+)`", names)]
    return found


def _mentions(code: str, name: str) -> bool:
    ident = re.match(r"[A-Za-z_][\w.]*", name)
    if ident is None:
        return name in code
    whole = ident.group(0)
    return any(re.search(rf"(?<![\w.]){re.escape(n)}\b", code) or re.search(rf"\.{re.escape(n)}\b", code)
               for n in {whole, whole.split(".")[-1]})


def test_cross_references_are_found_in_every_phrasing():
    text = ("Chapter 8 uses `generate` to sample. With a mask, use Chapter 3's `masked_softmax`. "
            "The split, `train_val_split` and `get_batch`, is used again in Chapter 6. Chapter 2 "
            "cuts the text; keep passages of at least `min_words` words.")
    assert cross_references(text) == [(8, "generate"), (3, "masked_softmax"),
                                      (6, "train_val_split"), (6, "get_batch")]


def test_cross_references_between_chapters_are_true():
    code = {course.chapter_number(p): "\n".join(c.source for c in _nb(p).cells if c.cell_type == "code")
            for p in CHAPTERS}
    pages = [(p.name, c.get("id", i), c.source) for p in NOTEBOOKS
             for i, c in enumerate(_nb(p).cells) if c.cell_type == "markdown"]
    pages += [(p.name, "-", p.read_text(encoding="utf-8")) for p in sorted((ROOT / "book").glob("*.md"))]
    false = [f"{name} cell {cell}: Chapter {chapter} does not mention `{used}`"
             for name, cell, text in pages for chapter, used in cross_references(text)
             if not _mentions(code.get(chapter, ""), used)]
    assert not false, "cross-references to check:\n" + "\n".join(false)



@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_figure_cells_carry_alt_text(path):
    """The source-side half of the browser test's alt-text check: a cell that draws a figure
    (``plt.show()``) has ``"mystnb": {"image": {"alt": ...}}`` in its metadata (myst-nb gives it
    to the figure's img tag)."""
    missing = [c.get("id", i) for i, c in enumerate(_nb(path).cells)
               if c.cell_type == "code" and "plt.show()" in c.source
               and "remove-output" not in c.metadata.get("tags", [])
               and not str(c.metadata.get("mystnb", {}).get("image", {}).get("alt", "")).strip()]
    assert not missing, f"{path.name}: figure cells without alt text: {missing}"
