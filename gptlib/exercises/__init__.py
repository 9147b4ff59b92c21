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

Grading (``python -m tools.grade``, ``make grade``) does not read what a notebook prints: it takes
the graded functions out of the submission and runs these same checks in a process of its own,
with ``GPTLIB_CHECK_SALT`` set. A check that draws its inputs from seeds written as
``case_seed(n)`` then gets cases the notebook never saw (the same ``n`` in the notebook).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import random
import traceback
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["check", "build", "check_package", "exercise", "expect", "CheckFailed", "CheckResult",
           "registry", "run_check", "case_seed"]


class CheckFailed(AssertionError):
    """Raised by a check when the candidate is wrong; the message is the hint."""


@dataclass(frozen=True)
class Exercise:
    id: str
    title: str
    func: Callable[[Any], None]
    builds: str | None = None   # "gptlib.module:name": the component of gptlib this exercise writes
    tier: str = "core"          # "warm-up", "core" or "stretch"
    difficulty: int = 2         # 1 (a few lines) .. 3 (think hard)
    importance: int = 2         # 1 (nice to know) .. 3 (the heart of the chapter)
    forbids: tuple[str, ...] = ()  # calls the solution must not make, e.g. "F.layer_norm"
    time_limit: float | None = None  # seconds the grader allows this check (None: its default)

    @property
    def chapter(self) -> int:
        return int(self.id.split(".")[0])

    def reference(self) -> Any:
        """The component this exercise builds, as the installed gptlib has it."""
        module, _, name = self.builds.partition(":")
        value = importlib.import_module(module)
        for part in name.split("."):
            value = getattr(value, part)
        return value


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


TIERS = ("warm-up", "core", "stretch")


def exercise(exercise_id: str, title: str, builds: str | None = None, *, tier: str = "core",
             difficulty: int = 2, importance: int = 2, forbids: tuple[str, ...] = (),
             time_limit: float | None = None):
    """Decorator that registers a check function under ``exercise_id`` (e.g. ``"1.2"``).

    ``builds`` names the gptlib component the exercise writes (``"gptlib.attention:
    CausalSelfAttention"``, a method as ``"gptlib.model:GPT.forward"``): :func:`build` falls back
    to it, and :func:`check_package` checks it. Such a check must not compare the candidate with
    that same gptlib component (a learner's own export would pass against itself): it compares
    with PyTorch's own operations, an external reference (tiktoken, Hugging Face) or a private
    reference kept in ``gptlib/exercises/``. ``tier`` (warm-up, core, stretch), ``difficulty`` and
    ``importance`` (1 to 3 each) are shown to the learner and counted per chapter. ``forbids``
    names the calls the exercise rules out, as the learner would write them (``"F.layer_norm"``,
    ``"torch.nn.functional.scaled_dot_product_attention"``; ``".softmax"`` for a method of that name
    on anything): the grader flags a solution that makes one. ``time_limit`` (seconds) raises the
    grader's default limit for a check that needs longer (a small training run).
    """
    if tier not in TIERS or difficulty not in (1, 2, 3) or importance not in (1, 2, 3):
        raise ValueError(f"exercise {exercise_id}: tier must be one of {TIERS}, difficulty and "
                         f"importance 1..3; got {tier!r}, {difficulty!r}, {importance!r}")

    def register(func):
        if exercise_id in _REGISTRY and _REGISTRY[exercise_id].func.__module__ != func.__module__:
            raise ValueError(f"exercise {exercise_id} is registered twice")
        _REGISTRY[exercise_id] = Exercise(exercise_id, title, func, builds, tier, difficulty,
                                          importance, tuple(forbids), time_limit)
        return func
    return register


def expect(condition: Any, hint: str) -> None:
    """Fail the check with ``hint`` unless ``condition`` is true."""
    if not condition:
        raise CheckFailed(hint)


def case_seed(n: int) -> int:
    """The seed a check draws its case ``n`` from: ``n`` itself in a notebook, another seed under
    the grader (which sets ``GPTLIB_CHECK_SALT``), so graded cases differ from the ones a learner
    saw. A check that uses it must pass the reference on any seed."""
    salt = int(os.environ.get("GPTLIB_CHECK_SALT", "0") or 0)
    return n if salt == 0 else (n * 1_000_003 + salt) % (2**31 - 1)


def registry() -> dict[str, Exercise]:
    """Every registered exercise, loading all chapter check modules on first use."""
    global _LOADED
    if not _LOADED:
        for info in pkgutil.iter_modules(__path__):
            if info.name.startswith("ch"):
                importlib.import_module(f"{__name__}.{info.name}")
        _LOADED = True
    return dict(sorted(_REGISTRY.items(), key=lambda kv: [int(x) for x in kv[0].split(".")]))


@contextlib.contextmanager
def _random_state_kept():
    """Python's, NumPy's and torch's (CPU) global random states as they were before: a check may
    seed and draw (small models, dropout) without changing the numbers of the cells after it."""
    import numpy as np
    import torch
    saved = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


def run_check(exercise_id: str, candidate: Any) -> CheckResult:
    """Run one check silently, with the learner's random state kept, and return its result."""
    exercises = registry()
    if exercise_id not in exercises:
        raise KeyError(f"no exercise {exercise_id!r}; known: {', '.join(exercises)}")
    if candidate is None:
        return CheckResult(exercise_id, "not done", "nothing was given to check")
    try:
        with _random_state_kept():
            exercises[exercise_id].func(candidate)
    except NotImplementedError:
        return CheckResult(exercise_id, "not done", "replace `raise NotImplementedError` with your code")
    except CheckFailed as fail:
        return CheckResult(exercise_id, "failed", str(fail))
    except Exception as err:  # the candidate crashed: show where, as a hint
        tb = traceback.format_exception_only(type(err), err)[-1].strip()
        return CheckResult(exercise_id, "error", f"your code raised {tb}")
    return CheckResult(exercise_id, "passed")


_ICONS = {"passed": "✅", "failed": "❌", "not done": "⏳", "error": "💥"}


def check(exercise_id: str, candidate: Any) -> CheckResult:
    """Check ``candidate`` for exercise ``exercise_id`` and print the verdict."""
    result = run_check(exercise_id, candidate)
    title = registry()[exercise_id].title
    line = f"{_ICONS[result.status]} Exercise {exercise_id} ({title}): {result.status}"
    if result.message:
        line += f"\n   hint: {result.message}" if result.status == "failed" else f"\n   {result.message}"
    print(line)
    return result


def build(exercise_id: str, candidate: Any) -> Any:
    """Check the learner's component and return the one the chapter uses from here on.

    Yours when its check passes; otherwise gptlib's reference (and a line says so), so that a
    notebook with an exercise not done, or not done yet, still runs to the end::

        CausalSelfAttention = build("4.4", CausalSelfAttention)
    """
    result = check(exercise_id, candidate)
    if result.passed:
        return candidate
    spec = registry()[exercise_id]
    if spec.builds is None:
        raise ValueError(f"exercise {exercise_id} names no gptlib component to fall back to")
    print(f"   the rest of this chapter uses the course's {spec.builds.replace(':', '.')} instead")
    return spec.reference()


class PackageCheckFailed(RuntimeError):
    """A component of the installed gptlib fails the check of the exercise that builds it."""


def check_package(*chapters: int) -> int:
    """Check the components of the installed gptlib that ``chapters`` build (all, if none given).

    A chapter that imports earlier chapters' work from gptlib can start with this: when your own
    exported notebooks are installed, a wrong component is caught here, named with its chapter and
    exercise, instead of surfacing as a wrong number three chapters later.
    """
    failures, checked = [], 0
    for spec in registry().values():
        if spec.builds is None or (chapters and spec.chapter not in chapters):
            continue
        checked += 1
        result = run_check(spec.id, spec.reference())
        if not result.passed:
            failures.append(f"{spec.builds.replace(':', '.')} (Chapter {spec.chapter}, Exercise "
                            f"{spec.id}: {spec.title}): {result.status}: {result.message}")
    if failures:
        raise PackageCheckFailed(
            "your gptlib has components that fail their checks:\n  " + "\n  ".join(failures)
            + "\nFix the exercise in its chapter's notebook and run `make export` again (or "
              "reinstall the course's gptlib to use the reference).")
    which = ", ".join(map(str, sorted(chapters))) if chapters else "every chapter"
    print(f"gptlib: the {checked} components built in chapter(s) {which} pass their checks")
    return checked
