"""The grader's clean process: load a submission's definitions, run its chapter's checks on them.

Hand-written (not exported from a notebook). ``tools.grade`` starts it as
``python -m tools.grade_worker JOB.json FD`` and reads one JSON line per event from file
descriptor ``FD``: ``{"event": "ready"}`` once the definitions are loaded, then
``{"event": "start", "id": ...}`` and ``{"event": "verdict", "id": ..., "status": ...,
"message": ...}`` for each exercise in turn. The parent times each exercise and restarts this
process for the remaining ones when an exercise hangs or kills it.

What the process does, in order:

1. limits its own memory (``RLIMIT_AS``), sets ``GPTLIB_CHECK_SALT`` (the checks' hidden cases),
   imports the checks and keeps a copy of their modules' globals;
2. makes the library's own version of each graded component unavailable to the submission: a
   call made from the submission's code to the reference of the exercise being checked raises
   (the checks themselves, and gptlib internally, still reach it);
3. runs the submission's statements (imports, definitions; see ``tools.grade_source``) in a fresh
   module, each one on its own, compiled under the file name ``<submission cell N>``;
4. for each exercise: puts the checks' globals back as they were, binds the earlier exercises
   that did not pass to the reference (as ``build`` does in the notebook), seeds the global
   generators from the salt and runs the check.
"""
from __future__ import annotations

import functools
import inspect
import json
import linecache
import os
import random
import resource
import sys
import types

SUBMISSION_MODULE = "__submission__"
_FILE_PREFIX = "<submission"


class ReferenceUnavailable(RuntimeError):
    """The submission called the library's own version of the component it is graded on."""


_current: set[str] = set()    # the reference paths blocked for the exercise being checked
_delegated: list[str] = []    # references the submission tried to call during this check


def _from_submission(depth: int = 2) -> bool:
    frame = sys._getframe(depth)
    return frame is not None and frame.f_code.co_filename.startswith(_FILE_PREFIX)


def _refuse(path: str):
    _delegated.append(path)
    raise ReferenceUnavailable(f"gptlib's own {path} is unavailable while grading: write it yourself")


def _guard_function(path: str, func):
    @functools.wraps(func)
    def guarded(*args, **kwargs):
        if path in _current and _from_submission():
            _refuse(path)
        return func(*args, **kwargs)
    guarded.__grader_reference__ = func
    return guarded


def _guard_class(path: str, cls: type) -> None:
    init = cls.__init__

    @functools.wraps(init)
    def guarded_init(self, *args, **kwargs):
        if path in _current and (_from_submission() or type(self).__module__ == SUBMISSION_MODULE):
            _refuse(path)
        return init(self, *args, **kwargs)
    cls.__init__ = guarded_init


def _install_guards(specs) -> dict[str, object]:
    """Guard the reference of every exercise in ``specs``; return path -> the original object."""
    import importlib
    originals = {}
    for spec in specs:
        if not spec.builds:
            continue
        module_name, _, name = spec.builds.partition(":")
        path = f"{module_name}.{name}"
        if path in originals:
            continue
        module = importlib.import_module(module_name)
        owner, attr = module, name
        if "." in name:
            cls_name, attr = name.split(".", 1)
            owner = getattr(module, cls_name)
        value = getattr(owner, attr)
        originals[path] = value
        if inspect.isclass(value):
            _guard_class(path, value)
        elif callable(value):
            setattr(owner, attr, _guard_function(path, value))
    return originals


def _is_reference(candidate, reference) -> bool:
    seen = candidate
    for _ in range(5):   # unwrap partials and wrappers
        if seen is reference or getattr(seen, "__grader_reference__", None) is reference:
            return True
        seen = getattr(seen, "func", None) or getattr(seen, "__wrapped__", None)
        if seen is None:
            break
    return inspect.isclass(candidate) and inspect.isclass(reference) and issubclass(candidate, reference)


def _load(statements) -> tuple[types.ModuleType, dict[str, str]]:
    """Run the submission's statements in a new module; name -> why it could not be defined."""
    module = types.ModuleType(SUBMISSION_MODULE)
    sys.modules[SUBMISSION_MODULE] = module
    failed = {}
    for n, st in enumerate(statements):
        filename = f"{_FILE_PREFIX} cell {st['cell']} #{n}>"
        linecache.cache[filename] = (len(st["source"]), None, st["source"].splitlines(True), filename)
        try:
            exec(compile(st["source"], filename, "exec"), module.__dict__)
        except BaseException as err:   # noqa: BLE001 - a submission may raise anything, even SystemExit
            if st["kind"] == "import":
                continue
            for name in st["names"]:
                failed[name] = (f"defining {name} (code cell {st['cell']}) raised "
                                f"{type(err).__name__}: {str(err)[:300]}")
    return module, failed


def _snapshot(prefix: str) -> dict[str, dict]:
    return {name: dict(mod.__dict__) for name, mod in list(sys.modules.items())
            if name == prefix or name.startswith(prefix + ".")}


def _restore(snapshot: dict[str, dict]) -> None:
    for name, saved in snapshot.items():
        module = sys.modules.get(name)
        if module is None:
            continue
        for key in [k for k in module.__dict__ if k not in saved]:
            del module.__dict__[key]
        module.__dict__.update(saved)


def _seed(salt: int, n: int) -> None:
    import numpy as np
    import torch
    seed = (salt * 7919 + n) % (2**31 - 1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main(argv: list[str]) -> int:
    job_path, fd = argv[0], int(argv[1])
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    out = os.fdopen(fd, "w", buffering=1, encoding="utf-8")
    os.set_inheritable(fd, False)

    def send(**event):
        out.write(json.dumps(event) + "\n")
        out.flush()

    limit = int(job["memory_gib"] * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.environ["GPTLIB_CHECK_SALT"] = str(job["salt"])

    import torch
    torch.set_num_threads(1)
    from gptlib.exercises import registry, run_check
    specs = registry()
    chapter = [specs[eid] for eid in job["chapter_ids"]]
    originals = _install_guards(chapter)
    import gptlib.exercises as checks
    saved = _snapshot("gptlib.exercises")
    saved_registry = dict(checks._REGISTRY)
    saved_run_check = run_check

    module, failed = _load(job["statements"])
    send(event="ready")
    verdicts = dict(job["prior"])
    names = job["names"]
    for eid in job["exercises"]:
        send(event="start", id=eid)
        spec = specs[eid]
        refs = [f"{spec.builds.partition(':')[0]}.{spec.builds.partition(':')[2]}"] if spec.builds else []
        name = names.get(eid)
        status, message = None, ""
        if name is None:
            status, message = "not done", (f"no check(\"{eid}\", ...) in the notebook names the "
                                           "solution, and the exercise declares no component")
        elif name in failed:
            status, message = "error", failed[name]
        elif name not in module.__dict__:
            status, message = "not done", f"the notebook does not define {name}"
        if status is None:
            candidate = module.__dict__[name]
            for path in refs:
                if _is_reference(candidate, originals[path]):
                    status, message = "forbidden", (f"{name} is gptlib's own {path}: write it yourself")
        if status is None:
            # the earlier exercises that did not pass: the rest of the notebook used the reference
            for other in chapter:
                other_name = names.get(other.id)
                if (other.id != eid and other.builds and verdicts.get(other.id, "passed") != "passed"
                        and other_name and other_name != name and other_name in module.__dict__):
                    path = f"{other.builds.partition(':')[0]}.{other.builds.partition(':')[2]}"
                    module.__dict__[other_name] = originals[path]
            _restore(saved)
            checks._REGISTRY.clear()
            checks._REGISTRY.update(saved_registry)
            _current.clear()
            _current.update(refs)
            _delegated.clear()
            _seed(job["salt"], len(verdicts))
            result = saved_run_check(eid, candidate)
            _current.clear()
            status, message = result.status, result.message
            if _delegated:
                status, message = "forbidden", (f"{name} calls gptlib's own {_delegated[0]}: "
                                                "write it yourself")
        verdicts[eid] = status
        send(event="verdict", id=eid, status=status, message=message)
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)   # no atexit handler a submission may have registered runs
