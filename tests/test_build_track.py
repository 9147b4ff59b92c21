"""The build track: a learner's component is used when its check passes, gptlib's otherwise, and
a wrong component in the installed gptlib is named with its chapter and exercise."""
import math

import pytest

from gptlib import exercises
from gptlib.exercises import Exercise, PackageCheckFailed, build, check_package, expect


def _check_sqrt(candidate):
    for x in (0.0, 2.0, 9.0):
        expect(abs(candidate(x) - x ** 0.5) < 1e-12, f"sqrt({x}) should be {x ** 0.5}")


@pytest.fixture
def sqrt_exercise(monkeypatch):
    spec = Exercise("99.1", "Square root", _check_sqrt, builds="math:sqrt")
    monkeypatch.setitem(exercises._REGISTRY, "99.1", spec)
    exercises.registry()            # load the real chapters first, so the fixture entry stays
    monkeypatch.setitem(exercises._REGISTRY, "99.1", spec)
    return spec


def test_build_keeps_a_passing_component(sqrt_exercise, capsys):
    def mine(x):
        return x ** 0.5
    assert build("99.1", mine) is mine
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("candidate, status", [
    (lambda x: x / 2, "failed"),
    (lambda x: (_ for _ in ()).throw(NotImplementedError), "not done"),
])
def test_build_falls_back_to_gptlibs_component(sqrt_exercise, capsys, candidate, status):
    assert build("99.1", candidate) is math.sqrt
    out = capsys.readouterr().out
    assert status in out and "uses the course's math.sqrt instead" in out


def test_check_package_names_chapter_and_exercise(sqrt_exercise, monkeypatch):
    check_package(99)                                    # math.sqrt passes its own check
    monkeypatch.setattr(math, "sqrt", lambda x: x / 2)   # a wrong component "installed"
    with pytest.raises(PackageCheckFailed) as err:
        check_package(99)
    message = str(err.value)
    assert "math.sqrt (Chapter 99, Exercise 99.1: Square root): failed: " in message
    assert "sqrt(2.0) should be" in message and "make export" in message


def test_every_builds_target_exists():
    for spec in exercises.registry().values():
        if spec.builds:
            assert spec.reference() is not None, spec.id


def test_student_notebooks_refilled_with_the_solutions_export_the_committed_modules(tmp_path):
    """The round trip of the build track: a learner who solves every exercise as the reference
    does, and runs `make export`, gets byte-for-byte the gptlib the course ships."""
    import nbformat

    from tools import ROOT, export, student
    (tmp_path / "notebooks").mkdir()
    lib = tmp_path / "gptlib"
    lib.mkdir()
    exported = 0
    for path in export.chapter_notebooks(ROOT):
        instructor = nbformat.read(path, as_version=4)
        learner = student.student_notebook(instructor)
        refilled = student.refilled_notebook(learner, instructor)
        for mine, theirs in zip(refilled.cells, instructor.cells):
            assert mine.source == theirs.source, (path.name, mine.id)
        target = tmp_path / "notebooks" / path.name
        nbformat.write(refilled, target)
        for module in export.export_notebook(target, lib):
            committed = ROOT / "gptlib" / module.relative_to(lib)
            assert module.read_bytes() == committed.read_bytes(), f"{committed} differs"
            exported += 1
    assert exported >= 12


def test_strip_and_refill_keep_a_trailing_newline():
    from tools import student
    source = "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n"
    stripped = student.strip_solutions(source)
    assert stripped == f"def f():\n    {student.PLACEHOLDER}\n"
    assert student.refill_solutions(stripped, student.solution_blocks(source)) == source


def test_a_wrong_component_in_a_learners_gptlib_is_named_with_its_chapter_and_exercise(tmp_path):
    """A learner solves Chapters 1-5 as the reference does, except the block, which they wire
    without the attention residual, and exports their notebooks. The next chapter's package check
    (check_package) stops at the block and names Chapter 5 and its exercise."""
    import os
    import shutil
    import subprocess
    import sys

    import nbformat

    from tools import ROOT, export, student
    wrong = ("        x = self.attn(self.ln_1(x), cache=cache)   # the residual is forgotten\n"
             "        x = x + self.mlp(self.ln_2(x))\n        return x")
    lib = tmp_path / "gptlib"
    shutil.copytree(ROOT / "gptlib", lib, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "notebooks").mkdir()
    for path in [p for p in export.chapter_notebooks(ROOT) if 1 <= int(p.name[:2]) <= 5]:
        instructor = nbformat.read(path, as_version=4)
        learner = student.refilled_notebook(student.student_notebook(instructor), instructor)
        for cell in learner.cells:
            if cell.cell_type == "code" and "class Block(nn.Module)" in cell.source:
                right = "\n".join(student.solution_blocks(cell.source)[1][1:-1])
                assert "x = x + self.attn(self.ln_1(x), cache=cache)" in right
                cell.source = cell.source.replace(right, wrong, 1)
        target = tmp_path / "notebooks" / path.name
        nbformat.write(learner, target)
        export.export_notebook(target, lib)
    assert "the residual is forgotten" in (lib / "block.py").read_text()
    code = "from gptlib.exercises import check_package; check_package(1, 2, 3, 4, 5)"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0
    assert "PackageCheckFailed" in out.stderr, out.stderr[-2000:]
    assert "gptlib.block.Block (Chapter 5, Exercise 5.4" in out.stderr, out.stderr[-2000:]
    assert "Chapter 4" not in out.stderr


def test_a_check_leaves_the_learners_random_state_alone(monkeypatch):
    """Every check runs with Python's, NumPy's and torch's global random states kept, so a check
    cell never changes the numbers of the notebook cells after it."""
    import random

    import numpy as np
    import torch

    def draws_everywhere(candidate):
        torch.manual_seed(0), random.seed(0), np.random.seed(0)
        torch.rand(3), random.random(), np.random.rand()
        expect(candidate(), "the candidate returns True")

    exercises.registry()
    monkeypatch.setitem(exercises._REGISTRY, "99.2", Exercise("99.2", "Draws", draws_everywhere))
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    for candidate in (lambda: True, lambda: False, lambda: 1 / 0):
        exercises.run_check("99.2", candidate)
    assert torch.equal(before[0], torch.get_rng_state()) and before[1] == random.getstate()
    assert (before[2] == np.random.get_state()[1]).all()


def test_the_learner_writes_a_quarter_of_gptlib():
    """The build track's bar (issue 14): the learner writes at least 600 lines and a quarter of
    everything the chapters export, every chapter at least 15% and 30 lines, with 40 or more
    checked exercises. Counted by tools.build_track (non-blank lines between solution markers in
    exported cells)."""
    from tools.build_track import all_stats
    stats = all_stats()
    exported = sum(s.exported for s in stats)
    learner = sum(s.learner for s in stats)
    assert learner >= 600 and learner >= 0.25 * exported, (learner, exported)
    for s in stats:
        assert s.learner >= 30 and s.share >= 0.15, (s.notebook, s.learner, s.exported)
    assert sum(sum(s.exercises.values()) for s in stats) >= 40
