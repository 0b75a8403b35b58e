"""``promptseg.runtime.tune_allocator``: argument checks, and its effect measured in a fresh process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from promptseg.runtime import _glibc_mallopt, tune_allocator

# Five "blocks" after two warm-up ones, each with 64 MiB and 40 MiB activations (the sizes of a ViT-B
# encoder's): print the minor page faults of the five.
_PROBE = """
import resource, sys
import torch
if sys.argv[1] == "tuned":
    from promptseg.runtime import tune_allocator
    assert tune_allocator()

def block():
    hidden = torch.ones(64 << 18)
    out = torch.ones(40 << 18)
    return (hidden[: out.numel()] + out).sum()

block(), block()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    block()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.parametrize("value", [0, -1, 2**31])
def test_thresholds_out_of_range_are_rejected(value):
    with pytest.raises(ValueError, match="mmap_threshold"):
        tune_allocator(mmap_threshold=value)
    with pytest.raises(ValueError, match="trim_threshold"):
        tune_allocator(trim_threshold=value)


@pytest.mark.parametrize("value", [1.5, "1GB", True, None])
def test_thresholds_must_be_ints(value):
    with pytest.raises(TypeError, match="mmap_threshold"):
        tune_allocator(mmap_threshold=value)


@pytest.mark.skipif(_glibc_mallopt() is None, reason="glibc's mallopt only")
def test_large_blocks_are_reused_instead_of_faulted_in_again():
    faults = {}
    for mode in ("default", "tuned"):
        run = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        faults[mode] = int(run.stdout.split()[-1])
    # 5 × (64 + 40 + 40) MiB mapped afresh is 184,320 faults in 4 KiB pages (360 in 2 MiB huge pages)
    assert faults["default"] >= 300, faults
    assert faults["tuned"] < faults["default"] // 4, faults


# --------------------------------------------------------------------------------------------- packaging
REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_pyproject_version_license_and_bundled_files(capsys):
    """The version is the package's; the license is an SPDX string (setuptools ≥ 77 deprecates the table
    form and refuses it from 2027-02-18, and the build requirement is unpinned); the wheel's package data
    holds the bundled models and sample photos."""
    tomllib = pytest.importorskip("tomllib")
    import fnmatch

    import promptseg
    from promptseg.cli import main

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["version"] == promptseg.__version__
    assert main(["--version"]) == 0 and capsys.readouterr().out == f"promptseg {promptseg.__version__}\n"
    assert isinstance(project["project"]["license"], str)
    globs = project["tool"]["setuptools"]["package-data"]["promptseg"]
    package = REPO / "src" / "promptseg"
    bundled = [p.relative_to(package).as_posix() for p in [*package.glob("weights/*"), *package.glob("assets/*")]]
    assert any(name.endswith(".safetensors") for name in bundled) and any(name.endswith(".jpg") for name in bundled)
    assert [name for name in bundled if not any(fnmatch.fnmatch(name, g) for g in globs)] == []


_IMPORTS = """
import importlib, pkgutil, sys
import promptseg
from promptseg.cli import build_parser
build_parser()
light = "torch" not in sys.modules
for m in pkgutil.walk_packages(promptseg.__path__, "promptseg."):
    importlib.import_module(m.name)
heavy = ("matplotlib", "cv2", "pycocotools", "ray", "transformers", "segment_anything", "torchvision", "tensorboard")
print(light, sorted(h for h in heavy if h in sys.modules))
"""


def test_imports_are_light():
    """``import promptseg`` and the CLI parser do not load torch; no module loads an optional package."""
    run = subprocess.run([sys.executable, "-c", _IMPORTS], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split(None, 1) == ["True", "[]\n"], run.stdout
