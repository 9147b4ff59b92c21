"""One source of truth for the repository url: _config.yml, copied into every setup cell."""
import shutil

import nbformat
import pytest

from tools import ROOT, course


def test_setup_cell_installs_from_the_configured_repository():
    source = course.setup_cell_source()
    assert f"git+{course.repository_url()}@{course.repository_branch()}" in source
    assert 'if "google.colab" in sys.modules:' in source


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
    assert cell.source == course.setup_cell_source("https://github.com/someone/my-fork", "dev")


def test_configure_rejects_a_bad_url(tmp_path):
    with pytest.raises(ValueError, match="does not look like"):
        course.configure("not a url", root=tmp_path)
