"""Grade submitted notebooks: the verdicts come from the grader, never from the submission's kernel.

Hand-written (not exported from a notebook).

    python -m tools.grade SUBMISSION.ipynb [...] [--out DIR] [--chapter N] [--jobs N]
                          [--time-limit S] [--memory-limit GIB] [--timeout S] [--no-run] [--salt N]

For each submission:

* the chapter comes from the notebook's metadata (``make student`` writes it), or ``--chapter``;
  the file name does not matter ("Copy of 04_attention.ipynb" is graded as Chapter 4);
* the definitions of the graded names are read from its code cells (``tools.grade_source``), and a
  static scan marks an exercise ``forbidden`` when its solution uses a call the exercise rules
  out, or the library's own version of the component, naming the call;
* the chapter's checks run in a separate, clean process (``tools.grade_worker``) on hidden cases
  (``GPTLIB_CHECK_SALT``), with the library's reference unavailable to the submission's code, a
  time limit per exercise and a memory limit: a hang or a crash costs that exercise only;
* the notebook itself is also executed once, top to bottom, in a fresh kernel; the gradebook says
  whether it ran, and nothing else depends on that run.

Submissions are graded in parallel (``--jobs``, default: the number of cores). Writes
``gradebook.csv`` (one row per submission, one column per exercise with its status, points in
further columns) and ``gradebook.md`` (a readable summary with each failure's message) into
``--out``; ``--gradescope FILE`` also writes Gradescope's results JSON for one submission.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from gptlib.exercises import registry
from tools import ROOT
from tools.grade_source import (graded_names, notebook_chapter, provided_lines, read_submission, reference_paths,
                                ruled_out)

__all__ = ["STATUSES", "POINTS", "GradeReport", "expected_exercises", "grade_notebook", "grade",
           "write_gradebook"]

STATUSES = ("passed", "failed", "not done", "error", "forbidden", "timed out")
POINTS = {"warm-up": 1, "core": 2, "stretch": 2}   # points per exercise, by tier
TIME_LIMIT = 60.0      # seconds per exercise, unless the exercise declares more
LOAD_LIMIT = 120.0     # seconds to start the clean process and load the definitions
MEMORY_GIB = 4.0       # address space of the clean process
RUN_TIMEOUT = 900.0    # seconds for the top-to-bottom run of the notebook


@dataclass
class GradeReport:
    submission: str
    chapter: int | None
    results: dict[str, str] = field(default_factory=dict)    # exercise id -> status
    messages: dict[str, str] = field(default_factory=dict)   # exercise id -> why (when not passed)
    runs: str = "not run"   # "yes", "no: ...", "timed out after N s" or "not run"
    note: str = ""
    seconds: float = 0.0
    started: float = 0.0    # time.monotonic() when its grading began

    def points(self, eid: str) -> int:
        return POINTS[registry()[eid].tier] if self.results.get(eid) == "passed" else 0

    @property
    def score(self) -> int:
        return sum(self.points(e) for e in self.results)

    @property
    def total(self) -> int:
        return sum(POINTS[registry()[e].tier] for e in self.results)


def expected_exercises(chapter: int | None) -> list[str]:
    if chapter is None:
        return []
    return [eid for eid, spec in registry().items() if spec.chapter == chapter]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GPTLIB_CHECK_SALT", None)
    env.setdefault("GPTLIB_PROFILE", "smoke")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _run_worker(job: dict, tmp: Path, limits: dict[str, float], load_limit: float):
    """Run the clean process once; yield (id, status, message) for each exercise it settles."""
    job_path = tmp / "job.json"
    job_path.write_text(json.dumps(job), encoding="utf-8")
    read_fd, write_fd = os.pipe()
    log = open(tmp / "worker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tools.grade_worker", str(job_path), str(write_fd)],
                            pass_fds=(write_fd,), cwd=tmp, env=_child_env(), stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log, start_new_session=True)
    os.close(write_fd)
    selector = selectors.DefaultSelector()
    selector.register(read_fd, selectors.EVENT_READ)
    buffer, current, loaded = b"", None, False
    deadline = time.monotonic() + load_limit
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(timeout=left):
                if time.monotonic() < deadline:
                    continue
                if current is None:
                    why = f"loading the notebook's definitions took longer than {load_limit:.0f} s"
                    for eid in job["exercises"]:
                        yield eid, "timed out", why
                else:
                    yield current, "timed out", f"stopped after {limits[current]:.0f} s"
                return
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                event = json.loads(line)
                if event["event"] == "ready":
                    loaded = True
                elif event["event"] == "start":
                    current = event["id"]
                    deadline = time.monotonic() + limits[current]
                elif event["event"] == "verdict":
                    yield event["id"], event["status"], event["message"]
                    current = None
        proc.wait(timeout=30)
        if current is not None or not loaded:
            code = proc.returncode
            how = f"signal {-code}" if code and code < 0 else f"exit code {code}"
            why = (f"the grading process stopped ({how}): a crash, or more memory than the "
                   f"{job['memory_gib']:g} GiB limit")
            for eid in ([current] if loaded else job["exercises"]):
                yield eid, "error", why
    finally:
        selector.close()
        os.close(read_fd)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@functools.lru_cache(maxsize=None)
def _provided(chapter: int) -> frozenset[str]:
    """The code lines the course gives the learner in ``chapter`` (its student version), which the
    forbidden-call scan does not hold against a submission."""
    from tools import export, student
    for path in export.chapter_notebooks(ROOT):
        if int(path.name[:2]) == chapter:
            return provided_lines(student.student_notebook(nbformat.read(path, as_version=4)))
    return frozenset()


def _grade_exercises(nb, chapter: int, time_limit: float, memory_gib: float, load_limit: float,
                     salt: int) -> tuple[dict[str, str], dict[str, str]]:
    specs = [registry()[eid] for eid in expected_exercises(chapter)]
    names = graded_names(read_submission(nb), specs)
    sub = read_submission(nb, graded={n for n in names.values() if n})
    results, messages = {}, {}
    for spec in specs:
        name = names[spec.id]
        if name is None:
            continue
        if name not in sub.definitions and sub.syntax_errors:
            results[spec.id], messages[spec.id] = "error", next(iter(sub.syntax_errors.values()))
            continue
        why = ruled_out(sub, name, spec.forbids, reference_paths(spec), _provided(chapter),
                        others={n for n in names.values() if n and n != name})
        if why:
            results[spec.id], messages[spec.id] = "forbidden", why
    limits = {s.id: max(time_limit, s.time_limit or 0) for s in specs}
    statements = [vars(st) for st in sub.ordered()]
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        while True:
            remaining = [s.id for s in specs if s.id not in results]
            if not remaining:
                break
            job = {"statements": statements, "exercises": remaining, "names": names,
                   "prior": dict(results), "chapter_ids": [s.id for s in specs], "salt": salt,
                   "memory_gib": memory_gib}
            for eid, status, message in _run_worker(job, Path(tmp), limits, load_limit):
                results[eid], messages[eid] = status, message
            if all(eid not in results for eid in remaining):   # no progress: do not loop forever
                for eid in remaining:
                    results[eid], messages[eid] = "error", "the grading process gave no verdict"
    order = [s.id for s in specs]
    return ({e: results[e] for e in order},
            {e: messages[e] for e in order if results[e] != "passed" and messages.get(e)})


def _run_notebook(path: Path, timeout: float) -> str:
    """Execute the notebook top to bottom in a fresh kernel: "yes", "no: ..." or "timed out ..."."""
    with tempfile.TemporaryDirectory(prefix="grade-run-") as tmp:
        work = Path(tmp) / "submission.ipynb"
        work.write_bytes(path.read_bytes())
        proc = subprocess.Popen([sys.executable, "-m", "tools.grade", "--run-one", str(work),
                                 "--timeout", str(int(timeout))],
                                env=_child_env(), cwd=tmp, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return f"timed out after {timeout:.0f} s"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode == 0:
            return "yes"
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("{")]
        try:
            return "no: " + json.loads(lines[-1])["error"]
        except (IndexError, ValueError, KeyError):
            return "no: " + ((err.strip().splitlines() or ["the notebook could not run"])[-1][:300])


def _run_one(notebook: Path, cell_timeout: int) -> int:
    """Child process: execute ``notebook``; exit 0 when all cells ran, 3 when one raised."""
    import nbclient
    from jupyter_client.manager import KernelManager

    nb = nbformat.read(notebook, as_version=4)
    # The kernel talks over Unix sockets in this run's own folder, not TCP ports: kernels started
    # side by side (the grader runs several submissions at once) cannot race for the same port,
    # which once left a client waiting forever on an idle kernel.
    km = KernelManager(kernel_name="python3", transport="ipc", ip=str(notebook.parent / "kernel"))
    client = nbclient.NotebookClient(nb, km=km, timeout=cell_timeout, allow_errors=True,
                                     resources={"metadata": {"path": str(notebook.parent)}})
    client.execute()
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                print(json.dumps({"error": f"cell {i} raised {out.get('ename')}: "
                                           f"{out.get('evalue', '')[:300]}"}), file=sys.stderr)
                return 3
    return 0


def grade_notebook(path: Path, chapter: int | None = None, *, time_limit: float = TIME_LIMIT,
                   memory_gib: float = MEMORY_GIB, load_limit: float = LOAD_LIMIT,
                   run_timeout: float | None = RUN_TIMEOUT, salt: int = 1) -> GradeReport:
    """Grade one submission (``run_timeout=None``: do not execute it top to bottom)."""
    path = Path(path)
    start = time.monotonic()
    report = GradeReport(submission=str(path), chapter=chapter, started=start)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as err:  # noqa: BLE001 - not a notebook at all
        report.note = f"not a readable notebook: {type(err).__name__}: {str(err)[:200]}"
        report.runs = "no: not a notebook"
        report.seconds = time.monotonic() - start
        return report
    if report.chapter is None:
        report.chapter = notebook_chapter(nb)
    if report.chapter is None:
        report.note = "no chapter in the notebook's metadata and no check names one: give --chapter"
    elif not expected_exercises(report.chapter):
        report.note = f"Chapter {report.chapter} has no exercises"
    else:
        report.results, report.messages = _grade_exercises(nb, report.chapter, time_limit, memory_gib,
                                                           load_limit, salt)
    if run_timeout is not None:
        report.runs = _run_notebook(path, run_timeout)
    report.seconds = time.monotonic() - start
    return report


def grade(paths: list[Path], jobs: int | None = None, **options) -> list[GradeReport]:
    """Grade ``paths`` in parallel, ``jobs`` at a time (default: one per core); keeps their order."""
    jobs = jobs or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=jobs) as pool:   # each task drives its own processes
        return list(pool.map(lambda p: grade_notebook(p, **options), paths))


def _display_names(reports: list[GradeReport]) -> list[str]:
    """Each submission's file name; paths relative to their common folder when names repeat."""
    paths = [Path(r.submission) for r in reports]
    if len({p.name for p in paths}) == len(paths):
        return [p.name for p in paths]
    common = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    return [str(p.resolve().relative_to(common)) for p in paths]


def _sort_key(eid: str) -> list[int]:
    return [int(x) for x in eid.split(".")]


def write_gradebook(reports: list[GradeReport], out_dir: Path, salt: int | None = None) -> tuple[Path, Path]:
    """Write ``gradebook.csv`` and ``gradebook.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = sorted({e for r in reports for e in r.results}, key=_sort_key)
    names = _display_names(reports)
    csv_path, md_path = out_dir / "gradebook.csv", out_dir / "gradebook.md"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["submission", "chapter", *ids, *[f"{e} points" for e in ids], "points",
                         "max points", "runs top to bottom", "note"])
        for name, r in zip(names, reports):
            writer.writerow([name, r.chapter if r.chapter is not None else "",
                             *[r.results.get(e, "") for e in ids],
                             *[r.points(e) if e in r.results else "" for e in ids],
                             r.score, r.total, r.runs, r.note])
    icons = {"passed": "✅", "failed": "❌", "not done": "⏳", "error": "💥", "forbidden": "🚫",
             "timed out": "⌛"}
    lines = ["# Gradebook", "",
             f"{len(reports)} submission(s). Each exercise was checked by the grader in a clean "
             "process; the top-to-bottom run of the notebook decides nothing."
             + (f" Hidden cases: salt {salt} (`--salt {salt}` grades on the same cases)." if salt else ""),
             ""]
    for name, r in zip(names, reports):
        chapter = f"Chapter {r.chapter}" if r.chapter is not None else "chapter unknown"
        lines += [f"## {name}: {r.score}/{r.total} points ({chapter})", "",
                  f"- runs top to bottom: {r.runs}"]
        if r.note:
            lines.append(f"- note: {r.note}")
        for eid, status in r.results.items():
            spec = registry()[eid]
            line = (f"- {icons[status]} Exercise {eid} · {spec.title} ({spec.tier}): {status}, "
                    f"{r.points(eid)}/{POINTS[spec.tier]}")
            if r.messages.get(eid):
                line += "  \n  " + r.messages[eid].replace("\n", " ")
            lines.append(line)
        lines.append("")
    md_path.write_text("\n".join(lines), encoding="utf-8")
    return csv_path, md_path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--run-one":
        parser = argparse.ArgumentParser()
        parser.add_argument("--run-one", type=Path, metavar="NOTEBOOK")
        parser.add_argument("--timeout", type=int, default=int(RUN_TIMEOUT))
        args = parser.parse_args(argv)
        return _run_one(args.run_one, args.timeout)
    parser = argparse.ArgumentParser(description="Grade submitted notebooks.")
    parser.add_argument("submissions", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("gradebook"))
    parser.add_argument("--chapter", type=int, help="grade every submission as this chapter "
                                                    "(default: the notebook's metadata)")
    parser.add_argument("--jobs", type=int, default=None, help="submissions graded at once "
                                                               "(default: the number of cores)")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT,
                        help=f"seconds per exercise (default {TIME_LIMIT:g})")
    parser.add_argument("--memory-limit", type=float, default=MEMORY_GIB,
                        help=f"GiB of address space for the checks' process (default {MEMORY_GIB:g})")
    parser.add_argument("--timeout", type=float, default=RUN_TIMEOUT,
                        help=f"seconds for the top-to-bottom run of each notebook (default {RUN_TIMEOUT:g})")
    parser.add_argument("--no-run", action="store_true", help="do not execute the notebooks")
    parser.add_argument("--salt", type=int, default=None,
                        help="seed of the hidden cases (default: a new one per grading run)")
    parser.add_argument("--gradescope", type=Path, help="also write Gradescope's results JSON here")
    args = parser.parse_args(argv)
    missing = [p for p in args.submissions if not p.exists()]
    if missing:
        parser.error(f"no such file: {', '.join(map(str, missing))}")
    salt = args.salt if args.salt is not None else 1 + secrets.randbelow(2**31 - 2)
    reports = grade(args.submissions, args.jobs, chapter=args.chapter, time_limit=args.time_limit,
                    memory_gib=args.memory_limit, run_timeout=None if args.no_run else args.timeout,
                    salt=salt)
    csv_path, md_path = write_gradebook(reports, args.out, salt)
    if args.gradescope:
        from tools.autograder import write_results
        write_results(reports, args.gradescope)
    for name, r in zip(_display_names(reports), reports):
        counts = {s: list(r.results.values()).count(s) for s in STATUSES if s in r.results.values()}
        print(f"{name}: {r.score}/{r.total} points {counts} runs: {r.runs} {r.note}".rstrip())
    print(f"wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
