"""Student versions run top to bottom with nothing done and carry their chapter; notebooks get
their chapter metadata and Colab badges from tools.course.stamp. The grader: tests/test_grade.py."""
import shutil
from pathlib import Path

import nbformat
import pytest

from gptlib.exercises import registry
from tools import ROOT, course, grade, student

NOTEBOOKS = course.notebooks(ROOT)


def test_strip_solutions_keeps_indentation_and_code_around():
    src = ("def f(x):\n    \"\"\"Doc.\"\"\"\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n"
           "    ### END SOLUTION\n\nprint('after')")
    out = student.strip_solutions(src)
    assert out == ("def f(x):\n    \"\"\"Doc.\"\"\"\n    raise NotImplementedError  # your code here\n"
                   "\nprint('after')")


@pytest.mark.parametrize("bad", ["### BEGIN SOLUTION\nx", "x\n### END SOLUTION",
                                 "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION"])
def test_unbalanced_markers_are_errors(bad):
    with pytest.raises(ValueError):
        student.strip_solutions(bad)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_student_notebook_has_no_solutions(path):
    nb = student.student_notebook(nbformat.read(path, as_version=4))
    for cell in nb.cells:
        assert "BEGIN SOLUTION" not in cell.source and "END SOLUTION" not in cell.source
        if cell.cell_type == "code":
            assert cell.outputs == [] and "hide-input" not in cell.metadata.get("tags", [])


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    student.write_student_notebooks(NOTEBOOKS, out)
    return out


def test_student_copies_carry_their_chapter(student_dir):
    for path in sorted(student_dir.glob("[0-9]*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata["gptlib"]["chapter"] == int(path.name.split("_")[0]), path.name


@pytest.mark.slow
def test_every_student_notebook_runs_to_the_end_with_nothing_done(student_dir):
    paths = sorted(student_dir.glob("*.ipynb"))
    reports = grade.grade(paths, run_timeout=300)
    for report in reports:
        name = Path(report.submission).name
        assert report.runs == "yes", f"{name}: {report.runs}"
        assert report.score == 0, f"{name}: a student notebook passed {report.results}"
        assert all(s == "not done" for s in report.results.values()), (name, report.messages)
        if name[:2].isdigit() and registry_has(report.chapter):
            assert len(report.results) >= 3, f"{name}: expected its chapter's exercises"


def registry_has(chapter):
    return any(spec.chapter == chapter for spec in registry().values())


def test_stamp_writes_chapter_and_badges_once(tmp_path):
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    (tmp_path / "notebooks").mkdir()
    for path in NOTEBOOKS:
        shutil.copy(path, tmp_path / "notebooks" / path.name)
    assert len(course.stamp(tmp_path)) == len(NOTEBOOKS) - sum(_stamped(p) for p in NOTEBOOKS)
    once = {p.name: p.read_bytes() for p in (tmp_path / "notebooks").glob("*.ipynb")}
    assert course.stamp(tmp_path) == []                       # idempotent
    url, branch = course.repository_url(), course.repository_branch()
    repo = url.split("github.com/")[1]
    for name, data in once.items():
        nb = nbformat.reads(data.decode(), as_version=4)
        title = next(c for c in nb.cells if c.cell_type == "markdown").source
        assert f"colab.research.google.com/github/{repo}/blob/student/notebooks/{name}" in title
        assert f"colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{name}" in title
        assert title.count("Exercises in Colab") == 1 and title.startswith("# ")
        if name[:2].isdigit():
            assert nb.metadata["gptlib"] == {"chapter": int(name[:2])}
        original = (ROOT / "notebooks" / name).read_text(encoding="utf-8")
        assert data.decode().endswith("}\n") and len(data.decode().splitlines()) - len(original.splitlines()) <= 5
    course.configure("https://github.com/someone/fork", "dev", root=tmp_path)
    title = nbformat.read(tmp_path / "notebooks" / NOTEBOOKS[0].name, as_version=4).cells[0].source
    assert "github/someone/fork/blob/student/" in title and "github/someone/fork/blob/dev/" in title
    assert title.count("Exercises in Colab") == 1


def _stamped(path):
    nb = nbformat.read(path, as_version=4)
    return not course.stamp_notebook(nb, path.name)
