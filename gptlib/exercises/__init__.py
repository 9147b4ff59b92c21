"""Exercise checks: ``check("4.2", my_attention)`` prints a pass, or a fail with a hint.

Hand-written (not exported from a notebook). Each chapter's checks live in ``chNN.py`` beside
this file and register themselves with :func:`exercise`::

    @exercise("1.1", "Count adjacent pairs")
    def _(count_pairs):
        expect(count_pairs([1, 2, 1, 2]) == {(1, 2): 2, (2, 1): 1},
               "count every adjacent pair, overlapping ones too")

A check receives the learner's candidate (a function or class) and calls :func:`expect`, or
raises :class:`CheckFailed`, with a hint that names the likely mistake. ``check`` turns that into
a printed verdict and returns a :class:`CheckResult`:

* ``passed``  the candidate behaves like the reference;
* ``failed``  it does not, and the hint says why;
* ``not done`` the candidate raised ``NotImplementedError`` (a student notebook's placeholder);
* ``error``   the candidate crashed; the exception is shown.

When ``GPTLIB_GRADE_LOG`` names a file, each verdict is also appended to it as a JSON line;
``python -m tools.grade`` (``make grade``) uses that to build a gradebook.
"""
from __future__ import annotations

import importlib
import json
import os
import pkgutil
import traceback
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["check", "exercise", "expect", "CheckFailed", "CheckResult", "registry",
           "run_check"]


class CheckFailed(AssertionError):
    """Raised by a check when the candidate is wrong; the message is the hint."""


@dataclass(frozen=True)
class Exercise:
    id: str
    title: str
    func: Callable[[Any], None]


@dataclass
class CheckResult:
    exercise_id: str
    status: str  # "passed" | "failed" | "not done" | "error"
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __bool__(self) -> bool:
        return self.passed

    def _repr_pretty_(self, p, cycle):  # quiet in notebooks: check() already printed
        p.text(f"CheckResult({self.exercise_id!r}, {self.status!r})")


_REGISTRY: dict[str, Exercise] = {}
_LOADED = False


def exercise(exercise_id: str, title: str):
    """Decorator that registers a check function under ``exercise_id`` (e.g. ``"1.2"``)."""
    def register(func):
        if exercise_id in _REGISTRY and _REGISTRY[exercise_id].func.__module__ != func.__module__:
            raise ValueError(f"exercise {exercise_id} is registered twice")
        _REGISTRY[exercise_id] = Exercise(exercise_id, title, func)
        return func
    return register


def expect(condition: Any, hint: str) -> None:
    """Fail the check with ``hint`` unless ``condition`` is true."""
    if not condition:
        raise CheckFailed(hint)


def registry() -> dict[str, Exercise]:
    """Every registered exercise, loading all chapter check modules on first use."""
    global _LOADED
    if not _LOADED:
        for info in pkgutil.iter_modules(__path__):
            if info.name.startswith("ch"):
                importlib.import_module(f"{__name__}.{info.name}")
        _LOADED = True
    return dict(sorted(_REGISTRY.items(), key=lambda kv: [int(x) for x in kv[0].split(".")]))


def run_check(exercise_id: str, candidate: Any) -> CheckResult:
    """Run one check silently and return its result."""
    exercises = registry()
    if exercise_id not in exercises:
        raise KeyError(f"no exercise {exercise_id!r}; known: {', '.join(exercises)}")
    if candidate is None:
        return CheckResult(exercise_id, "not done", "nothing was given to check")
    try:
        exercises[exercise_id].func(candidate)
    except NotImplementedError:
        return CheckResult(exercise_id, "not done", "replace `raise NotImplementedError` with your code")
    except CheckFailed as fail:
        return CheckResult(exercise_id, "failed", str(fail))
    except Exception as err:  # the candidate crashed: show where, as a hint
        tb = traceback.format_exception_only(type(err), err)[-1].strip()
        return CheckResult(exercise_id, "error", f"your code raised {tb}")
    return CheckResult(exercise_id, "passed")


def _log(result: CheckResult) -> None:
    path = os.environ.get("GPTLIB_GRADE_LOG")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"exercise": result.exercise_id, "status": result.status,
                            "message": result.message}) + "\n")


_ICONS = {"passed": "✅", "failed": "❌", "not done": "⏳", "error": "💥"}


def check(exercise_id: str, candidate: Any) -> CheckResult:
    """Check ``candidate`` for exercise ``exercise_id`` and print the verdict."""
    result = run_check(exercise_id, candidate)
    title = registry()[exercise_id].title
    line = f"{_ICONS[result.status]} Exercise {exercise_id} ({title}): {result.status}"
    if result.message:
        line += f"\n   hint: {result.message}" if result.status == "failed" else f"\n   {result.message}"
    print(line)
    _log(result)
    return result
