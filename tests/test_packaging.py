"""What a learner without a clone gets (Colab installs the wheel): every subpackage, the recipe
files, and none of the course tooling."""
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out, src = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):      # build from a copy: setuptools
        shutil.copy(ROOT / name, src / name)                     # writes build/ beside the source
    for name in ("gptlib", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(src), "-w", str(out)], check=True, capture_output=True)
    (path,) = out.glob("build_a_gpt-*.whl")
    return path


def test_wheel_holds_every_subpackage_and_the_recipes_but_no_tooling(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for init in (ROOT / "gptlib").rglob("__init__.py"):
        assert init.relative_to(ROOT).as_posix() in names, f"{init} is left out of the wheel"
    for recipe in (ROOT / "configs").glob("*.json"):
        assert f"gptlib/configs/{recipe.name}" in names
    assert not any(n.startswith(("tools/", "tests/", "benchmarks/", "notebooks/")) for n in names)


def test_recipes_load_from_an_installed_wheel_outside_the_clone(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, capture_output=True)
    code = ("import gptlib; from gptlib import load_recipe; r = load_recipe('shakespeare_char_smoke'); "
            "print(gptlib.__file__.startswith(%r), r.train.max_steps)" % str(site))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "60"]
