"""Packaging (issue #17): the package installs beside a torch the user already has.

A throwaway venv reuses this environment's packages (torch among them) through a path file, the
way a user's CUDA environment already holds its torch; the package is built from a copy of the
source and installed with ``--no-deps`` (nothing downloaded: ``--no-index``, no build
isolation). Then ``pip check`` finds every requirement satisfied (torch's range admits the
torch already there), and the installed copy imports and generates with its shipped weights.
~12 s, most of it zipping the 40 MB of shipped weights into the wheel.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PROBE = """
import importlib.metadata as md, sys
import reimagen, torch
from reimagen.generation.shipped import weights_path
assert reimagen.__file__.startswith(sys.prefix), reimagen.__file__  # the installed copy
pipe = reimagen.Pipeline.from_pretrained(weights_path("base"))  # the wheel's package data
out = pipe.generate(["a red apple on a blue background"], k=0, seed=0,
                    sampling=reimagen.SamplingConfig(steps=2, guidance="joint"))
print(out.images.shape, out.images.dtype, torch.__version__)
print([r for r in md.requires("reimagen") if r.startswith("torch")])
"""


def run(*argv, **options):
    """Run a command; on failure, its output is the assertion message."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False, **options)
    assert done.returncode == 0, f"{argv}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def copy_source(target: Path) -> Path:
    """What a source distribution holds: pyproject.toml, README.md, the package (no caches)."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)
    shutil.copytree(
        ROOT / "reimagen",
        target / "reimagen",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    return target


def throwaway_venv(folder: Path) -> Path:
    """A venv without pip whose site-packages ends with this environment's (a path file:
    its packages importable, its own .pth hooks, e.g. editable installs, not run)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = run(str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
    (Path(purelib.strip()) / "_existing_env.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


def test_metadata_gives_ranges_and_the_recipe_pins_them():
    """pyproject.toml: no exact pin on a dependency; constraints.txt pins torch (installed
    first by make setup) and the jax extra to the versions the tests ran with."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    requirements = [*project["dependencies"], *(r for extra in extras for r in extra)]
    assert not [r for r in requirements if "==" in r]
    assert "torch>=2.4" in project["dependencies"]
    pins = dict(
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert pins["torch"] == "2.13.0" and {"jax", "equinox", "optax"} <= set(pins)
    setup = (ROOT / "Makefile").read_text()
    torch_step = setup.index("-c constraints.txt torch")
    assert torch_step < setup.index('-e ".[jax,dev]"')  # torch before what depends on it


@pytest.mark.skipif(
    importlib.util.find_spec("setuptools") is None,
    reason="building the package offline needs setuptools in this environment",
)
def test_no_deps_install_beside_the_existing_torch_imports_and_generates(tmp_path):
    source = copy_source(tmp_path / "src")
    python = throwaway_venv(tmp_path / "venv")
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "-q",
        "--no-deps",
        "--no-index",
        "--no-build-isolation",
        str(source),
    )
    assert "No broken requirements found" in run(str(python), "-m", "pip", "check")
    # the example plugin's editable install here is not importable there (its import hook is a
    # .pth the path file does not run): load only the built-ins
    env = {
        **os.environ,
        "REIMAGEN_DISABLE_PLUGIN_AUTOLOAD": "1",
        "OMP_NUM_THREADS": "1",
        "REIMAGEN_HOME": str(tmp_path / "home"),
    }
    out = run(str(python), "-c", PROBE, env=env, cwd=tmp_path)
    assert "(1, 32, 32, 3) uint8" in out and "['torch>=2.4']" in out
    components = run(str(tmp_path / "venv" / "bin" / "reimagen"), "components", env=env)
    assert re.search(r"^backend +jax, torch$", components, flags=re.MULTILINE)  # console script
