"""The exercise machinery itself: verdicts, hints, not-done, crash handling, the grader's seed salt."""

import pytest

from gptlib import exercises
from gptlib.exercises import CheckFailed, check, exercise, expect, run_check


@pytest.fixture
def toy():
    @exercise("99.1", "Double a number")
    def _(double):
        expect(double(2) == 4, "double(2) should be 4")
        if double(-3) != -6:
            raise CheckFailed("negative numbers: did you use abs()?")
    yield "99.1"
    exercises._REGISTRY.pop("99.1")


def test_pass_fail_hint(toy, capsys):
    assert run_check(toy, lambda x: 2 * x).status == "passed"
    wrong = run_check(toy, lambda x: 2 * abs(x))
    assert wrong.status == "failed" and "abs()" in wrong.message and not wrong
    result = check(toy, lambda x: x + 2)
    out = capsys.readouterr().out
    assert result.status == "failed" and "❌" in out and "double(2) should be 4" not in out
    assert "negative numbers" in out


def test_not_done_and_crash(toy, capsys):
    def todo(x):
        raise NotImplementedError
    assert run_check(toy, todo).status == "not done"
    assert run_check(toy, None).status == "not done"
    crash = run_check(toy, lambda x: x.nope)
    assert crash.status == "error" and "AttributeError" in crash.message
    check(toy, todo)
    assert "⏳" in capsys.readouterr().out


def test_unknown_exercise_is_a_clear_error():
    with pytest.raises(KeyError, match="no exercise"):
        run_check("0.0", print)


def test_case_seed_is_the_seed_in_a_notebook_and_another_under_the_grader(monkeypatch):
    monkeypatch.delenv("GPTLIB_CHECK_SALT", raising=False)
    assert exercises.case_seed(3) == 3
    monkeypatch.setenv("GPTLIB_CHECK_SALT", "12345")
    salted = exercises.case_seed(3)
    assert salted != 3 and salted == exercises.case_seed(3) and salted != exercises.case_seed(4)


def test_registry_ids_are_chapter_numbered():
    for eid, ex in exercises.registry().items():
        chapter, number = eid.split(".")
        assert chapter.isdigit() and number.isdigit(), eid
        assert ex.func.__module__ == f"gptlib.exercises.ch{int(chapter):02d}", (
            f"exercise {eid} must live in gptlib/exercises/ch{int(chapter):02d}.py")
