"""What the grader reads from a submitted notebook, without running it.

Hand-written (not exported from a notebook). Used by ``tools.grade``:

* :func:`notebook_chapter`: the chapter, from the metadata that ``make student`` writes (and the
  instructor notebooks carry), else from the exercise ids its checks name; never the file name.
* :func:`read_submission`: the statements the grader runs in its own process: every top-level
  import, ``def`` and ``class`` of the code cells, and the plain assignments of the exported cells
  (and of the graded names). Calls, prints, patches, ``check``/``build`` lines and anything else
  a cell does at top level are left out.
* :func:`graded_names`: which name each exercise grades (the second argument of its
  ``check("N.M", name)`` / ``build("N.M", name)`` call, else the name its ``builds`` declares).
* :func:`ruled_out`: the static scan for calls an exercise forbids, and for the library's own
  reference, in the graded definition and in the submission's definitions it uses.
"""
from __future__ import annotations

import ast
import functools
import re
import threading
from dataclasses import dataclass, field

from tools.course import CHAPTER_KEY
from tools.export import DIRECTIVE

__all__ = ["Statement", "Submission", "notebook_chapter", "read_submission",
           "graded_names", "ruled_out"]

SUBMISSION_FILE = "<submission cell {}>"   # the file name the grader compiles cell N under
_CHECK_CALLS = {"check", "build", "run_check", "check_package"}
_MAGIC = re.compile(r"^(\s*)[%!].*$", re.M)
# Names learners use for modules without importing them in the cell that uses them.
_DEFAULT_ALIASES = {"F": "torch.nn.functional", "nn": "torch.nn", "np": "numpy"}


@dataclass
class Statement:
    cell: int                 # index of the code cell in the notebook
    source: str
    kind: str                 # "import" | "def" | "assign"
    names: tuple[str, ...]    # the names it binds


@dataclass
class Submission:
    statements: list[Statement] = field(default_factory=list)
    syntax_errors: dict[int, str] = field(default_factory=dict)   # cell -> message
    definitions: dict[str, ast.AST] = field(default_factory=dict)  # name -> last def / assignment
    aliases: dict[str, str] = field(default_factory=dict)         # imported name -> dotted path
    calls: dict[str, str] = field(default_factory=dict)           # exercise id -> checked name
    sources: dict[str, str] = field(default_factory=dict)         # name -> source of its cell

    def ordered(self) -> list[Statement]:
        """Imports first (a definition later in the notebook wins over an import of the same
        name), then definitions and assignments in notebook order."""
        return ([s for s in self.statements if s.kind == "import"]
                + [s for s in self.statements if s.kind != "import"])


# CPython 3.11's parser keeps its recursion depth in shared state: ast.parse / ast.unparse running
# in two threads at once (the grader reads submissions in a thread each) can fail with
# "SystemError: AST constructor recursion depth mismatch". Reading is cheap: do it one at a time.
_AST_LOCK = threading.RLock()


def _one_at_a_time(func):
    @functools.wraps(func)
    def locked(*args, **kwargs):
        with _AST_LOCK:
            return func(*args, **kwargs)
    return locked


def notebook_chapter(nb) -> int | None:
    """The chapter ``nb`` belongs to: its metadata, else the chapter its checks name."""
    chapter = nb.metadata.get(CHAPTER_KEY, {}).get("chapter")
    if isinstance(chapter, int) and not isinstance(chapter, bool):
        return chapter
    counts: dict[int, int] = {}
    for eid in read_submission(nb).calls:
        counts[int(eid.split(".")[0])] = counts.get(int(eid.split(".")[0]), 0) + 1
    return max(counts, key=counts.get) if counts else None


def _exported(source: str) -> bool:
    for line in source.splitlines():
        m = DIRECTIVE.match(line)
        if m and m.group(1) in ("export", "exporti"):
            return True
        if line.strip() and not m:
            return False
    return False


def _calls_a_check(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            f = sub.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name in _CHECK_CALLS:
                return True
    return False


def _import_aliases(node: ast.AST) -> dict[str, str]:
    out = {}
    if isinstance(node, ast.Import):
        for a in node.names:
            out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        for a in node.names:
            if a.name != "*":
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


@_one_at_a_time
def read_submission(nb, graded: set[str] = frozenset()) -> Submission:
    """The statements of ``nb`` the grader runs, and what the static checks need."""
    sub = Submission()
    code_cells = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    for i, cell in code_cells:
        source = cell.source
        if source.lstrip().startswith("%%"):
            continue
        source = _MAGIC.sub(lambda m: m.group(1) + "pass", source)
        try:
            tree = ast.parse(source)
        except SyntaxError as err:
            sub.syntax_errors[i] = f"cell {i} has a syntax error (line {err.lineno}): {err.msg}"
            continue
        exported = _exported(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("check", "build") and len(node.args) >= 2 \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str) \
                    and isinstance(node.args[1], ast.Name):
                sub.calls.setdefault(node.args[0].value, node.args[1].id)
        for node in tree.body:
            text = ast.get_source_segment(source, node, padded=True) or ast.unparse(node)
            if hasattr(node, "decorator_list") and node.decorator_list:
                # the segment starts at `def`/`class`: take the decorators too
                first = min(d.lineno for d in node.decorator_list) - 1
                text = "\n".join(source.splitlines()[first:node.end_lineno])
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                    continue
                names = tuple(_import_aliases(node))
                sub.aliases.update(_import_aliases(node))
                sub.statements.append(Statement(i, text, "import", names))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                sub.statements.append(Statement(i, text, "def", (node.name,)))
                sub.definitions[node.name] = node
                sub.sources[node.name] = source
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if not all(isinstance(t, ast.Name) for t in targets) or node.value is None:
                    continue
                names = tuple(t.id for t in targets)
                if _calls_a_check(node.value) or not (exported or set(names) & set(graded)):
                    continue
                sub.statements.append(Statement(i, text, "assign", names))
                for name in names:
                    sub.definitions[name] = node
                    sub.sources[name] = source
    for name in sub.definitions:    # a name the submission defines is its own, not an import
        sub.aliases.pop(name, None)
    return sub


def provided_lines(student_nb) -> frozenset[str]:
    """The stripped, non-blank code lines of a student notebook: what the course provides."""
    return frozenset(line.strip() for cell in student_nb.cells if cell.cell_type == "code"
                     for line in cell.source.splitlines() if line.strip())


def graded_names(sub: Submission, exercises) -> dict[str, str | None]:
    """Exercise id -> the name whose definition is graded (None when there is none to read)."""
    out = {}
    for spec in exercises:
        name = sub.calls.get(spec.id)
        if name is None and spec.builds:
            name = spec.builds.partition(":")[2].split(".")[0]
        out[spec.id] = name
    return out


def reference_paths(spec) -> list[str]:
    """The dotted paths of the library's own version of what ``spec`` builds."""
    if not spec.builds:
        return []
    module, _, name = spec.builds.partition(":")
    return [f"{module}.{name}"]


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _resolve(dotted: str, aliases: dict[str, str]) -> str:
    head, _, rest = dotted.partition(".")
    base = aliases.get(head) or _DEFAULT_ALIASES.get(head) or head
    return f"{base}.{rest}" if rest else base


def _canonical(rule: str, aliases: dict[str, str]) -> str:
    resolved = _resolve(rule, aliases)
    return _resolve(rule, {}) if resolved == rule else resolved


def _used_nodes(sub: Submission, name: str, others=frozenset()) -> list[tuple[str, ast.AST]]:
    """The graded definition and, transitively, the submission's definitions it names, except
    ``others`` (definitions graded by other exercises, under their own rules)."""
    seen, todo, out = set(), [name], []
    while todo:
        current = todo.pop()
        if current in seen or current not in sub.definitions or (current != name and current in others):
            continue
        seen.add(current)
        node = sub.definitions[current]
        out.append((current, node))
        for sub_node in ast.walk(node):
            if isinstance(sub_node, ast.Name) and sub_node.id in sub.definitions:
                todo.append(sub_node.id)
    return out


@_one_at_a_time
def ruled_out(sub: Submission, name: str, forbids, references, provided=frozenset(),
              others=frozenset()) -> str | None:
    """Why the definition of ``name`` is ruled out, naming the call, or None when it is not.

    ``provided`` holds the lines the course itself gives the learner (the student version's code,
    stripped): a forbidden call on such a line is the course's hardening (LayerNorm's fused path,
    the static cache's fused kernel), not the learner's delegation, and is not held against them.
    ``others`` are the names other exercises grade: the scan does not follow into them (the fused
    kernel of Exercise 4.7 may call what the layer of 4.8 may not).

    Looks at every dotted name the definition (and the submission's definitions it uses) mentions,
    with the submission's imports resolved: ``F.layer_norm``, ``torch.nn.functional.layer_norm`` and
    ``from torch.nn.functional import layer_norm as ln; ln(x)`` are the same call.
    """
    methods = {r[1:] for r in forbids if r.startswith(".")}
    for owner, node in _used_nodes(sub, name, others):
        aliases = dict(sub.aliases)
        for sub_node in ast.walk(node):
            aliases.update(_import_aliases(sub_node))
        for alias in list(aliases):
            if alias in sub.definitions and alias not in sub.aliases:
                aliases.pop(alias)
        rules = [(r, _canonical(r, aliases)) for r in forbids if not r.startswith(".")]
        refs = [(r, r) for r in references]
        where = f" (in {owner})" if owner != name else ""
        lines = sub.sources.get(owner, "").splitlines()
        for sub_node in ast.walk(node):
            line = getattr(sub_node, "lineno", 0)
            if provided and 0 < line <= len(lines) and lines[line - 1].strip() in provided:
                continue
            written = None
            if isinstance(sub_node, (ast.Attribute, ast.Name)) and isinstance(sub_node.ctx, ast.Load):
                written = _dotted(sub_node)
                if isinstance(sub_node, ast.Attribute) and sub_node.attr in methods:
                    return f"`{ast.unparse(sub_node)}` calls .{sub_node.attr}, which this exercise rules out{where}"
            elif isinstance(sub_node, ast.Call) and isinstance(sub_node.func, ast.Name) \
                    and sub_node.func.id == "getattr" and len(sub_node.args) >= 2 \
                    and isinstance(sub_node.args[1], ast.Constant) and isinstance(sub_node.args[1].value, str):
                base = _dotted(sub_node.args[0])
                written = f"{base}.{sub_node.args[1].value}" if base else None
            elif isinstance(sub_node, (ast.Import, ast.ImportFrom)):
                for alias, path in _import_aliases(sub_node).items():
                    for rule, canon in refs:
                        if path == canon:
                            return f"`{ast.unparse(sub_node)}` imports gptlib's own {rule}{where}: write it yourself"
            if written is None:
                continue
            resolved = _resolve(written, aliases)
            if written in sub.definitions and written != name:
                continue
            for rule, canon in rules:
                if resolved == canon or resolved.startswith(canon + "."):
                    return f"`{written}` is ruled out in this exercise ({rule}){where}"
            for rule, canon in refs:
                if (resolved == canon or resolved.startswith(canon + ".")) and written != name:
                    return f"`{written}` is gptlib's own {rule}{where}: write it yourself"
    return None
