"""Student versions run top to bottom with nothing done; the grader scores what passed."""
import copy
import re
from pathlib import Path

import nbformat
import pytest

from gptlib.exercises import registry
from tools import ROOT, course, grade, student

NOTEBOOKS = course.notebooks(ROOT)
# The chapter the grading round-trip uses (it runs twice more): a quick one.
GRADED = ROOT / "notebooks" / "03_causal_mask.ipynb"


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


@pytest.mark.slow
def test_every_student_notebook_runs_to_the_end_with_nothing_done(student_dir):
    paths = sorted(student_dir.glob("*.ipynb"))
    reports = [grade.grade_notebook(p, timeout=300) for p in paths]
    for report in reports:
        name = Path(report.submission).name
        assert report.outcome == "completed", f"{name}: {report.outcome} {report.detail}"
        assert report.score == 0, f"{name}: a student notebook passed {report.results}"
        assert all(s == "not done" for s in report.results.values()), (name, report.results)
        if report.chapter is not None and name[:2].isdigit():
            assert report.total >= 3, f"{name}: expected its chapter's exercises"


def _wrong_first_solution(nb):
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code" and "### BEGIN SOLUTION" in cell.source:
            cell.source = student.strip_solutions(cell.source, placeholder="return None")
            first_id = re.search(r"""(?:check|build)\(\s*["'](\d+\.\d+)""", "\n".join(
                c.source for c in nb.cells[nb.cells.index(cell) + 1:] if c.cell_type == "code")).group(1)
            return nb, first_id
    raise AssertionError("no solution cell")


def _hanging_report(tmp_path):
    """Grade a chapter-3 submission that sleeps far past a 5-second limit."""
    hang = nbformat.v4.new_notebook()
    hang.cells = [nbformat.v4.new_code_cell("import time\ntime.sleep(600)")]
    path = tmp_path / "03_hangs.ipynb"
    nbformat.write(hang, path)
    return grade.grade_notebook(path, timeout=5)


def test_grader_stops_a_hanging_notebook_at_its_limit(tmp_path):
    report = _hanging_report(tmp_path)
    assert report.outcome == "timed out" and report.detail == "stopped after 5 s"
    assert report.score == 0 and set(report.results.values()) == {"missing"}
    assert report.seconds < 60  # stopped at the limit, not after the sleep


@pytest.mark.slow
def test_grader_full_marks_one_wrong_and_broken_notebooks(tmp_path):
    if not GRADED.exists():
        pytest.skip(f"{GRADED.name} not present")
    instructor = nbformat.read(GRADED, as_version=4)
    wrong_nb, wrong_id = _wrong_first_solution(instructor)
    sub = tmp_path / "subs"
    sub.mkdir()
    nbformat.write(instructor, sub / GRADED.name)
    (sub / "wrong").mkdir()
    nbformat.write(wrong_nb, sub / "wrong" / GRADED.name)
    crash = nbformat.v4.new_notebook()
    crash.cells = [nbformat.v4.new_code_cell("raise RuntimeError('boom')"),
                   nbformat.v4.new_code_cell("print('still runs')")]
    nbformat.write(crash, sub / "03_crashes.ipynb")

    paths = [sub / GRADED.name, sub / "wrong" / GRADED.name, sub / "03_crashes.ipynb"]
    full, wrong, crashed = (grade.grade_notebook(p, timeout=300) for p in paths)
    hung = _hanging_report(tmp_path)

    chapter_ids = [e for e in registry() if e.startswith("3.")]
    assert full.outcome == "completed" and full.score == full.total == len(chapter_ids), full
    assert wrong.outcome == "completed", wrong
    assert wrong.results[wrong_id] != "passed"
    assert {e for e, s in wrong.results.items() if s != "passed"} == {wrong_id}
    assert crashed.outcome == "crashed" and "boom" in crashed.detail
    assert crashed.score == 0 and set(crashed.results.values()) == {"missing"}
    csv_path, md_path = grade.write_gradebook([full, wrong, crashed, hung], tmp_path / "book")
    rows = csv_path.read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("submission,chapter,outcome,score,total")
    summary = md_path.read_text()
    assert f"{full.total}/{full.total}" in summary and "timed out" in summary and "boom" in summary
