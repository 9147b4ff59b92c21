"""One source of truth for the repository url: _config.yml, copied into every setup cell."""
import shutil

import nbformat
import pytest

from tools import ROOT, course


def test_setup_cell_installs_the_release_from_the_configured_repository():
    source = course.setup_cell_source()
    assert f"build-a-gpt[viz,tiktoken] @ git+{course.repository_url()}@v{course.release()}" in source


def test_the_release_is_one_version_everywhere():
    import gptlib
    assert gptlib.__version__ == course.release()
    assert f"release v{gptlib.__version__}" in course.setup_cell_source()


def _run_setup_cell(monkeypatch, providers):
    """Run the setup cell with importlib's answer for `gptlib` faked; return the pip commands."""
    import importlib.metadata
    import subprocess
    commands = []
    monkeypatch.setattr(importlib.metadata, "packages_distributions", lambda: {"gptlib": providers})
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: commands.append(cmd[3:]))
    exec(course.setup_cell_source(), {})
    return commands


def test_setup_cell_does_nothing_where_the_course_gptlib_is_installed(monkeypatch):
    assert _run_setup_cell(monkeypatch, ["build-a-gpt"]) == []


def test_setup_cell_installs_the_release_where_gptlib_is_missing(monkeypatch):
    (install,) = _run_setup_cell(monkeypatch, [])
    assert install[0] == "install" and install[-1].endswith(f"@v{course.release()}")


def test_setup_cell_replaces_another_package_imported_as_gptlib(monkeypatch):
    uninstall, install = _run_setup_cell(monkeypatch, ["gptlib"])
    assert uninstall == ["uninstall", "-q", "-y", "gptlib"]
    assert install[0] == "install" and install[-1].startswith("build-a-gpt[")


def test_setup_cell_is_plain_python():
    """No IPython magic: the cell runs in any kernel (and in the test above, through exec)."""
    assert "%pip" not in course.setup_cell_source() and "!pip" not in course.setup_cell_source()


def test_configure_points_everything_at_a_fork(tmp_path):
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# T"),
                nbformat.v4.new_code_cell(course.setup_cell_source())]
    nbformat.write(nb, tmp_path / "notebooks" / "01_x.ipynb")
    changed = course.configure("https://github.com/someone/my-fork", "dev", root=tmp_path)
    assert len(changed) == 2
    config = tmp_path / "_config.yml"
    assert course.repository_url(config) == "https://github.com/someone/my-fork"
    assert course.repository_branch(config) == "dev"
    cell = course.first_code_cell(nbformat.read(tmp_path / "notebooks" / "01_x.ipynb", as_version=4))
    assert cell.source == course.setup_cell_source("https://github.com/someone/my-fork")


def test_configure_rejects_a_bad_url(tmp_path):
    with pytest.raises(ValueError, match="does not look like"):
        course.configure("not a url", root=tmp_path)
